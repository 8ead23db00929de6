"""The embedded default end to end: cache, train, checkpoints, validation, exported pipeline."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from safetensors.torch import load_file

from runner.cache.keys import entry_path
from tests.e2e.conftest import assert_clean, cache_manifest, dataset_manifest

pytestmark = pytest.mark.e2e


def _unusual_modes(root: Path, umask: int) -> list[str]:
    """What under `root` lacks the mode open() or mkdir() give under `umask`. A file with more
    than one link is shared with the base model (an export's unchanged components): its mode is
    the base's."""
    return [f"{oct(p.lstat().st_mode & 0o777)} {p}" for p in [root, *root.rglob("*")]
            if p.lstat().st_nlink == 1 or p.is_dir()
            if p.lstat().st_mode & 0o777 != (0o777 if p.is_dir() else 0o666) & ~umask]


def test_smoke_job_caches_trains_validates_and_exports(runner):
    # Under a group-sharing umask: every file the run writes is readable by the group (the
    # trained weights were 0600, the sample photos' folder 0700).
    proc = runner.run(umask=0o002)
    assert_clean(proc)
    out = proc.stdout
    assert _unusual_modes(runner.out, 0o002) == [] and _unusual_modes(runner.cache, 0o002) == []

    # Cache: every manifest entry exists and loads, with the shapes the model needs.
    manifest = cache_manifest(runner.cache)
    items = dataset_manifest(runner.cache)["items"]
    assert len(items) >= 12
    for it in items:
        latent = load_file(str(entry_path(runner.cache / "vae" / "photos", it["latent_key"])))["latent"]
        w, h = map(int, it["bucket"].split("x"))
        assert tuple(latent.shape) == (4, h // 8, w // 8)
        embed = load_file(str(entry_path(runner.cache / "text", it["text_key"])))["prompt_embeds"]
        assert embed.ndim == 2 and 1 <= embed.shape[0] <= 32
    assert len({it["bucket"] for it in items}) >= 2, "the smoke data should exercise several aspect buckets"
    assert manifest["empty_caption"] and manifest["text_identity"]["model"]

    # Training: finite loss, checkpoints (every 8 steps + final; the newest 2 kept), sealed.
    loss = float(re.search(r"final loss (\S+)", out).group(1))
    assert math.isfinite(loss)
    ckpts = sorted(p.name for p in (runner.out / "checkpoints").iterdir())
    assert ckpts == ["step-16", "step-20"]
    state = json.loads((runner.out / "checkpoints" / "step-20" / "trainer_state.json").read_text())
    assert state["state"]["step"] == 20 and state["files"]

    # Validation: each prompt at each resolution, at the interval and at the end.
    for step in (10, 20):
        pngs = sorted(p.name for p in (runner.out / "validation" / f"step-{step}").glob("*.png"))
        assert pngs == ["p0-128x128.png", "p0-192x128.png", "p1-128x128.png", "p1-192x128.png"]
    from PIL import Image

    assert Image.open(runner.out / "validation" / "step-20" / "p0-192x128.png").size == (192, 128)
    assert (runner.out / "logs").is_dir() and list((runner.out / "logs").rglob("events.out.tfevents*"))

    # The exported model is a complete diffusers pipeline that generates.
    import torch
    from diffusers import PixArtSigmaPipeline

    pipe = PixArtSigmaPipeline.from_pretrained(runner.out / "model")
    trained = load_file(str(runner.out / "model" / "transformer" / "diffusion_pytorch_model.safetensors"))
    base = load_file(str(runner.model / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(trained[k], base[k]) for k in base), "the exported transformer was not trained"
    image = pipe("a cat", num_inference_steps=2, height=128, width=128, use_resolution_binning=False,
                 clean_caption=False, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (128, 128)


def test_bfloat16_text_cache_trains_in_float32(runner):
    """The schema's default text-encoder precision (bfloat16) caches bf16 embeddings; training
    with mixedPrecision "no" (full float32, no autocast to cast them) must take them as well.
    It stopped at the first step with "mat1 and mat2 must have the same dtype"."""
    import torch

    proc = runner.run("spec.model.textEncoderDtype=bfloat16", "spec.training.maxSteps=3",
                      "spec.validation.every=100", "spec.validation.prompts=[]")
    assert_clean(proc)
    items = dataset_manifest(runner.cache)["items"]
    embed = load_file(str(entry_path(runner.cache / "text", items[0]["text_key"])))["prompt_embeds"]
    assert embed.dtype == torch.bfloat16  # the case under test: bf16 embeddings in the cache
    assert math.isfinite(float(re.search(r"final loss (\S+)", proc.stdout).group(1)))
