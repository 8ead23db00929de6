"""Training batches from the cache: bucketed, deterministic, resumable, rank-disjoint."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from runner.cache.keys import entry_path
from runner.cache.entries import write_entry
from runner.cache.stage import crop_plan_dict
from runner.files import atomic_write_json
from runner.models.pixart_sigma import FAMILY
from runner.train.data import (
    TEXT_PAD_MULTIPLE,
    CacheMismatch,
    EpochBatches,
    Sample,
    TrainingData,
    collate,
    load_manifest,
    load_samples,
    read_items,
)

BUCKETS = {"128x128": 23, "192x128": 17, "128x192": 9, "256x64": 1}


def _samples(counts: dict[str, int] = BUCKETS) -> list[Sample]:
    out = []
    for bucket, n in counts.items():
        for j in range(n):
            out.append(Sample(latent_path=None, image_path=f"/img/{bucket}-{j}.png", plan={},
                              text_key=f"t{bucket}-{j}", bucket=bucket))
    return out


SAMPLES = _samples()


def _batches(**kw) -> list[list[tuple[int, bool]]]:
    args = dict(batch_size=2, world_size=1, rank=0, seed=42, epoch=0, dropout=0.1)
    args.update(kw)
    return list(EpochBatches(SAMPLES, **args))


def _indices(batches) -> list[list[int]]:
    return [[i for i, _ in b] for b in batches]


# ----------------------------------------------------------------------------- EpochBatches

@pytest.mark.parametrize("seed, epoch", [(0, 0), (42, 3), (7, 100)])
def test_deterministic_for_same_seed_and_epoch(seed: int, epoch: int) -> None:
    assert _batches(seed=seed, epoch=epoch) == _batches(seed=seed, epoch=epoch)


@pytest.mark.parametrize("a, b", [
    (dict(epoch=0), dict(epoch=1)),
    (dict(epoch=1), dict(epoch=2)),
    (dict(seed=1), dict(seed=2)),
])
def test_order_differs(a: dict, b: dict) -> None:
    first, second = _indices(_batches(**a)), _indices(_batches(**b))
    assert first != second
    # ... but the same number of batches from each bucket (only the order and bucket remainders differ).
    def per_bucket(batches):
        return sorted(SAMPLES[bt[0]].bucket for bt in batches)
    assert per_bucket(first) == per_bucket(second)


@pytest.mark.parametrize("batch_size, world_size", [(1, 1), (2, 1), (3, 1), (4, 2), (2, 3)])
def test_each_batch_from_one_bucket_and_sizes(batch_size: int, world_size: int) -> None:
    expected = sum(n // (batch_size * world_size) for n in BUCKETS.values())
    for rank in range(world_size):
        batches = _batches(batch_size=batch_size, world_size=world_size, rank=rank)
        assert len(batches) == expected
        for b in batches:
            assert len(b) == batch_size
            assert len({SAMPLES[i].bucket for i, _ in b}) == 1
            assert len({i for i, _ in b}) == batch_size  # no duplicates within a batch


def test_no_sample_repeats_within_epoch() -> None:
    flat = [i for b in _indices(_batches(batch_size=1)) for i in b]
    assert sorted(flat) == list(range(len(SAMPLES)))


@pytest.mark.parametrize("start", [0, 1, 5, 12, 24, 100])
def test_start_equals_slice(start: int) -> None:
    full = _batches(epoch=2)
    resumed = _batches(epoch=2, start=start)
    assert resumed == full[start:]
    assert len(EpochBatches(SAMPLES, 2, 1, 0, 42, 2, 0.1, start=start)) == len(full[start:])


@pytest.mark.parametrize("rate, lo, hi", [(0.0, 0, 0), (1.0, 1, 1), (0.1, 0.06, 0.14), (0.5, 0.44, 0.56)])
def test_caption_dropout_rate(rate: float, lo: float, hi: float) -> None:
    many = _samples({"128x128": 2000})
    flags = [drop for epoch in range(3)
             for b in EpochBatches(many, 4, 1, 0, 9, epoch, rate) for _, drop in b]
    assert len(flags) == 6000
    frac = sum(flags) / len(flags)
    assert lo <= frac <= hi, frac


def test_dropout_does_not_change_order() -> None:
    assert _indices(_batches(dropout=0.0)) == _indices(_batches(dropout=0.9))


@pytest.mark.parametrize("world_size, batch_size", [(2, 2), (3, 1), (4, 2)])
def test_ranks_disjoint_equal_counts_same_bucket(world_size: int, batch_size: int) -> None:
    per_rank = [_indices(_batches(batch_size=batch_size, world_size=world_size, rank=r)) for r in range(world_size)]
    counts = {len(b) for b in per_rank}
    assert len(counts) == 1 and counts.pop() > 0
    seen: list[set[int]] = [{i for bt in b for i in bt} for b in per_rank]
    for a in range(world_size):
        for c in range(a + 1, world_size):
            assert not seen[a] & seen[c]
    # At every step all ranks use the same bucket (so latents have the same shape everywhere).
    for step in zip(*per_rank):
        assert len({SAMPLES[bt[0]].bucket for bt in step}) == 1


# ----------------------------------------------------------------------------- collate

@pytest.mark.parametrize("lengths", [[3, 5, 1], [4, 4], [1], [7, 2, 2, 6]])
def test_collate_pads_embeddings_with_mask(lengths: list[int]) -> None:
    g = torch.Generator().manual_seed(0)
    items = [{"latent": torch.randn(4, 16, 24, generator=g), "embed": torch.randn(n, 32, generator=g)}
             for n in lengths]
    batch = collate(items, FAMILY.pad_text)
    longest = -(-max(lengths) // TEXT_PAD_MULTIPLE) * TEXT_PAD_MULTIPLE  # a few fixed shapes for compile
    assert longest % TEXT_PAD_MULTIPLE == 0 and longest >= max(lengths)
    assert batch["latent"].shape == (len(lengths), 4, 16, 24)
    assert batch["embeds"].shape == (len(lengths), longest, 32)
    assert batch["mask"].shape == (len(lengths), longest)
    for i, (item, n) in enumerate(zip(items, lengths)):
        assert torch.equal(batch["latent"][i], item["latent"])
        assert torch.equal(batch["embeds"][i, :n], item["embed"])
        assert torch.count_nonzero(batch["embeds"][i, n:]) == 0
        assert batch["mask"][i].tolist() == [1] * n + [0] * (longest - n)


def test_collate_pixels_key() -> None:
    items = [{"pixels": torch.rand(3, 8, 8), "embed": torch.rand(2, 4)} for _ in range(3)]
    batch = collate(items, FAMILY.pad_text)
    assert set(batch) == {"pixels", "embeds", "mask"}
    assert batch["pixels"].shape == (3, 3, 8, 8)


# ----------------------------------------------------------------------------- manifest

def test_load_manifest_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CacheMismatch, match="run the cache stage first"):
        load_manifest(tmp_path / "manifest.json", "abc")


@pytest.mark.parametrize("stored", ["other", None])
def test_load_manifest_wrong_fingerprint(tmp_path: Path, stored: str | None) -> None:
    path = tmp_path / "manifest.json"
    atomic_write_json(path, {"cache_fingerprint": stored} if stored else {"datasets": []})
    with pytest.raises(CacheMismatch, match="run the cache stage again"):
        load_manifest(path, "abc")


def test_load_manifest_ok(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    atomic_write_json(path, {"cache_fingerprint": "abc", "datasets": []})
    assert load_manifest(path, "abc")["datasets"] == []


# ----------------------------------------------------------------------------- real on-disk cache

def _write_cache(tmp_path: Path, with_latents: bool = True) -> dict:
    """A cache as the cache stage writes it: safetensors entries under two-level fan-out."""
    from PIL import Image

    from runner.data.transforms import plan_crop

    text_dir, vae_dir = tmp_path / "text", tmp_path / "vae" / "photos"
    g = torch.Generator().manual_seed(1)
    captions = {"": 1, "a cat": 3, "a red car": 5, "dog": 2}
    for cap, n in captions.items():
        write_entry(entry_path(text_dir, f"{len(cap):02d}" + "t" * 62), {"prompt_embeds": torch.randn(n, 32, generator=g)},
                    {"caption": cap})
    items = []
    for j, (cap, size) in enumerate([("a cat", (64, 64)), ("a red car", (64, 64)), ("dog", (96, 64)),
                                     ("a cat", (96, 64)), ("dog", (64, 64)), ("a red car", (96, 64))]):
        img = tmp_path / "images" / f"{j}.png"
        img.parent.mkdir(exist_ok=True)
        Image.new("RGB", (size[0] * 2, size[1] * 2), (j * 40, 100, 200)).save(img)
        plan = plan_crop(size[0] * 2, size[1] * 2, resolution=64, resolution_type="pixel", crop=True,
                         crop_aspect="preserve", crop_style="center", seed_key=str(j))
        latent_key = f"{j:02d}" + "l" * 62 if with_latents else None
        if latent_key:
            tw, th = plan.target_size
            write_entry(entry_path(vae_dir, latent_key),
                        {"latent": torch.full((4, th // 8, tw // 8), float(j))}, {})
        items.append({"rel": img.name, "path": str(img), "caption": cap, "text_key": f"{len(cap):02d}" + "t" * 62,
                      "latent_key": latent_key, "bucket": f"{plan.target_size[0]}x{plan.target_size[1]}",
                      "plan": crop_plan_dict(plan)})
    atomic_write_json(vae_dir / "manifest.json", {"items": items})
    manifest = {"cache_fingerprint": "fp", "text_dir": str(text_dir), "empty_caption": "00" + "t" * 62,
                "datasets": [{"name": "photos", "manifest": str(vae_dir / "manifest.json"), "vae_dir": str(vae_dir),
                              "items": len(items)}]}
    atomic_write_json(tmp_path / "manifest.json", manifest)
    return load_manifest(tmp_path / "manifest.json", "fp")


@pytest.mark.parametrize("repeats", [0, 2])
def test_load_samples_repeats(tmp_path: Path, repeats: int) -> None:
    samples = load_samples(read_items(_write_cache(tmp_path)), {"photos": repeats})
    assert len(samples) == 6 * (1 + repeats)
    assert all(Path(s.latent_path).is_file() for s in samples)
    assert {s.bucket for s in samples} == {"64x64", "128x64"}  # 3:2 aligned to multiples of 64


@pytest.mark.parametrize("with_latents, dropout", [(True, 0.0), (True, 1.0), (False, 0.0)])
def test_training_data_stream_reads_real_entries(tmp_path: Path, with_latents: bool, dropout: float) -> None:
    data = TrainingData(_write_cache(tmp_path, with_latents=with_latents), FAMILY, repeats={}, batch_size=2, world_size=1, rank=0,
                        seed=3, dropout=dropout, workers=0, pin_memory=False)
    # 3 images per bucket, batch size 2: one batch per bucket, the odd one out is left for this epoch.
    assert data.batches_per_epoch == 2 and data.on_the_fly is (not with_latents)
    stream = data.stream(epoch=0, start=0)
    got = [next(stream) for _ in range(4)]
    assert [(e, i) for e, i, _ in got] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    key = "latent" if with_latents else "pixels"
    for _, _, batch in got:
        x = batch[key]
        assert x.shape[0] == 2
        if with_latents:
            assert x.shape[1] == 4 and tuple(x.shape[-2:]) in ((8, 8), (8, 16))
        else:
            assert x.shape[1] == 3 and tuple(x.shape[-2:]) in ((64, 64), (64, 128))
            assert x.dtype == torch.uint8 and x[:, 1].eq(100).all() and x[:, 2].eq(200).all()  # the photos' fill
        lengths = batch["mask"].sum(dim=1).tolist()
        if dropout == 1.0:
            assert lengths == [1, 1]  # every caption replaced by the empty one
        else:
            assert all(n in (2, 3, 5) for n in lengths)
    # Resuming at batch 2 of epoch 0 yields exactly what came after batch 1.
    resumed = next(data.stream(epoch=0, start=1))
    assert resumed[:2] == (0, 2)
    assert torch.equal(resumed[2][key], got[1][2][key])
    assert json.loads((tmp_path / "manifest.json").read_text())["cache_fingerprint"] == "fp"


@pytest.mark.parametrize("workers", [0, 1])
def test_stream_leaves_the_global_rng_alone(tmp_path: Path, workers: int) -> None:
    """The training noise is drawn from the global torch RNG, which a checkpoint saves and a
    resume restores. A DataLoader iterator draws its base seed from that RNG when created, and a
    resumed run creates one mid-epoch where the uninterrupted run did not: the noise after a
    resume would differ. Starting the stream anywhere, and crossing epochs, must draw nothing."""
    data = TrainingData(_write_cache(tmp_path), FAMILY, repeats={}, batch_size=2, world_size=1, rank=0, seed=3,
                        dropout=0.5, workers=workers, pin_memory=False)
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    fresh = data.stream(epoch=0, start=0)
    for _ in range(5):  # two and a half epochs
        next(fresh)
    resumed = data.stream(epoch=1, start=1)
    next(resumed)
    next(resumed)
    assert torch.equal(torch.get_rng_state(), before)


def _break(path: Path, how: str) -> None:
    from PIL import Image

    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        Image.new("RGB", (128, 128), (1, 2, 3)).save(path, format="JPEG")  # same name, cut short
        path.write_bytes(path.read_bytes()[:200])
    elif how == "resized":
        Image.new("RGB", (300, 300), (1, 2, 3)).save(path, format="PNG")
    elif how == "not-an-image":
        path.write_text("hello")


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("how,fragment", [
    ("deleted", "the image no longer exists"),
    ("truncated", "cannot read or decode the image"),
    ("resized", "image is 300x300 but was planned as"),
    ("not-an-image", "cannot read or decode the image"),
])
def test_on_the_fly_image_changed_after_caching_names_the_file(tmp_path: Path, how: str, fragment: str,
                                                                 workers: int) -> None:
    from runner.data import DatasetError

    manifest = _write_cache(tmp_path, with_latents=False)
    data = TrainingData(manifest, FAMILY, repeats={}, batch_size=2, world_size=1, rank=0, seed=3, dropout=0.0,
                        workers=workers, pin_memory=False)
    for name in ("0.png", "1.png", "2.png", "3.png", "4.png", "5.png"):
        _break(tmp_path / "images" / name, how)
    with pytest.raises(DatasetError) as exc:
        next(data.stream(epoch=0, start=0))
    message = str(exc.value)
    assert message.startswith(str(tmp_path / "images")) and ".png: " in message, message
    assert fragment in message, message
    assert "re-run the cache stage (trainingjob run FILE --stage cache)" in message
    assert "Traceback" not in message and "\n" not in message, message
