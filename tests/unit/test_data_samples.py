"""runner.data.samples: scikit-image photos written offline as captioned PNGs."""
from __future__ import annotations

import json
import socket

import pytest
from PIL import Image

from runner.data import DatasetError, samples
from runner.data.buckets import check_dataset_size
from runner.data.captions import caption_for
from runner.data.discovery import scan
from runner.data.preflight import plan_dataset


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    def no_network(*args, **kwargs):
        raise AssertionError("materialize_samples tried to use the network")

    mp = pytest.MonkeyPatch()
    mp.setattr(socket.socket, "connect", no_network)
    mp.setenv("HF_HUB_OFFLINE", "1")
    try:
        yield samples.materialize_samples(tmp_path_factory.mktemp("cache") / "samples")
    finally:
        mp.undo()


def test_writes_at_least_12_rgb_pngs_named_by_caption(sample_dir):
    pngs = sorted(sample_dir.glob("*.png"))
    assert len(pngs) >= 12
    names = {p.stem for p in pngs}
    assert {"an astronaut in a space suit", "a cup of coffee", "a ginger cat"} <= names
    for p in pngs:
        with Image.open(p) as im:
            assert im.mode == "RGB" and im.format == "PNG"
            assert max(im.size) <= samples.MAX_SIDE
        assert caption_for(p, sample_dir, "filename", None) == p.stem  # no counter to strip


def test_several_aspect_ratios(sample_dir):
    usable, skipped = scan(sample_dir)
    assert skipped == []
    aspects = {round(i.width / i.height, 2) for i in usable}
    assert 1.0 in aspects and len(aspects) >= 4
    sizes = {i.rel: (i.width, i.height) for i in usable}
    assert sizes["a rocket on a launch pad.png"] == (640, 427)
    assert sizes["a ginger cat.png"] == (451, 300)


def test_marker_lists_every_file(sample_dir):
    info = json.loads((sample_dir / samples.MARKER).read_text())
    assert info["version"] == samples.SAMPLES_VERSION
    assert sorted(info["files"]) == sorted(p.name for p in sample_dir.glob("*.png"))
    assert not list(sample_dir.parent.glob(".samples.tmp-*"))  # temp dir gone


def test_idempotent_does_not_rewrite(sample_dir, monkeypatch):
    before = {p.name: p.stat().st_mtime_ns for p in sample_dir.iterdir()}
    monkeypatch.setattr(samples, "_load", lambda name: pytest.fail("should not reload"))
    assert samples.materialize_samples(sample_dir) == sample_dir
    assert {p.name: p.stat().st_mtime_ns for p in sample_dir.iterdir()} == before


def test_smoke_settings_fill_batches(sample_dir):
    """The examples/smoke.yaml dataset: preserve buckets at 128 px, batch 2 -> trainable."""
    ds = {"name": "photos", "type": "samples", "crop": True, "cropAspect": "preserve", "cropStyle": "random",
          "resolution": 128, "resolutionType": "pixel", "minimumImageSize": 64, "captionStrategy": "filename"}
    plan = plan_dataset(ds, sample_dir, seed=42)
    counts = plan.bucket_counts()
    assert len(counts) >= 2 and counts["128x128"] >= 4 and counts["192x128"] >= 2
    assert check_dataset_size("photos", counts, batch_size=2, grad_accum=1, world_size=1) is None


# --------------------------------------------------------------- edge cases with a tiny, fast sample list

@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(samples, "SAMPLES", (("astronaut", "an astronaut"), ("camera", "a cameraman"),
                                             ("moon", "the moon"), ("no_such_photo", "missing")))
    monkeypatch.setattr(samples, "MIN_SAMPLES", 3)


def test_unloadable_photos_are_skipped(tmp_path, tiny):
    d = samples.materialize_samples(tmp_path / "s")
    assert sorted(p.name for p in d.glob("*.png")) == ["a cameraman.png", "an astronaut.png", "the moon.png"]


def test_too_few_photos_is_a_dataset_error(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(samples, "MIN_SAMPLES", 4)
    with pytest.raises(DatasetError, match="only 3 scikit-image photos"):
        samples.materialize_samples(tmp_path / "s")
    assert not (tmp_path / "s").exists()
    assert list(tmp_path.iterdir()) == []  # no temp dir left behind


def test_empty_existing_dir_is_filled(tmp_path, tiny):
    (tmp_path / "s").mkdir()
    assert len(list(samples.materialize_samples(tmp_path / "s").glob("*.png"))) == 3


def test_foreign_directory_is_not_deleted(tmp_path, tiny):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "precious.jpg").write_bytes(b"mine")
    with pytest.raises(DatasetError, match="not a samples directory"):
        samples.materialize_samples(tmp_path / "s")
    assert (tmp_path / "s" / "precious.jpg").read_bytes() == b"mine"


@pytest.mark.parametrize("marker", [{"version": 0, "files": []}, "not json", {"version": 1, "files": ["gone.png"]}])
def test_stale_or_incomplete_marker_regenerates(tmp_path, tiny, marker):
    d = tmp_path / "s"
    d.mkdir()
    (d / "old.png").write_bytes(b"x")
    (d / samples.MARKER).write_text(marker if isinstance(marker, str) else json.dumps(marker))
    out = samples.materialize_samples(d)
    assert not (out / "old.png").exists() and len(list(out.glob("*.png"))) == 3
