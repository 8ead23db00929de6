"""FP8 fallback, the cache stage's pixel loader, decode workers and T5 padding to the longest caption, on the CPU."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from runner.cache.pixels import HostCopy, pixel_batches, verify_images
from runner.cache.entries import bucket_batches
from runner.data.transforms import plan_crop
from runner.data.workers import decode_workers, quota_cpus, usable_cpus
from runner.models.pixart_sigma import FAMILY
from runner.train.precision import apply_fp8, fp8_filter, fp8_problem


def test_fp8_falls_back_cleanly_where_unsupported() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(32, 32))
    assert fp8_problem(torch.device("cpu")) == "needs a CUDA GPU (device is cpu)"
    assert apply_fp8(model, torch.device("cpu"), "on") == "off (needs a CUDA GPU (device is cpu))"
    assert apply_fp8(model, torch.device("cpu"), "off") == "off"
    assert type(model[0]) is torch.nn.Linear
    with pytest.raises(ValueError, match="spec.training.fp8"):
        apply_fp8(model, torch.device("cpu"), "fast")


def test_fp8_filter_takes_block_linears_only() -> None:
    lin = torch.nn.Linear(1152, 4608)
    assert fp8_filter(lin, "transformer_blocks.3.ff.net.0.proj")
    assert fp8_filter(lin, "transformer_blocks.3.attn1.to_q")
    assert not fp8_filter(lin, "transformer_blocks.3.attn2.to_k")  # text tokens: too few rows
    assert not fp8_filter(lin, "caption_projection.linear_1")
    assert not fp8_filter(torch.nn.Linear(1152, 8), "transformer_blocks.0.x")
    assert not fp8_filter(torch.nn.LayerNorm(16), "transformer_blocks.0.norm1")


def _photo_items(tmp_path: Path, sizes: list[tuple[int, int]]) -> list[SimpleNamespace]:
    """Plan items (what the cache stage passes) for PNGs of distinct colours, 64x64 crops."""
    items = []
    for i, (w, h) in enumerate(sizes):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (w, h), (i * 20, 255 - i * 20, 7 * i)).save(path)
        plan = plan_crop(w, h, resolution=64, resolution_type="pixel", crop=True, crop_style="center",
                         crop_aspect="square", seed_key=str(i))
        items.append(SimpleNamespace(info=SimpleNamespace(path=path, rel=path.name), plan=plan, bucket=f"{w}x{h}"))
    return items


@pytest.mark.parametrize("workers", [0, 2])
def test_pixel_batches_keep_order_and_report_undecodable_items(tmp_path: Path, workers: int) -> None:
    items = _photo_items(tmp_path, [(80, 64), (64, 96), (70, 70), (64, 64), (100, 64)])
    (tmp_path / "2.png").write_bytes((tmp_path / "2.png").read_bytes()[:60])  # truncated: does not decode
    (tmp_path / "3.png").write_bytes(b"not an image")
    batches = [items[0:2], items[2:4], items[4:5]]
    out = list(pixel_batches(batches, FAMILY.image_to_tensor, workers=workers, pin=False))
    assert [i for i, _, _ in out] == [0, 1, 2]
    (_, first, bad0), (_, none, bad1), (_, last, bad2) = out
    assert first.shape == (2, 3, 64, 64) and first.dtype == torch.uint8 and bad0 == {}
    assert first[0, :, 0, 0].tolist() == [0, 255, 0] and first[1, :, 0, 0].tolist() == [20, 235, 7]
    assert none is None and sorted(bad1) == [0, 1] and all(r.startswith("cannot decode") for r in bad1.values())
    assert last.shape == (1, 3, 64, 64) and last[0, :, 5, 5].tolist() == [80, 175, 28] and bad2 == {}


def test_verify_images_names_what_does_not_decode_across_buckets(tmp_path: Path) -> None:
    items = _photo_items(tmp_path, [(80, 64), (64, 96), (70, 70), (80, 64)])
    (tmp_path / "1.png").write_bytes(b"not an image")
    batches = bucket_batches(items, lambda item: item.bucket, 2)
    found = verify_images(batches, FAMILY.image_to_tensor, workers=0)
    assert [(item.info.rel, reason.startswith("cannot decode")) for item, reason in found] == [("1.png", True)]


@pytest.mark.parametrize("entries, size, expected", [
    ([("b", 1), ("a", 2), ("b", 3), ("a", 4), ("b", 5)], 2, [[("a", 2), ("a", 4)], [("b", 1), ("b", 3)], [("b", 5)]]),
    ([("a", 1), ("a", 2), ("a", 3)], 16, [[("a", 1), ("a", 2), ("a", 3)]]),
    ([], 4, []),
])
def test_bucket_batches_keep_one_bucket_per_batch_in_bucket_order(entries, size, expected) -> None:
    assert [list(b) for b in bucket_batches(entries, lambda e: e[0], size)] == expected


def test_host_copy_on_the_cpu_casts() -> None:
    t = torch.tensor([1.0, 2.5, -3.25])
    out = HostCopy(t, torch.bfloat16).wait()
    assert out.dtype == torch.bfloat16 and out.tolist() == [1.0, 2.5, -3.25]


@pytest.mark.parametrize("line, cpus", [
    ("max 100000", None),
    ("400000 100000", 4.0),
    ("150000 100000", 1.5),
    ("50000 100000\n", 0.5),
    ("", None),
    ("garbage", None),
    ("0 100000", None),
])
def test_quota_cpus(line: str, cpus: float | None) -> None:
    assert quota_cpus(line) == cpus


@pytest.mark.parametrize("affinity, cpu_max, expected", [
    (64, "400000 100000", 4),   # a pod limited to 4 CPUs on a 64-core node
    (64, "150000 100000", 2),   # 1.5 CPUs: two processes
    (64, "50000 100000", 1),
    (2, "400000 100000", 2),    # the affinity mask is smaller
    (8, "max 100000", 8),
    (8, None, 8),
])
def test_usable_cpus(affinity: int, cpu_max: str | None, expected: int) -> None:
    assert usable_cpus(affinity, cpu_max) == expected


@pytest.mark.parametrize("cores, cpu_max, local_workers, expected", [
    (64, "400000 100000\n", None, 4),   # a Kubernetes CPU limit of 4 on a 64-core node
    (64, "max 100000\n", None, 16),     # no limit: at most 16 decoders
    (8, None, None, 8),                  # no cgroup v2 file
    (32, "max 100000\n", "4", 8),       # four cache workers on the node (torchrun) share the 32 cores
    (16, "400000 100000\n", "2", 2),    # two workers under a limit of 4
    (2, None, "8", 1),                   # more workers than cores: still one decoder each
])
def test_decode_workers_reads_affinity_and_the_cgroup_quota(monkeypatch, tmp_path: Path, cores, cpu_max,
                                                            local_workers, expected) -> None:
    from runner.data import workers

    cpu_max_file = tmp_path / "cpu.max"
    if cpu_max is not None:
        cpu_max_file.write_text(cpu_max)
    monkeypatch.setattr(workers, "CGROUP_CPU_MAX", cpu_max_file)
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: set(range(cores)))
    if local_workers is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_workers)
    assert decode_workers() == expected


@pytest.mark.usefixtures("torch_single_thread")
def test_t5_padding_to_longest_gives_the_same_embeddings(tmp_path: Path) -> None:
    from runner.models.pixart_sigma import FAMILY
    from runner.models.tiny.pixart_sigma import build_tiny_pixart_sigma

    model_dir = build_tiny_pixart_sigma(tmp_path / "tiny")
    tokenizer, encoder = text_encoder = FAMILY.load_text_encoder(model_dir, "float32", torch.device("cpu"))
    captions = ["a cat", "a photo of a red fox in a snowy forest, morning light"]
    longest = FAMILY.encode_text(text_encoder, captions, 300)
    alone = [FAMILY.encode_text(text_encoder, [c], 300)[0] for c in captions]
    tokens = tokenizer(captions, max_length=300, padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():
        full = encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
    for i, e in enumerate(longest):
        n = int(tokens.attention_mask[i].sum())
        assert e.shape[0] == n
        torch.testing.assert_close(e, full[i, :n], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(e, alone[i], rtol=1e-4, atol=1e-5)
