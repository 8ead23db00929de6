"""torchrun on the CPU: several workers on one node, and two nodes standing in for two pods."""
from __future__ import annotations

import json
import re
import subprocess
import uuid

import pytest

from tests.e2e.conftest import REPO, assert_clean, free_port

pytestmark = pytest.mark.e2e

SMALL = ("spec.training.batchSize=1", "spec.training.maxSteps=2", "spec.training.checkpointEvery=2",
         "spec.validation.prompts=[]", "spec.tracking.tensorboard=false")


def test_gpus_per_node_2_goes_through_torchrun(runner):
    """gpusPerNode: 2 with accelerator cpu runs two gloo workers per stage through torchrun: the
    same launch and sharding code path as on 2 GPUs, checked here without one."""
    proc = runner.run("spec.hardware.gpusPerNode=2", *SMALL)
    assert_clean(proc)
    out = proc.stdout + proc.stderr
    assert "launching 2 cache workers on node 0 of 1: torchrun --nproc-per-node=2" in out
    assert "launching 2 training processes on node 0 of 1: torchrun" in out
    assert "--rdzv-endpoint=localhost:0" in out  # a free port, not a fixed 29500
    # Every worker line carries its rank, and the tee'd files keep each rank's output.
    assert "[rank0]: " in out and "[rank1]: " in out
    logs = sorted(p.relative_to(runner.out) for p in (runner.out / "logs" / "torchrun").rglob("stdout.log"))
    assert len(logs) == 4, logs  # 2 cache + 2 train workers
    # The cache is encoded in two shards, one per worker; the final pass finds it all cached.
    shard_counts = [int(n) for n in re.findall(r"cache shard \d/2 done: text embeds: \d+ \((\d+) encoded", out)]
    assert len(shard_counts) == 2 and all(n > 0 for n in shard_counts)
    final = runner.cache_report()
    assert final["latents_encoded"] == 0 and final["text_encoded"] == 0
    assert sum(shard_counts) == final["text_total"]
    assert "on 2 x cpu" in out
    state = json.loads((runner.out / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert state["state"]["samples_seen"] == 2 * 2  # 2 steps x batch 1 x 2 processes
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(state["files"])


def test_two_nodes_of_one_process_each_as_two_pods(runner):
    """What the Indexed Jobs run: each 'pod' gets JOB_COMPLETION_INDEX, the rendezvous address
    (pod 0) and a run id; the cache pods split the shards and the last one writes the manifest;
    the train pods meet in one c10d rendezvous and train as one 2-process group."""
    sets = ("spec.hardware.nodes=2", *SMALL)
    port, run = free_port(), uuid.uuid4().hex

    def pods(stage: str) -> list[subprocess.CompletedProcess]:
        procs = []
        for index in (0, 1):
            env = {**runner.env(), "JOB_COMPLETION_INDEX": str(index), "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(port), "POD_IP": "127.0.0.1", "TRAININGJOB_RUN_ID": f"{run}-{stage}"}
            procs.append(subprocess.Popen(runner.args(*sets, stage=stage), cwd=REPO, env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        return [subprocess.CompletedProcess(p.args, p.wait(timeout=400), p.stdout.read(), "") for p in procs]

    cache = pods("cache")
    for proc in cache:
        assert_clean(proc)
    shard_lines = [line for proc in cache for line in proc.stdout.splitlines() if "cache shard" in line and " done: " in line]
    assert sorted(line.split("cache shard ")[1][:3] for line in shard_lines) == ["1/2", "2/2"]
    report = runner.cache_report()
    assert report["text_encoded"] == 0 and report["latents_encoded"] == 0  # the shards did it all

    train = pods("train")
    for proc in train:
        assert_clean(proc)
    assert "on node 1 of 2" in train[1].stdout and "--nnodes=2" in train[1].stdout
    assert "[rank0]: " in train[0].stdout  # node 0's worker is global rank 0 (it logs for the group)
    state = json.loads((runner.out / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert state["state"]["samples_seen"] == 2 * 2  # 2 steps x batch 1 x 2 nodes
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(state["files"])  # one per global rank
