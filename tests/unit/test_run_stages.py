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
