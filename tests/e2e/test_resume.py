"""SIGKILL after the first checkpoint, rerun: resume from it and finish at the final step."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import pytest

from tests.e2e.conftest import REPO, assert_clean

pytestmark = pytest.mark.e2e


def test_sigkill_then_rerun_resumes_from_the_last_complete_checkpoint(runner):
    sets = ("spec.training.maxSteps=24", "spec.training.checkpointEvery=4", "spec.training.checkpointsTotalLimit=10",
            "spec.validation.prompts=[]")
    assert_clean(runner.run(*sets, stage="cache"))
    proc = subprocess.Popen(runner.args(*sets, stage="train"), cwd=REPO, env=runner.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = runner.out / "checkpoints" / "step-4" / "trainer_state.json"
    deadline = time.time() + 240
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists(), "the first checkpoint was never written"
    assert proc.returncode == -signal.SIGKILL

    # A half-written checkpoint from the kill must never be loaded: fake one that is newer.
    torn = runner.out / "checkpoints" / "step-100"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"torn")

    again = runner.run(*sets, stage="train")
    assert_clean(again)
    resumed = int(re.search(r"resuming from step (\d+)", again.stdout).group(1))
    assert resumed >= 4 and resumed % 4 == 0
    assert "ignoring checkpoint" in again.stdout and "step-100" in again.stdout
    final = json.loads((runner.out / "checkpoints" / "step-24" / "trainer_state.json").read_text())
    assert final["state"]["step"] == 24
    assert re.search(r"done in .*: 24 steps", again.stdout)


def test_two_process_data_parallel_run_on_cpu(runner):
    """gpusPerNode: 2 with accelerator cpu runs two gloo workers: the same launch and sharding
    code path as 2 x H100, checked here without a GPU."""
    sets = ("spec.hardware.gpusPerNode=2", "spec.training.batchSize=1", "spec.training.maxSteps=6",
            "spec.training.checkpointEvery=3", "spec.validation.prompts=[]")
    proc = runner.run(*sets)
    assert_clean(proc)
    # The cache is encoded in two shards, one per worker; the final pass finds it all cached.
    assert "launching 2 cache workers" in proc.stdout
    assert "cache shard 1/2 done" in proc.stdout and "cache shard 2/2 done" in proc.stdout
    shard_counts = [int(n) for n in re.findall(r"cache shard \d/2 done: text embeds: \d+ \((\d+) encoded", proc.stdout)]
    assert len(shard_counts) == 2 and all(n > 0 for n in shard_counts)
    final = runner.cache_report()
    assert final["latents_encoded"] == 0 and final["text_encoded"] == 0
    assert sum(shard_counts) == final["text_total"]
    assert "launching 2 training processes" in proc.stdout
    assert "on 2 x cpu" in proc.stdout
    state = json.loads((runner.out / "checkpoints" / "step-6" / "trainer_state.json").read_text())
    assert state["state"]["samples_seen"] == 6 * 2  # 6 steps x batch 1 x 2 processes
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(state["files"])


def test_sigterm_checkpoints_at_the_next_step_and_exits_143(runner):
    """Preemption (or `kubectl delete`): SIGTERM writes a checkpoint, then a rerun resumes."""
    sets = ("spec.training.maxSteps=400", "spec.training.checkpointEvery=1000", "spec.validation.prompts=[]")
    assert_clean(runner.run(*sets, stage="cache"))
    proc = subprocess.Popen(runner.args(*sets, stage="train"), cwd=REPO, env=runner.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:  # wait until the loop runs
        lines.append(line)
        if line.startswith("train:") or "training " in line:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out = "".join(lines) + proc.stdout.read()
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, out
    assert "SIGTERM: checkpointed at step" in out and "Traceback" not in out
    saved = int(re.search(r"checkpointed at step (\d+)", out).group(1))
    assert 0 < saved < 400
    state = json.loads((runner.out / "checkpoints" / f"step-{saved}" / "trainer_state.json").read_text())
    assert state["state"]["step"] == saved

    again = runner.run("spec.training.maxSteps=" + str(saved + 2), *sets[1:], stage="train")
    assert_clean(again)
    assert f"resuming from step {saved}" in again.stdout
