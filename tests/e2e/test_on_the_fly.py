"""vaeCacheDisable encodes latents while training; CLIP score goes through the real CLIP code."""
from __future__ import annotations

import json
import math

import pytest

from tests.e2e.conftest import assert_clean

pytestmark = pytest.mark.e2e


def test_vae_cache_disable_trains_without_latent_files_and_scores_with_clip(runner):
    # Also an epochs-only run (no maxSteps) with accumulation, Adafactor and checkpointing:
    # 16 of the 17 photos fill batches of 2 -> 8 batches -> 4 optimizer steps in one epoch.
    proc = runner.run("spec.vaeCacheDisable=true", "spec.training.maxSteps=null", "spec.training.epochs=1",
                      "spec.training.gradientAccumulationSteps=2", "spec.training.optimizer=adafactor",
                      "spec.training.gradientCheckpointing=true", "spec.training.checkpointEvery=4",
                      "spec.validation.every=4", "spec.validation.resolutions=128x128",
                      "spec.evaluation.clipScore=true", "spec.evaluation.clipModel=builtin:tiny-clip")
    assert_clean(proc)
    assert "for 4 steps (4 per epoch)" in proc.stdout
    vae_dir = runner.cache / "vae" / "photos"
    assert not list(vae_dir.rglob("*.safetensors")), "vaeCacheDisable must not write latents"
    items = json.loads((vae_dir / "manifest.json").read_text())["items"]
    assert items and all(it["latent_key"] is None for it in items)
    report = json.loads((runner.out / "validation" / "step-4" / "images.json").read_text())
    scores = [img["clip_score"] for img in report["images"]]
    assert len(scores) == 2 and all(0.0 <= s <= 100.0 for s in scores)
    assert math.isclose(report["validation/clip_score"], sum(scores) / len(scores))
    assert (runner.out / "model" / "model_index.json").is_file()
