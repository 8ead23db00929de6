"""`make bench GPUS=2`'s code path on the CPU: bench/bench.py --tiny --gpus 2 runs each stage on one
process and on two (gloo), and as two single-process "nodes", then writes paired rows with the
ratio; bench/ddp_comm.py times the all-reduce of each step under torchrun. (The row building
on canned logs: tests/unit/test_bench_rows.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.e2e.conftest import REPO

pytestmark = pytest.mark.e2e


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OUT"}  # $OUT would get a copy of the rows
    return {**env, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_tiny_two_gpu_bench_pairs_one_and_two_processes(tmp_path):
    proc = subprocess.run([sys.executable, "bench/bench.py", "--tiny", "--gpus", "2", "--only", "512,two-node",
                           "--photos", "16", "--steps", "4", "--work", str(tmp_path)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    [results] = tmp_path.glob("*-cpu-x2-512-two-node.json")
    rows = json.loads(results.read_text())
    by_count = {(r["gpus"], r.get("nodes", 1)): r for r in rows}
    one, two, nodes = by_count[1, 1], by_count[2, 1], by_count[2, 2]
    for row in (one, two, nodes):
        assert row["stage"] == "train" and row["resolution"] == 512 and row["errors"] == []
        assert row["samples_per_s"] > 0
    assert two["ddp"].startswith("DistributedDataParallel over 2 processes, bucketCapMB 25")
    assert nodes["ddp"].startswith("DistributedDataParallel over 2 processes")  # one group across the two agents
    for row in (two, nodes):
        assert row["gpus_1"] == one["samples_per_s"]
        assert row["scaling"] == round(row["samples_per_s"] / one["samples_per_s"], 3)
    assert "scaling" not in one


def test_all_reduce_time_per_step_under_torchrun():
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "bench/ddp_comm.py", "--tiny", "--res", "512", "--batch", "2", "--steps", "3",
                           "--set", "spec.training.ddp.bucketCapMB=1"],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    [line] = [x for x in proc.stdout.splitlines() if x.startswith("DDP_COMM ")]
    row = json.loads(line.removeprefix("DDP_COMM "))
    assert row["processes"] == 2 and row["buckets"] >= 1
    assert row["ddp"].startswith("DistributedDataParallel over 2 processes, bucketCapMB 1,")  # the --set reached DDP
    assert 0 <= row["allreduce_exposed_ms"] <= row["allreduce_busy_ms"] < row["step_ms"]
    assert 0 < row["backward_ms"] < row["step_ms"]
