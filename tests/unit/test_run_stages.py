"""How `run` records the end of a stage, and what a refusal before any work leaves behind.
The training itself is replaced: these are the stage's bookkeeping around it."""
from __future__ import annotations

from pathlib import Path

import pytest

from runner.exitcodes import EXIT_INVALID, EXIT_OK, EXIT_STOPPED
from runner.launch import run as launch_run
from runner.observe import runlog
from runner.observe.runlog import ENDINGS
from runner.spec.load import load_spec
from runner.train import loop
from runner.train.guard import Diverged
from runner.train.loop import TrainResult

SMOKE = Path(__file__).resolve().parents[2] / "examples" / "smoke.yaml"


def _job(tmp_path: Path):
    return load_spec(SMOKE, [f"spec.output.dir={tmp_path / 'out'}", f"spec.cacheDir={tmp_path / 'cache'}",
                             "spec.metrics.port=0"])


def _interrupt(_ctx):
    raise KeyboardInterrupt


def _diverge(_ctx):
    raise Diverged("training diverged: the loss is not finite at step 3")


@pytest.mark.parametrize("train, code, ended", [
    (lambda _ctx: TrainResult(3, 1.0, None, None, None), EXIT_OK, "completed"),
    (lambda _ctx: TrainResult(3, 1.0, None, None, None, interrupted=True), EXIT_STOPPED, "stopped"),  # SIGTERM
    (_interrupt, KeyboardInterrupt, "interrupted"),  # Ctrl-C used to be recorded and reported as finished
    (_diverge, Diverged, "failed"),
])
def test_the_train_stage_records_how_it_ended(tmp_path: Path, monkeypatch, train, code, ended) -> None:
    monkeypatch.setattr(loop, "run_train", train)
    job = _job(tmp_path)
    if isinstance(code, type):
        with pytest.raises(code):
            launch_run.run_train_stage(job)
    else:
        assert launch_run.run_train_stage(job) == code
    records = runlog.read(tmp_path / "out" / "metrics.jsonl")
    assert [(r["event"], r["stage"]) for r in records] == [("stage_started", "train"), ("stage_finished", "train")]
    assert records[-1]["ended"] == ended
    if ended != "completed":
        assert f", {ENDINGS[ended]})" in (tmp_path / "out" / "report.html").read_text()

def test_train_without_a_cache_is_refused_before_any_report_or_history(tmp_path: Path, capsys) -> None:
    """It used to write report.html and metrics.jsonl for a run that did nothing, and print the
    report's path before the error."""
    assert launch_run.run_job(_job(tmp_path), "train") == EXIT_INVALID
    out, err = capsys.readouterr()
    assert "no cache manifest; run the cache stage first" in err
    assert "report:" not in out
    assert not (tmp_path / "out").exists()


