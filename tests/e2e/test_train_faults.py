"""Resume is really a resume. SIGKILL at each kind of point in training, and SIGTERM, one after
another in one output folder: every rerun resumes from the newest complete checkpoint, a
torn checkpoint is never used, and the job ends bit-identical to an uninterrupted run (CPU,
deterministic): weights, optimizer moments, LR schedule, RNG states, data position, export.

Each fault is deterministic: a test-only `sitecustomize` (see train_state.fault_env) signals
the process at the Nth call of a chosen function; the production code has no fault hooks.
Before, the first resume already diverged (max |delta| ~5e-4 by step 6)."""
from __future__ import annotations

import signal

import pytest

from runner.launch.lock import LOCK_FILE
from tests.e2e.conftest import assert_clean
from tests.e2e.train_state import (
    KILLED,
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

# (what, module, function, call, when, signal, newest complete checkpoint after it), in run order.
# Checkpoints fall at steps 3, 6, 9 and 10 (the last step), validation at 3, 6 and 9; an epoch
# is 8 steps, so the resumes from 3, 5 and 6 are mid-epoch and cross into the next one.
FAULTS = [
    ("mid-step 5 (in the forward pass)", "runner.models.pixart_sigma", "Objective.__call__", 5, "before",
     "SIGKILL", 3),
    # Preemption: the 2nd forward pass after resuming from step 3 is step 5.
    ("SIGTERM in step 5", "runner.models.pixart_sigma", "Objective.__call__", 2, "before", "SIGTERM", 5),
    # accelerate writes the model, then the optimizer, scheduler and RNG files, each via `save`.
    ("mid-write of the step-6 model file (left torn)", "accelerate.checkpointing", "save", 1, "torn", "SIGKILL", 5),
    ("between the step-6 model and optimizer files", "accelerate.checkpointing", "save", 2, "before", "SIGKILL", 5),
    ("after sealing step 6, before the rename", "runner.train.checkpoint", "seal", 1, "after", "SIGKILL", 5),
    ("right after the rename to step-6", "runner.train.checkpoint", "publish", 1, "after", "SIGKILL", 6),
    ("during the export, before it is renamed into place", "runner.models.pipeline", "replace_dir", 1, "before", "SIGKILL",
     10),
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_model):
    return shared_cache(tmp_path_factory, tiny_model)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model, cache):
    return shared_reference(tmp_path_factory, tiny_model, cache)


def test_faults_then_reruns_end_bit_identical_to_an_uninterrupted_run(tmp_path, tiny_model, cache, reference):
    runner = runner_with_cache(tmp_path, tiny_model, cache)
    resumed_from = None
    for what, module, attr, call, when, sig, newest in FAULTS:
        proc = run(runner, *RESUME_SETS, env=fault_env(tmp_path, quiet_env(runner), module, attr, call, when, sig))
        out = proc.stdout + proc.stderr
        if sig == "SIGTERM":  # a checkpoint at the end of the step, then exit 143
            assert_clean(proc, 128 + signal.SIGTERM)
            assert f"SIGTERM: checkpointed at step {newest}" in proc.stdout
        else:
            assert proc.returncode == KILLED, f"fault {what}: not killed (exit {proc.returncode}):\n{out[-3000:]}"
        if resumed_from is not None:
            assert f"resuming from step {resumed_from}" in proc.stdout, f"fault {what}:\n{out[-3000:]}"
        # Only complete checkpoints carry a step-N name, and each equals the reference's.
        steps = published_steps(runner.out)
        assert steps and steps[-1] == newest, f"fault {what}: checkpoints {steps}, expected newest step {newest}"
        for step in (s for s in steps if s != 5):  # the reference checkpoints at 3, 6, 9 and 10 only
            assert_same_state(runner.out / "checkpoints" / f"step-{step}",
                              reference / "checkpoints" / f"step-{step}", f"after the fault {what}")
        assert not (runner.out / "model").exists(), f"fault {what}: a model was exported"
        resumed_from = newest

    final = run(runner, *RESUME_SETS, env=quiet_env(runner))
    assert_clean(final)
    assert f"resuming from step {resumed_from}" in final.stdout
    assert_same_state(runner.out / "checkpoints" / "step-10", reference / "checkpoints" / "step-10", "the final state")
    assert not differences(exported_weights(runner.out), exported_weights(reference)), "the exported transformer"
    # the output lock's file stays by design (README "What a run writes"); its lock went with the process
    leftovers = sorted(p.name for p in runner.out.rglob(".*") if p.name != LOCK_FILE)
    assert not leftovers, f"temp folders left behind: {leftovers}"


@pytest.mark.parametrize("gpus", [1, 2])
def test_sigterm_between_the_cache_and_train_stages_stops_with_143_and_says_so(tmp_path, tiny_model, cache, gpus):
    """`--stage all`, SIGTERM right after the cache stage, before the train stage starts (its
    loop has not set its own handler yet). Before, one process died of the signal (exit -15, no
    word), and a launcher of 2 workers met torchrun's handler, left set after the cache workers,
    and printed 'internal error: SignalException'."""
    import shutil

    runner = runner_with_cache(tmp_path, tiny_model, tmp_path / "cache")
    shutil.copytree(cache, runner.cache)  # all cached: the cache stage only checks
    where = ("runner.launch.run", "run_train_stage", 1) if gpus == 1 else ("runner.launch.run", "launch_workers", 2)
    env = fault_env(tmp_path, quiet_env(runner), *where, "before", "SIGTERM")
    proc = run(runner, "spec.training.maxSteps=2", f"spec.hardware.gpusPerNode={gpus}", env=env, stage="all")
    assert_clean(proc, 128 + signal.SIGTERM)
    assert "stopped (SIGTERM): no checkpoint yet, so the rerun starts training from step 0" in proc.stderr
    assert "internal error" not in proc.stderr and "training processes" not in proc.stdout
