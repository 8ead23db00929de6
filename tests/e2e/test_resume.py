"""A finished job, rerun, does nothing. Data-parallel training runs on two CPU processes.

That an interrupted run, rerun, ends bit-identical to one never interrupted (compared tensor
by tensor, after SIGTERM and after SIGKILL at many points) is test_train_faults.py."""
from __future__ import annotations

import json
import shutil

import pytest
import yaml

from runner.observe import runlog
from runner.spec.plan import exported_document

from tests.e2e.conftest import assert_clean
from tests.e2e.train_state import (KILLED, RESUME_SETS, fault_env, quiet_env, run, runner_with_cache, shared_cache,
                                   shared_reference)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_model):
    return shared_cache(tmp_path_factory, tiny_model)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model, cache):
    return shared_reference(tmp_path_factory, tiny_model, cache)


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def test_rerun_of_a_finished_job_does_nothing_and_says_how_to_continue(tmp_path, tiny_model, cache, reference):
    """It used to re-validate, re-export and print `final loss nan`. (A spec with more steps is
    not finished: the table in tests/unit/test_completion.py.)"""
    runner = runner_with_cache(tmp_path, tiny_model, cache)
    shutil.copytree(reference, runner.out)
    before = _snapshot(runner.out)

    again = run(runner, *RESUME_SETS, env=quiet_env(runner), stage="all")
    assert_clean(again)
    assert "complete at step 10" in again.stdout
    assert "maxSteps" in again.stdout and "resume: none" in again.stdout  # how to train longer, how to start over
    assert "nan" not in again.stdout.lower()
    assert _snapshot(runner.out) == before, "a finished job was changed by its rerun"


def test_rerun_of_a_finished_job_with_new_cache_settings_does_nothing(tmp_path, tiny_model, cache, reference):
    """A change that touches the cache (here the resolution) used to make a finished job
    unfinished: the rerun re-encoded every latent, trained "no more steps", re-rendered the
    validation, re-exported the model and recorded a spec with a resolution it never trained at."""
    own_cache = tmp_path / "cache"
    shutil.copytree(cache, own_cache)  # the shared one stays untouched, whatever happens here
    runner = runner_with_cache(tmp_path, tiny_model, own_cache)
    shutil.copytree(reference, runner.out)
    before, cache_before = _snapshot(runner.out), _snapshot(own_cache)

    for stage in ("all", "train"):
        again = run(runner, *RESUME_SETS, "spec.datasets.0.resolution=192", env=quiet_env(runner), stage=stage)
        assert_clean(again)
        assert "complete at step 10" in again.stdout, again.stdout[-3000:]
        assert "spec.datasets[0].resolution 128 -> 192" in again.stdout  # what did not apply
        assert "resume: none" in again.stdout  # how to train with it
        assert "encoding" not in again.stdout and "resuming" not in again.stdout
    assert _snapshot(runner.out) == before, "a finished job was changed by its rerun"
    assert _snapshot(own_cache) == cache_before, "a finished job's rerun did cache work"


def test_resume_none_starts_over_and_sets_the_earlier_run_aside(tmp_path, tiny_model, cache, reference):
    """Pruning keeps the highest step numbers: a fresh run into a folder holding step-10 of an
    earlier run used to have its own checkpoints deleted as soon as they were written. Then only
    the checkpoints moved: the new run overwrote the earlier validation images of the same
    steps, and its report showed the earlier run's last step as the newest."""
    runner = runner_with_cache(tmp_path, tiny_model, cache)
    shutil.copytree(reference, runner.out)
    earlier = {name: {p.name for p in (runner.out / name).iterdir()} for name in ("checkpoints", "validation", "model")}
    earlier_history = runlog.read(runner.out / "metrics.jsonl")
    earlier_spec = (runner.out / "trainingjob.effective.yaml").read_text()

    again = run(runner, *RESUME_SETS, "spec.training.resume=none", "spec.training.maxSteps=4",
                "spec.training.checkpointEvery=2", "spec.training.checkpointsTotalLimit=1",
                env=quiet_env(runner), stage="all")
    assert_clean(again)
    assert "resuming from" not in again.stdout
    assert sorted(p.name for p in (runner.out / "checkpoints").iterdir()) == ["step-4"]
    state = json.loads((runner.out / "checkpoints" / "step-4" / "trainer_state.json").read_text())["state"]
    assert state["step"] == 4
    [aside] = [p for p in runner.out.iterdir() if p.name.startswith("before-")]
    for name, entries in earlier.items():  # nothing of the earlier run is lost, nor overwritten
        assert {p.name for p in (aside / name).iterdir()} == entries
    assert sorted(p.name for p in (runner.out / "validation").iterdir()) == ["step-3", "step-4"]
    # The earlier run's report (redrawn by this invocation's cache stage, from the earlier history).
    assert "Step 10, loss" in (aside / "report.html").read_text()
    assert json.loads((aside / "trainingjob.complete.json").read_text())["step"] == 10
    assert runlog.read(aside / "metrics.jsonl") == earlier_history
    assert {r["step"] for r in runlog.read(runner.out / "metrics.jsonl") if r["event"] == "train"} == {1, 4}
    assert "Step 4, loss" in (runner.out / "report.html").read_text()
    assert f"moved the earlier run (checkpoints, validation, model, report.html, trainingjob.complete.json, " \
           f"trainingjob.effective.yaml, its {len(earlier_history)} records in metrics.jsonl) to {aside}" in again.stdout
    # the spec it ran, which this run's own replaced as it started
    assert (aside / "trainingjob.effective.yaml").read_text() == earlier_spec
    assert "resume: none" in (runner.out / "trainingjob.effective.yaml").read_text()
    assert not (runner.out / "trainingjob.effective.earlier.yaml").exists()
    assert json.loads((runner.out / "trainingjob.complete.json").read_text())["step"] == 4


