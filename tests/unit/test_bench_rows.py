"""bench/rows.py: the bench's rows from canned logs of one and of two processes (pure functions;
tests/e2e/test_bench_gpus2.py runs the tiny 2-process bench itself)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# bench/ is scripts, not a package: load the one module without putting the folder on sys.path
_spec = importlib.util.spec_from_file_location("bench_rows", REPO / "bench" / "rows.py")
rows = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rows)

ONE_GPU = [
    (5.6, "[bench] encoding 2048 image(s) with the VAE (0 cached)"),
    (40.0, "latents: 100/2048 image (2.50 image/s, ETA 800s)"),
    (80.0, "latents: 2048/2048 image (25.00 image/s, ETA 0s)"),
    (90.0, "text embeds: 2049/2049 caption (100.00 caption/s, ETA 0s)"),
    (95.0, "[bench] cache stage done in 100.0s"),
    (96.0, "[bench] attention kernels: fa4"),
    *[(100.0 + s, f"train: {s}/60 step (1.0 step/s, ETA 1s) loss=0.1 samples_s={r}")
      for s, r in ((1, 2.0), (10, 15.0), (20, 18.0), (30, 18.5), (40, 18.3), (50, 18.7), (60, 18.4))],
    (170.0, "[bench] peak GPU memory: 54.6 GiB"),
]
# Two cache workers (torchrun's rank prefixes), each with its own shard and bars, the worker of
# rank 0 timing its own part, the launching process timing the whole stage; a tqdm bar glued to
# the next line; NCCL's set-up lines; the train stage's DDP line.
TWO_GPUS = [
    (3.0, "[rank0]: Writing model shards: 0%|  |[rank0]: [bench] encoding 1024 image(s) with the VAE (0 cached)"),
    (30.0, "[rank0]: latents: 100/1024 image (3.0 image/s, ETA 300s)"),
    (31.0, "[rank1]: latents: 120/1024 image (3.5 image/s, ETA 300s)"),
    (60.0, "[rank0]: latents: 1024/1024 image (20.0 image/s, ETA 0s)"),
    (61.0, "[rank1]: latents: 1024/1024 image (21.0 image/s, ETA 0s)"),
    (70.0, "[rank0]: text embeds: 1025/1025 caption (90.00 caption/s, ETA 0s)"),
    (71.0, "[rank1]: text embeds: 1024/1024 caption (80.00 caption/s, ETA 0s)"),
    (72.0, "[rank0]: [bench] cache stage done in 68.0s"),
    (75.0, "[bench] encoding 0 image(s) with the VAE (2048 cached)"),
    (76.0, "[bench] cache stage done in 73.5s"),
    (80.0, "[rank0]:h200:123:456 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/CUMEM/read"),
    (80.0, "[rank1]:h200:124:457 [1] NCCL INFO Channel 01/0 : 1[1] -> 0[0] via P2P/CUMEM/read"),
    (80.0, "[rank1]:h200:124:457 [1] NCCL INFO NET/Plugin: Could not find: libnccl-net.so. Error ignored"),
    (81.0, "[rank0]: [bench] data parallel: DistributedDataParallel over 2 processes, bucketCapMB 25, ..."),
    *[(90.0 + s, f"[rank0]: train: {s}/60 step (1.0 step/s, ETA 1s) loss=0.1 samples_s={r}")
      for s, r in ((10, 30.0), (30, 35.0), (40, 35.4), (60, 35.2))],
]


def test_one_process_run():
    got = rows.parse_run(ONE_GPU)
    assert got["samples_per_s"] == 18.45  # median of the windows after step 20
    assert got["cache_stage_s"] == 100.0 and got["peak_gib"] == 54.6 and got["attention"] == "fa4"
    cache = {r["stage"]: r for r in rows.cache_rows(got, {"gpus": 1})}
    assert cache[rows.VAE_STAGE]["images_per_s"] == round(1948 / 40, 1)  # first bar line to last
    assert cache[rows.VAE_STAGE]["first_line_s"] == 34.4
    assert cache[rows.TEXT_STAGE]["images_per_s"] == 100.0
    assert cache[rows.STEADY_STAGE]["images_per_s"] == round(1 / (1 / 48.7 + 1 / 100.0), 1)
    assert cache[rows.WHOLE_STAGE]["images_per_s"] == 20.5 and cache[rows.WHOLE_STAGE]["images"] == 2048


def test_two_process_run_sums_the_shards_and_reads_the_group():
    got = rows.parse_run(TWO_GPUS)
    assert got["samples_per_s"] == 35.2  # rank 0 logs the global rate
    assert got["cache_stage_s"] == 73.5  # the launching process's, not a worker's
    assert got["transports"] == ["P2P/CUMEM/read"]
    assert "errors" not in got  # NCCL's set-up chatter is no error
    assert got["ddp"].startswith("DistributedDataParallel over 2 processes")
    assert got["vae_start"] == 3.0  # found behind the glued progress bar; the final pass's is not the start
    cache = {r["stage"]: r for r in rows.cache_rows(got, {"gpus": 2})}
    vae = round((924 + 904) / (61 - 30), 1)  # both shards at once: from the first start to the last end
    assert cache[rows.VAE_STAGE]["images_per_s"] == vae and cache[rows.VAE_STAGE]["images"] == 2048
    text_start = min(70 - 1025 / 90, 71 - 1024 / 80)  # each bar's end less its captions over its rate
    assert cache[rows.TEXT_STAGE]["images_per_s"] == round(2049 / (71 - text_start), 1)
    assert cache[rows.TEXT_STAGE]["images"] == 2049
    assert cache[rows.WHOLE_STAGE]["images_per_s"] == round(2048 / 73.5, 1)


def test_shards_that_ran_one_after_the_other_do_not_add_up():
    """Seen on 2 x H200: rank 1 compiled its VAE cold while rank 0 encoded, so the two shards'
    bars barely overlapped; adding their rates read 128 images/s, twice what the GPUs did."""
    got = rows.parse_run([
        (22.3, "[rank0]: [bench] encoding 999 image(s) with the VAE (0 cached, 1049 for the other 1 shard(s))"),
        (46.1, "[rank0]: latents: 80/999 image (7.98 image/s, ETA 115s)"),
        (60.8, "[rank0]: latents: 999/999 image (40.39 image/s, ETA 0s)"),
        (61.2, "[rank1]: latents: 32/1049 image (1.31 image/s, ETA 778s)"),
        (76.6, "[rank1]: latents: 1049/1049 image (26.27 image/s, ETA 0s)"),
    ])
    vae = {r["stage"]: r for r in rows.cache_rows(got, {"gpus": 2})}[rows.VAE_STAGE]
    assert vae["images_per_s"] == round((919 + 1017) / (76.6 - 46.1), 1)  # 63.5, not 62.5 + 66.0


def test_segments():
    assert rows.segments("plain line") == [(None, "plain line")]
    assert rows.segments("[rank1]: a") == [(1, "a")]
    assert rows.segments("[rank0]: bar 10%\r[rank0]: bar 20%|[rank0]: next") == [(0, "bar 10%"), (0, "bar 20%|"),
                                                                                (0, "next")]


def test_scaling_pairs_each_2_gpu_row_with_the_1_gpu_row_of_the_same_stage():
    table = [
        {"stage": "train", "resolution": 1024, "batch": 8, "config": "c", "gpus": 1, "samples_per_s": 18.0},
        {"stage": "train", "resolution": 512, "batch": 32, "config": "c", "gpus": 1, "samples_per_s": 90.0},
        {"stage": "train", "resolution": 1024, "batch": 8, "config": "c", "gpus": 2, "samples_per_s": 34.2},
        {"stage": rows.WHOLE_STAGE, "resolution": 1024, "gpus": 1, "images_per_s": 19.0},
        {"stage": rows.WHOLE_STAGE, "resolution": 1024, "gpus": 2, "images_per_s": 30.4},
        {"stage": "train", "resolution": 512, "batch": 32, "config": "c", "gpus": 2, "nodes": 2,
         "samples_per_s": 150.0},
        {"stage": "train", "resolution": 512, "batch": 4, "config": "c", "gpus": 2, "samples_per_s": 40.0},  # no pair
        {"stage": "train", "resolution": 1024, "batch": 8, "config": "c", "gpus": 2, "samples_per_s": None},  # failed
    ]
    out = rows.with_scaling(table)
    assert [r.get("scaling") for r in out] == [None, None, 1.9, None, 1.6, 1.667, None, None]
    assert out[2]["gpus_1"] == 18.0 and out[4]["gpus_1"] == 19.0
    assert rows.with_scaling(out) == out  # applying it again changes nothing


def test_all_reduce_busy_and_exposed_time():
    # buckets of one step: (ready, done) in ms from the step's start; the second waits behind the first
    spans = [(50.0, 60.0), (55.0, 70.0), (80.0, 85.0), (90.0, 99.0)]
    assert rows.busy(spans) == 20 + 5 + 9
    assert rows.exposed(spans) == 9.0  # the last bucket was ready at 90, everything done at 99
    assert rows.exposed([(10.0, 12.0), (30.0, 29.0)]) == 0.0  # done before the last ready: hidden
    assert rows.busy([]) == 0.0 and rows.exposed([]) == 0.0
    steps = [{"step_ms": 120.0 + i, "backward_ms": 60.0, "spans": spans} for i in range(3)]
    assert rows.comm_summary(steps) == {"step_ms": 121.0, "backward_ms": 60.0, "allreduce_busy_ms": 34.0,
                                        "allreduce_exposed_ms": 9.0, "buckets": 4}


def test_flops_per_sample_gives_the_published_mfu():
    """The formula moved here from bench.py; the MFU of the committed results still follows from it."""
    published = json.loads((REPO / "bench" / "results" / "2026-11-29-nvidia-h200.json").read_text())
    checked = 0
    for row in published:
        if row.get("mfu") and row["stage"] == "train":
            got = row["samples_per_s"] * rows.flops_per_sample(row["resolution"]) / 1e12 / row["matmul_peak_tflops"]
            assert got == pytest.approx(row["mfu"], abs=0.002), row["config"]
            checked += 1
    assert checked >= 4
