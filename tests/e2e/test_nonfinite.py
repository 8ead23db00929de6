"""A diverging run (forced through the spec: plain SGD at learning rate 1, no clipping) stops
at the step the loss or the weights stop being finite, with exit 3 (a retry would diverge at
the same step again, so neither torchrun nor the Job retries it: tests/e2e/test_torchrun.py)
and advice from the spec, not as "a bug in trainingjob"; no checkpoint or export holds a NaN
(before, the loss was checked every 10 steps and a checkpoint every step saved up to 9 diverged
models). The loss is checked at every step whether or not a checkpoint is due."""
from __future__ import annotations

import re

import pytest
from safetensors.torch import load_file

from tests.e2e.conftest import assert_clean
from tests.e2e.train_state import all_finite, published_steps, quiet_env, run, runner_with_cache, shared_cache

pytestmark = pytest.mark.e2e

DIVERGE = ("spec.training.optimizer=sgd", "spec.training.learningRate=1", "spec.training.maxGradNorm=0",
           "spec.training.lrWarmupSteps=0", "spec.training.maxSteps=30", "spec.training.checkpointEvery=1",
           "spec.training.checkpointsTotalLimit=100", "spec.validation.prompts=[]", "spec.tracking.tensorboard=false")


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_model):
    return shared_cache(tmp_path_factory, tiny_model)


def test_divergence_stops_at_its_step_with_advice_and_nothing_non_finite_is_saved(tmp_path, tiny_model, cache):
    runner = runner_with_cache(tmp_path, tiny_model, cache)
    proc = run(runner, *DIVERGE, env=quiet_env(runner))
    assert_clean(proc, 3)  # exit 1, which Kubernetes retries up to 16 times, before
    assert "bug in trainingjob" not in proc.stderr
    assert "(exit 3: not retried)" in proc.stderr
    found = re.search(r"not finite (?:at|after) step (\d+)", proc.stderr)
    assert found, proc.stderr[-3000:]
    step = int(found.group(1))
    for advice in ("learningRate (now 1)", "maxGradNorm", "resume: none", "or from an earlier one",
                   "would very likely diverge again"):
        assert advice in proc.stderr
    # A checkpoint every step, up to the one before the divergence, each of them finite.
    assert published_steps(runner.out) == list(range(1, step))
    for s in range(1, step):
        weights = load_file(str(runner.out / "checkpoints" / f"step-{s}" / "model.safetensors"))
        assert all_finite(weights), f"step-{s} holds NaN or inf"
    assert not (runner.out / "model").exists()

    # The loss is checked at every step, not only when a checkpoint is due: with no checkpoint
    # before the end, the same (deterministic) run stops at the same step, having saved nothing.
    # Checked every 10 steps, as before, it went on to step 10 on a NaN loss.
    quiet = runner_with_cache(tmp_path / "no-checkpoints", tiny_model, cache)
    again = run(quiet, *DIVERGE, "spec.training.checkpointEvery=100", env=quiet_env(quiet))
    assert_clean(again, 3)
    first_nan_loss = step if found.group(0).startswith("not finite at") else step + 1  # weights: next step's loss
    assert f"the loss is not finite at step {first_nan_loss}." in again.stderr, again.stderr[-3000:]
    assert published_steps(quiet.out) == [] and not (quiet.out / "model").exists()
