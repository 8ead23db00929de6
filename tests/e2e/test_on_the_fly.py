"""vaeCacheDisable encodes latents while training; CLIP score goes through the real CLIP code."""
from __future__ import annotations

import json
import math

import pytest

from tests.e2e.conftest import assert_clean, dataset_manifest

pytestmark = pytest.mark.e2e


def test_vae_cache_disable_trains_without_latent_files_and_scores_with_clip(runner, tmp_path):
    from PIL import Image

    from runner.evaluation import ClipScorer
    from runner.models.tiny.clip import build_tiny_clip

    # A random-weight CLIP scores 0 (a negative cosine, clamped) for every pair or for none,
    # depending on its seed; this seed gives these validation images positive scores that
    # change when the prompts are swapped, so a mix-up of image and prompt shows.
    clip_dir = build_tiny_clip(tmp_path / "clip", seed=3)
    # Also an epochs-only run (no maxSteps) with accumulation, Adafactor and checkpointing:
    # 16 of the 17 photos fill batches of 2 -> 8 batches -> 4 optimizer steps in one epoch.
    proc = runner.run("spec.vaeCacheDisable=true", "spec.training.maxSteps=null", "spec.training.epochs=1",
                      "spec.training.gradientAccumulationSteps=2", "spec.training.optimizer=adafactor",
                      "spec.training.gradientCheckpointing=true", "spec.training.checkpointEvery=4",
                      "spec.validation.every=4", "spec.validation.resolutions=128x128",
                      "spec.evaluation.clipScore=true", f"spec.evaluation.clipModel={clip_dir}")
    assert_clean(proc)
    assert "for 4 steps (4 per epoch)" in proc.stdout
    vae_dir = runner.cache / "vae" / "photos"
    assert not list(vae_dir.rglob("*.safetensors")), "vaeCacheDisable must not write latents"
    items = dataset_manifest(runner.cache)["items"]
    assert items and all(it["latent_key"] is None for it in items)
    folder = runner.out / "validation" / "step-4"
    report = json.loads((folder / "images.json").read_text())
    scores = [img["clip_score"] for img in report["images"]]
    # Each recorded score is the score of the saved (lossless PNG) image against its own prompt.
    images = [Image.open(folder / img["file"]).convert("RGB") for img in report["images"]]
    prompts = [img["prompt"] for img in report["images"]]
    scorer = ClipScorer(str(clip_dir))
    expected = scorer.score(images, prompts)
    assert len(scores) == 2 and scores == pytest.approx(expected, abs=1e-4)
    assert any(s > 1.0 for s in expected)
    assert scorer.score(images, prompts[::-1]) != pytest.approx(expected, abs=1e-2)
    assert math.isclose(report["validation/clip_score"], sum(scores) / len(scores))
    assert (runner.out / "model" / "model_index.json").is_file()
