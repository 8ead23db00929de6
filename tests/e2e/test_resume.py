"""Resume is really a resume: an interrupted run, rerun, ends bit-identical to one that was
never interrupted (CPU, deterministic), compared tensor by tensor. A finished job, rerun,
does nothing. Data-parallel training runs on two CPU processes."""
from __future__ import annotations

import json
import re
import shutil
import signal

import pytest

from tests.e2e.conftest import assert_clean
from tests.e2e.train_state import (
    RESUME_SETS,
    assert_same_state,
    differences,
    exported_weights,
    fault_env,
    published_steps,
    quiet_env,
    run,
    runner_with_cache,
    shared_cache,
    shared_reference,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_model):
    return shared_cache(tmp_path_factory, tiny_model)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model, cache):
    return shared_reference(tmp_path_factory, tiny_model, cache)


def test_sigterm_mid_epoch_then_rerun_ends_bit_identical_to_an_uninterrupted_run(tmp_path, tiny_model, cache,
                                                                                   reference):
    """Preemption (or `kubectl delete`) at step 5 of 10, mid-epoch: SIGTERM writes a checkpoint
    and exits 143; the rerun resumes, crosses the epoch boundary, validates, and ends with the
    same weights, optimizer moments, LR-scheduler state, RNG states, data position and export
    as the uninterrupted reference. The signal comes from inside the 5th forward pass, so the
    step it lands in does not depend on timing."""
    runner = runner_with_cache(tmp_path, tiny_model, cache)
    env = fault_env(tmp_path, quiet_env(runner), "runner.models.pixart_sigma", "Objective.__call__", call=5,
                    sig="SIGTERM")
    stopped = run(runner, *RESUME_SETS, env=env)
    assert_clean(stopped, 128 + signal.SIGTERM)
    assert "SIGTERM: checkpointed at step 5" in stopped.stdout
    assert published_steps(runner.out) == [3, 5]
    assert_same_state(runner.out / "checkpoints" / "step-3", reference / "checkpoints" / "step-3", "before the stop")
    assert not (runner.out / "model").exists()

    resumed = run(runner, *RESUME_SETS, env=quiet_env(runner))
    assert_clean(resumed)
    assert "resuming from step 5" in resumed.stdout
    for step in (6, 9, 10):
        assert_same_state(runner.out / "checkpoints" / f"step-{step}", reference / "checkpoints" / f"step-{step}",
                          f"after resuming from step 5 (step {step})")
    assert not differences(exported_weights(runner.out), exported_weights(reference)), "the exported transformer"


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def test_rerun_of_a_finished_job_does_nothing_and_says_how_to_continue(tmp_path, tiny_model, cache, reference):
    runner = runner_with_cache(tmp_path, tiny_model, cache)
    shutil.copytree(reference, runner.out)
    before = _snapshot(runner.out)

    again = run(runner, *RESUME_SETS, env=quiet_env(runner), stage="all")
    assert_clean(again)
    assert "complete at step 10" in again.stdout
    assert "maxSteps" in again.stdout and "resume: none" in again.stdout  # how to train longer, how to start over
    assert "nan" not in again.stdout.lower()
    assert _snapshot(runner.out) == before, "a finished job was changed by its rerun"

    # More steps is another job: it resumes from the last checkpoint and trains the difference.
    longer = run(runner, *RESUME_SETS, "spec.training.maxSteps=12", env=quiet_env(runner))
    assert_clean(longer)
    assert "resuming from step 10" in longer.stdout and "complete at step" not in longer.stdout
    assert published_steps(runner.out)[-1] == 12
    assert differences(exported_weights(runner.out), exported_weights(reference)), "the longer run re-exported"


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
