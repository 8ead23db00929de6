"""Datasets that cannot work fail early and clearly; broken images are skipped and reported."""
from __future__ import annotations

import json
import shutil

import pytest

from tests.e2e.conftest import assert_clean

pytestmark = pytest.mark.e2e


def test_too_small_dataset_fails_before_any_model_loads(runner):
    # The model points at a repo that does not exist offline: had anything tried to load it,
    # the error would be about the model, not the dataset.
    proc = runner.run("spec.training.batchSize=8", "spec.training.gradientAccumulationSteps=4",
                      "spec.model.pretrained=nobody/does-not-exist", stage="cache")
    assert_clean(proc, code=2)
    err = proc.stderr
    assert "photos" in err and "32" in err  # the dataset and the required count (8 x 4 x 1)
    assert "batchSize" in err and "gradientAccumulationSteps" in err
    assert "does-not-exist" not in err


def test_corrupt_images_are_skipped_and_listed(runner, sample_photos, tmp_path):
    data = tmp_path / "photos"
    shutil.copytree(sample_photos, data)
    (data / "broken jpeg.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)  # truncated JPEG
    (data / "not really a png.png").write_text("hello")
    good = next(p for p in sorted(data.glob("*.png")) if p.name != "not really a png.png")
    (data / "half a photo.png").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    proc = runner.run("spec.datasets.0.type=local", f"spec.datasets.0.path={data}", stage="cache")
    assert_clean(proc)
    for name in ("broken jpeg.jpg", "not really a png.png", "half a photo.png"):
        assert name in proc.stdout
    manifest = json.loads((runner.cache / "vae" / "photos" / "manifest.json").read_text())
    skipped = {rel for rel, _ in manifest["skipped"]}
    assert {"broken jpeg.jpg", "not really a png.png", "half a photo.png"} <= skipped
    assert all(it["rel"] not in skipped for it in manifest["items"])


def test_no_usable_image_is_fatal(runner, tmp_path):
    data = tmp_path / "junk"
    data.mkdir()
    for i in range(3):
        (data / f"junk {i}.png").write_bytes(b"not an image")
    proc = runner.run("spec.datasets.0.type=local", f"spec.datasets.0.path={data}", stage="cache")
    assert_clean(proc, code=2)
    assert "junk 0.png" in proc.stdout  # each skipped file is listed with its reason
    assert "0 usable image" in proc.stderr
