"""A run that (re)starts training at step N abandons what earlier runs did after step N.

A user stopped a 400-step run with Ctrl-C at step 40, before any checkpoint, then ran the job
again with maxSteps 12: it trained steps 1-12 from the base model and completed. Its report
still said `Step 40` in its header (complete.json: step 12), listed steps 20-40 of the first
run among its logged values, counted that run's validations, and showed its validation images
of steps 18-42 first: images of weights that no longer exist. Now what came after step N moves
to `abandoned-<UTC time>/` as the run starts, and the report shows the live timeline only."""
from __future__ import annotations

import json

import pytest

from runner.observe import runlog

from tests.e2e.conftest import assert_clean
from tests.e2e.train_state import fault_env, quiet_env, run, runner_with_cache, shared_cache

pytestmark = pytest.mark.e2e

# Validation every 3 steps (one small image), TensorBoard, a limit that keeps every checkpoint.
SETS = ("spec.validation.prompts=[\"a cat\"]", "spec.validation.resolutions=128x128",
        "spec.validation.inferenceSteps=2", "spec.validation.every=3", "spec.tracking.tensorboard=true",
        "spec.training.checkpointsTotalLimit=10")


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_model):
    return shared_cache(tmp_path_factory, tiny_model)


def tensorboard_steps(out, tag: str = "train/loss") -> list[int]:
    """The steps of `tag` that TensorBoard shows: every event file of the job's run folder,
    read the way TensorBoard reads them (orphaned events purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [folder] = [p for p in (out / "logs").iterdir() if p.is_dir()]  # logs/<job name>
    events = EventAccumulator(str(folder))
    events.Reload()
    return [s.step for s in events.Scalars(tag)]


def interrupted_run(tmp_path, runner, *sets: str) -> None:
    """A 20-step run stopped by Ctrl-C as step 12 starts: steps 1-11 done, steps 1 and 10
    logged, validation images of steps 3, 6 and 9."""
    env = fault_env(tmp_path, quiet_env(runner), "runner.models.pixart_sigma", "Objective.__call__", 12,
                    "before", "SIGINT")
    proc = run(runner, *SETS, "spec.training.maxSteps=20", *sets, env=env)
    assert_clean(proc, code=130)
    assert sorted(p.name for p in (runner.out / "validation").iterdir()) == ["step-3", "step-6", "step-9"]
    assert tensorboard_steps(runner.out) == [1, 10]


def history_steps(records: list[dict], event: str) -> list[int]:
    return sorted(r["step"] for r in records if r.get("event") == event)


def the_aside_folder(out):
    [aside] = [p for p in out.iterdir() if p.name.startswith("abandoned-")]
    return aside


def test_a_restart_from_step_0_sets_the_abandoned_run_aside(tmp_path, tiny_model, cache):
    runner = runner_with_cache(tmp_path, tiny_model, cache)
    interrupted_run(tmp_path, runner, "spec.training.checkpointEvery=1000")  # no checkpoint: the rerun starts over

    again = run(runner, *SETS, "spec.training.maxSteps=4", "spec.training.checkpointEvery=1000", env=quiet_env(runner))
    assert_clean(again)
    assert "resuming from" not in again.stdout
    # The event files stay in logs/ (appended to, not moved): without purge_step TensorBoard drew
    # both runs' losses over each other, steps 1, 10, 1, 4.
    assert tensorboard_steps(runner.out) == [1, 4]

    history = runlog.read(runner.out / "metrics.jsonl")
    assert history_steps(history, "train") == [1, 4]  # this run's steps only, once each
    assert history_steps(history, "validation") == [3, 4]
    report = (runner.out / "report.html").read_text()
    assert "Step 4, loss" in report and "Step 10" not in report
    assert "<td>validation runs</td><td>2, " in report
    assert "Logged values (2 steps)" in report
    assert json.loads((runner.out / "trainingjob.complete.json").read_text())["step"] == 4
    assert sorted(p.name for p in (runner.out / "validation").iterdir()) == ["step-3", "step-4"]

    # Nothing is deleted: the abandoned run's images (step 3's too: other weights) and records.
    aside = the_aside_folder(runner.out)
    assert "moved what an earlier run did after step 0" in again.stdout and str(aside) in again.stdout
    assert sorted(p.name for p in (aside / "validation").iterdir()) == ["step-3", "step-6", "step-9"]
    assert all(list((aside / "validation" / s).glob("*.png")) for s in ("step-3", "step-6", "step-9"))
    moved = runlog.read(aside / "metrics.jsonl")
    assert history_steps(moved, "train") == [1, 10] and history_steps(moved, "validation") == [3, 6, 9]


def test_a_resume_from_an_earlier_checkpoint_sets_the_later_ones_aside(tmp_path, tiny_model, cache):
    """Resuming at step 4 while step 8's checkpoint exists: left in place, that checkpoint would
    outrank the new ones in pruning and be what the next `resume: auto` loads."""
    runner = runner_with_cache(tmp_path, tiny_model, cache)
    interrupted_run(tmp_path, runner, "spec.training.checkpointEvery=4")
    assert sorted(p.name for p in (runner.out / "checkpoints").iterdir()) == ["step-4", "step-8"]

    again = run(runner, *SETS, "spec.training.maxSteps=6", "spec.training.checkpointEvery=4",
                "spec.training.checkpointsTotalLimit=2", f"spec.training.resume={runner.out / 'checkpoints' / 'step-4'}",
                env=quiet_env(runner))
    assert_clean(again)
    assert "resuming from step 4" in again.stdout
    assert tensorboard_steps(runner.out) == [1, 6]  # the first run's step 1 is this timeline's, its 10 is not

    history = runlog.read(runner.out / "metrics.jsonl")
    assert history_steps(history, "train") == [1, 6]  # step 1 of the timeline the checkpoint continues
    assert history_steps(history, "validation") == [3, 6]
    assert history_steps(history, "checkpoint") == [4, 6]
    report = (runner.out / "report.html").read_text()
    assert "Step 6, loss" in report and "Step 10" not in report and "Step 9" not in report
    assert sorted(p.name for p in (runner.out / "validation").iterdir()) == ["step-3", "step-6"]
    assert sorted(p.name for p in (runner.out / "checkpoints").iterdir()) == ["step-4", "step-6"]

    aside = the_aside_folder(runner.out)
    assert "moved what an earlier run did after step 4" in again.stdout and str(aside) in again.stdout
    assert sorted(p.name for p in (aside / "checkpoints").iterdir()) == ["step-8"]
    assert sorted(p.name for p in (aside / "validation").iterdir()) == ["step-6", "step-9"]
    moved = runlog.read(aside / "metrics.jsonl")
    assert history_steps(moved, "train") == [10] and history_steps(moved, "validation") == [6, 9]
    assert history_steps(moved, "checkpoint") == [8]