@pytest.mark.parametrize("second", [("spec.training.maxSteps=16",), ("spec.training.resume=none",)],
                         ids=["more-steps", "resume-none"])
def test_the_spec_that_produced_the_export_outlives_failed_runs(tmp_path, tiny_model, cache, reference, second):
    """Each run that starts work writes trainingjob.effective.yaml and keeps only the one before
    as .earlier.yaml: after two runs that started and failed (the first asking for more steps,
    so not "complete"), no file in the folder said which spec produced model/. With `resume:
    none` the earlier.yaml moved aside beside model/ was the failed run's, not the finished
    one's. The export now carries its own spec, model/trainingjob.yaml."""
    runner = runner_with_cache(tmp_path, tiny_model, cache)
    shutil.copytree(reference, runner.out)
    finished = (reference / "trainingjob.effective.yaml").read_bytes()
    exported = yaml.safe_dump(exported_document(yaml.safe_load(finished)), sort_keys=False).encode()
    assert (reference / "model" / "trainingjob.yaml").read_bytes() == exported  # the effective spec, for the Hub

    for n, sets in enumerate((("spec.training.maxSteps=14",), second)):
        env = fault_env(tmp_path / f"fault-{n}", quiet_env(runner), "runner.models.pixart_sigma",
                        "Objective.__call__", 2, "before", "SIGKILL")  # killed in its second step
        failed = run(runner, *RESUME_SETS, *sets, env=env)
        assert failed.returncode == KILLED, (failed.stdout + failed.stderr)[-3000:]
    assert (runner.out / "trainingjob.effective.yaml").read_bytes() != finished

    if second == ("spec.training.resume=none",):  # the finished run went aside, its model with it
        [aside] = [p for p in runner.out.iterdir() if p.name.startswith("before-")]
        model, record = aside / "model", aside / "trainingjob.complete.json"
        assert (aside / "trainingjob.effective.yaml").read_bytes() != finished  # the first failed run's
    else:
        model, record = runner.out / "model", runner.out / "trainingjob.complete.json"
        assert (runner.out / "trainingjob.effective.earlier.yaml").read_bytes() != finished
    assert json.loads(record.read_text())["step"] == 10
    assert (model / "trainingjob.yaml").read_bytes() == exported


def test_a_changed_optimizer_is_refused_and_a_changed_learning_rate_applies(tmp_path, tiny_model, cache, reference):
    """A checkpoint's optimizer state loads into another optimizer without complaint (torch
    takes the saved settings along), and the run used to stop at its first step with
    "internal error: KeyError: 'momentum'"; a changed learningRate was silently the
    checkpoint's. The reference ran AdamW at 1e-3 for 10 steps."""
    runner = runner_with_cache(tmp_path, tiny_model, cache)
    shutil.copytree(reference, runner.out)
    switched = run(runner, *RESUME_SETS, "spec.training.maxSteps=12", "spec.training.optimizer=sgd",
                   env=quiet_env(runner))
    out = switched.stdout + switched.stderr
    assert switched.returncode != 0 and "internal error" not in out and "Traceback" not in out
    # refused from the checkpoint's saved spec, before anything is loaded or written
    assert "spec.training.optimizer: this run uses sgd" in out and "written by adamw" in out and "resume: none" in out

    faster = run(runner, *RESUME_SETS, "spec.training.maxSteps=12", "spec.training.learningRate=1e-2",
                 env=quiet_env(runner))
    assert_clean(faster)
    assert "resuming from step 10" in faster.stdout
    assert "spec.training.learningRate is 0.01 now (0.001 in the checkpoint)" in faster.stdout
    # the note names what changed since the checkpoint (it said only "the spec changed")
    note = next(line for line in faster.stdout.splitlines() if "note: the spec changed" in line)
    assert "spec.training.learningRate 0.001 -> 0.01, spec.training.maxSteps 10 -> 12" in note, note
    assert "spec.training.optimizer" not in note  # only what changed


@pytest.mark.parametrize("sets, words", [
    # fewer steps than the newest checkpoint: it trained nothing and exported the longer model, "train: 10/6"
    (("spec.training.maxSteps=6",), ["spec.training.maxSteps: this run plans 6 step(s)", "is at step 10",
                                     "resume: none"]),
    # another job in the same output folder (two specs without spec.output.dir): one model, report and log of both
    (("metadata.name=another-job",), ["holds the checkpoints of job 'smoke', not 'another-job'",
                                      "its own spec.output.dir"]),
])
def test_a_checkpoint_this_run_must_not_resume_is_refused_and_kept(tmp_path, tiny_model, cache, reference, sets, words):
    runner = runner_with_cache(tmp_path, tiny_model, cache)
    shutil.copytree(reference, runner.out)
    kept = {name: _snapshot(runner.out / name) for name in ("checkpoints", "model")}

    proc = run(runner, *RESUME_SETS, *sets, env=quiet_env(runner), stage="train")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    said = proc.stdout + proc.stderr
    assert all(w in said for w in words), said[-2000:]
    assert "Traceback" not in said
    assert {name: _snapshot(runner.out / name) for name in kept} == kept  # the earlier run's model and checkpoints
