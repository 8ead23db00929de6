"""A stopped run's last progress line shows the loss of the step it stopped at.

The loss is reduced and shown every 10 steps (and at the first and last step). A run stopped
by SIGTERM at step 13 used to end on "train: 13/20 step ... loss=<step 10's loss>": the count
of the stop, the loss of the last logged step, with nothing to say they differ."""
from __future__ import annotations

import re

import pytest

from tests.e2e.conftest import assert_clean
from tests.e2e.train_state import fault_env, quiet_env, run, runner_with_cache, shared_cache

pytestmark = pytest.mark.e2e

# constant_with_warmup (the smoke spec's) and no validation: steps 1-13 do the same arithmetic
# whether the run plans 13 steps or 20, so step 13's loss is the same number in both.
SETS = ("spec.training.checkpointEvery=1000", "spec.validation.prompts=[]", "spec.tracking.tensorboard=false")
PROGRESS = re.compile(r"^train: (\d+)/(\d+) step .*\bloss=(\S+)", re.MULTILINE)


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_model):
    return shared_cache(tmp_path_factory, tiny_model)


def losses_shown(stdout: str) -> dict[int, str]:
    """The loss each progress line shows, by the step it names (as printed: 4 significant digits)."""
    return {int(step): loss for step, _total, loss in PROGRESS.findall(stdout)}


def test_the_last_line_of_a_stopped_run_shows_the_loss_of_its_last_step(tmp_path, tiny_model, cache):
    stopped = runner_with_cache(tmp_path / "stopped", tiny_model, cache)
    # SIGTERM as step 13's forward pass starts: the step completes, is checkpointed, and the run exits 143.
    env = fault_env(tmp_path, quiet_env(stopped), "runner.models.pixart_sigma", "Objective.__call__", 13,
                    "before", "SIGTERM")
    proc = run(stopped, *SETS, "spec.training.maxSteps=20", env=env)
    assert_clean(proc, code=143)
    assert "SIGTERM: checkpointed at step 13" in proc.stdout
    last = PROGRESS.findall(proc.stdout)[-1]
    assert last[:2] == ("13", "20"), proc.stdout[-2000:]

    # The same training to a step limit of 13 shows step 13's loss on its last line (the last
    # step is always logged): what the stopped run must show for its step 13.
    reference = runner_with_cache(tmp_path / "reference", tiny_model, cache)
    ref = run(reference, *SETS, "spec.training.maxSteps=13", env=quiet_env(reference))
    assert_clean(ref)
    step_13 = losses_shown(ref.stdout)[13]
    assert step_13 != losses_shown(ref.stdout)[10], "steps 10 and 13 show one loss: this test could not tell them apart"
    assert last[2] == step_13, f"the stopped run's last line shows loss={last[2]}, step 13's is {step_13}"