def test_sigterm_in_the_cache_stage_is_recorded_and_kept_apart_from_a_checkpoint_stop(tmp_path: Path, monkeypatch,
                                                                                       capsys) -> None:
    """SIGTERM used to end the cache stage at once (exit -15): no record of the stage, no message.
    The signal is real: the stage sends it to itself while it "encodes"."""
    import os
    import signal

    from runner.cache import stage as cache_stage
    from runner.cli import main

    def encode(_ctx, *_args, **_kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the stage")

    monkeypatch.setattr(cache_stage, "run_cache", encode)
    before = signal.getsignal(signal.SIGTERM)
    code = main(["run", str(SMOKE), "--stage", "cache", "--set", f"spec.output.dir={tmp_path / 'out'}",
                 "--set", f"spec.cacheDir={tmp_path / 'cache'}", "--set", "spec.metrics.port=0"])
    assert code == EXIT_STOPPED
    assert signal.getsignal(signal.SIGTERM) is before  # the handler was the stage's alone
    err = capsys.readouterr().err
    assert "stopped (SIGTERM): the cache entries written are kept" in err and "checkpoint" not in err
    records = runlog.read(tmp_path / "out" / "metrics.jsonl")
    assert records[-1]["event"] == "stage_finished" and records[-1]["ended"] == "terminated"
    assert f", {ENDINGS['terminated']})" in (tmp_path / "out" / "report.html").read_text()
    assert "after writing a checkpoint" not in ENDINGS["terminated"]


def _finished_output(tmp_path: Path) -> dict[str, bytes]:
    """An output folder as a finished run left it: its spec, report, history and a checkpoint
    (written with adamw), whose contents a refused run must leave alone."""
    from runner.train.checkpoint import SPEC_FILE, TrainerState, seal

    out = tmp_path / "out"
    ckpt = out / "checkpoints" / "step-3"
    ckpt.mkdir(parents=True)
    (ckpt / SPEC_FILE).write_text('{"training": {"optimizer": "adamw"}}')
    seal(ckpt, TrainerState(step=3, job="smoke"))
    files = {"trainingjob.effective.yaml": b"learningRate: 0.0001\n", "report.html": b"<p>the 1e-4 run</p>",
             "metrics.jsonl": b'{"event": "stage_started", "stage": "train"}\n'}
    for name, data in files.items():
        (out / name).write_bytes(data)
    return files


@pytest.mark.parametrize("sets, error", [
    (["spec.hardware.accelerator=cuda12"], "spec.hardware.accelerator is cuda12 but no GPU is visible"),
    (["spec.datasets.0.type=local", "spec.datasets.0.path={tmp}/missing"], "spec.datasets[0].path: "),
    (["spec.datasets.0.type=local", "spec.datasets.0.path={tmp}/empty"], "spec.datasets[0]: no images"),
    (["spec.training.optimizer=sgd"], "spec.training.optimizer: this run uses sgd, but the checkpoint"),
])
def test_a_refused_run_leaves_a_finished_runs_spec_report_and_history_alone(tmp_path: Path, monkeypatch, capsys,
                                                                           sets, error) -> None:
    """A run refused at its start (no GPU, a missing or empty dataset folder, a checkpoint of
    another optimizer) used to overwrite trainingjob.effective.yaml (the finished run's spec
    went to .earlier.yaml, then was lost to the next refused run's) and report.html, append to
    metrics.jsonl and print a `report:` line."""
    import torch

    from runner.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no image here")
    files = _finished_output(tmp_path)
    argv = ["run", str(SMOKE)]
    for s in [f"spec.output.dir={tmp_path / 'out'}", f"spec.cacheDir={tmp_path / 'cache'}", "spec.metrics.port=0",
              "spec.training.learningRate=3e-3", *sets]:
        argv += ["--set", s.format(tmp=tmp_path)]
    assert main(argv) == EXIT_INVALID
    out, err = capsys.readouterr()
    assert error in err and "report:" not in out
    assert {name: (tmp_path / "out" / name).read_bytes() for name in files} == files
    assert not (tmp_path / "out" / "trainingjob.effective.earlier.yaml").exists()
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("checkpoint, said", [
    (False, "interrupted: no checkpoint yet, so the rerun starts training from step 0; the cache entries written"),
    (True, "interrupted: checkpoint step-3 is kept and the rerun resumes from it; the cache entries written"),
])
def test_ctrl_c_says_whether_a_checkpoint_is_there_to_resume(tmp_path: Path, monkeypatch, capsys, checkpoint,
                                                             said) -> None:
    """It said "what was written is kept (cache entries, the newest checkpoint)" also before the
    first checkpoint, when the rerun starts from step 0."""
    from runner.cli import main
    from runner.exitcodes import EXIT_INTERRUPTED

    if checkpoint:
        _finished_output(tmp_path)
    monkeypatch.setattr(launch_run, "run_cache_stage", lambda *_args, **_kwargs: None)
    monkeypatch.setattr(loop, "run_train", _interrupt)
    code = main(["run", str(SMOKE), "--set", f"spec.output.dir={tmp_path / 'out'}", "--set",
                 f"spec.cacheDir={tmp_path / 'cache'}", "--set", "spec.metrics.port=0"])
    assert code == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert said in err, err


def _values(port: int) -> dict[tuple[str, str], float]:
    """One real HTTP scrape, read by prometheus_client's own parser: (sample, label) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    from tests.observe_tools import scrape

    return {(s.name, s.labels.get("kind") or s.labels.get("stage", "")): s.value
            for family in text_string_to_metric_families(scrape(port)) for s in family.samples}


def test_one_endpoint_serves_both_stages_and_its_counters_never_fall(tmp_path: Path, monkeypatch) -> None:
    """Each stage built its own registry and server: the endpoint went down between the cache
    and train stages, and in the train stage trainingjob_cache_items_encoded_total and
    trainingjob_cache_written_bytes_total of the same process read 0 again (rate() reads that
    as a restart). The stages here are replaced; the endpoint and the scrapes are real."""
    import concurrent.futures
    import threading

    from runner.cache import stage as cache_stage
    from tests.observe_tools import free_port

    port, seen, refused, done = free_port(), {}, [], threading.Event()

    def cache(ctx, *_args, **_kwargs):
        ctx.metrics.cache_planned("text", 3, 3)
        ctx.metrics.cache_done("text", 3)
        written = concurrent.futures.Future()
        written.set_result(100)
        ctx.metrics.entry_written(written)
        seen["cache"] = _values(port)
        return {"text_total": 3, "text_encoded": 3, "latents_total": 0, "latents_encoded": 0}

    def train(ctx):
        seen["train"] = _values(port)
        return TrainResult(3, 1.0, None, None, None)

    def poll():  # from the first scrape served until the train stage's: never refused
        served = False
        while not done.is_set() and "train" not in seen:
            try:
                _values(port)
                served = True
            except OSError as e:
                if served:
                    refused.append(e)
            done.wait(0.005)

    monkeypatch.setattr(cache_stage, "run_cache", cache)
    monkeypatch.setattr(loop, "run_train", train)
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    job = load_spec(SMOKE, [f"spec.output.dir={tmp_path / 'out'}", f"spec.cacheDir={tmp_path / 'cache'}",
                            f"spec.metrics.port={port}"])
    try:
        assert launch_run.run_job(job) == EXIT_OK
    finally:
        done.set()
        poller.join()
    for stage in ("cache", "train"):
        assert seen[stage][("trainingjob_stage", stage)] == 1.0
        assert seen[stage][("trainingjob_cache_items_encoded_total", "text")] == 3.0, stage
        assert seen[stage][("trainingjob_cache_written_bytes_total", "")] == 100.0, stage
    assert seen["train"][("trainingjob_stage", "cache")] == 0.0
    assert refused == []
    with pytest.raises(OSError):  # the process is done: so is its endpoint
        _values(port)
