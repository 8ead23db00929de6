"""`resume: none`: the earlier train run is moved aside whole (checkpoints, validation images,
TensorBoard logs, model, report, completion record and its history records), and this
invocation's own records stay. A run that starts at step N moves what earlier runs did after
step N aside (checkpoints, validation folders, history records)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.observe import runlog
from runner.spec.plan import JobPaths
from runner.train.restart import aside_folder, set_aside_abandoned_steps, set_aside_earlier_run

C0, C1 = {"event": "stage_started", "stage": "cache"}, {"event": "stage_finished", "stage": "cache"}
T0, T1 = {"event": "stage_started", "stage": "train"}, {"event": "stage_finished", "stage": "train"}


def tr(step: int) -> dict:
    return {"event": "train", "step": step}


@pytest.mark.parametrize("records, earlier", [
    ([], 0),
    ([T0], 0),                                       # a first run: only its own start
    ([C0, C1, T0], 0),                               # a first run after its cache stage
    ([C0, C1, T0, tr(1), T1, C0, C1, T0], 5),        # the earlier run ends at its stage end; this cache stage stays
    ([T0, tr(1), T1, T0], 3),                        # --stage train twice: no cache records between
    ([C0, C1, T0, tr(1), tr(10), C0, C1, T0], 5),    # an earlier run killed mid-stage has no end record
    ([T0, T0], 1),                                   # killed before its first step: its start is still its
    ([T0, tr(1), T1, C0, C1, C0, C1, T0], 3),        # a cache-only invocation in between stays with this run
    ([T0, tr(1), {"event": "validation", "step": 1}, T1, T0, tr(1)], 4),  # whatever follows this start stays
])
def test_split_earlier_run(records: list[dict], earlier: int) -> None:
    before, kept = runlog.split_earlier_run(records)
    assert before == records[:earlier] and kept == records[earlier:]


def va(step: int) -> dict:
    return {"event": "validation", "step": step}


CK, CK_OLD = {"event": "checkpoint", "step": 8}, {"event": "checkpoint", "seconds": 1.0}  # older ones had no step


@pytest.mark.parametrize("records, start, abandoned", [
    ([], 0, []),
    ([T0, tr(1), tr(10), va(3), T1, T0], 0, [tr(1), tr(10), va(3)]),  # restart from the base model: every step
    ([T0, tr(1), tr(10), va(3), va(9), T1, T0], 4, [tr(10), va(9)]),  # resume at 4: its steps 1 and 3 stay
    ([T0, tr(1), va(4), tr(4), T0], 4, []),                           # the resumed step itself stays
    ([T0, tr(1), CK, CK_OLD, T0], 4, [CK]),                           # a checkpoint without its step stays
    ([C0, C1, T0, tr(10), {"event": "train", "step": "x"}, T0], 0, [tr(10)]),  # stage records stay; no int, no step
])
def test_split_abandoned(records: list[dict], start: int, abandoned: list[dict]) -> None:
    gone, kept = runlog.split_abandoned(records, start)
    assert gone == abandoned and kept == [r for r in records if r not in abandoned]


def _paths(tmp_path: Path) -> JobPaths:
    return JobPaths(cache_dir=tmp_path / "cache", text_dir=tmp_path / "cache" / "text", output_dir=tmp_path / "out")


def _earlier_run(paths: JobPaths) -> None:
    for rel, text in (("checkpoints/step-24/trainer_state.json", "ckpt"), ("validation/step-10/a.png", "v10"),
                      ("validation/step-24/a.png", "v24"), ("logs/smoke/events", "tb"), ("model/model_index.json", "m")):
        (paths.output_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (paths.output_dir / rel).write_text(text)
    paths.report.write_text("<html>step 24</html>")
    paths.finished.write_text('{"step": 24}')
    (paths.output_dir / "trainingjob.effective.yaml").write_text("spec")  # this launch's: stays


def test_the_whole_earlier_run_moves_and_this_runs_records_stay(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    _earlier_run(paths)
    paths.history.write_bytes(runlog.encode([C0, C1, T0, tr(24), T1, C0, C1, T0]))
    lines = []
    aside = set_aside_earlier_run(paths, lines.append, now=0.0)

    assert aside == paths.output_dir / "before-19700101T000000Z"
    assert (aside / "checkpoints/step-24/trainer_state.json").read_text() == "ckpt"
    assert (aside / "validation/step-10/a.png").read_text() == "v10"
    assert (aside / "logs/smoke/events").read_text() == "tb"
    assert (aside / "model/model_index.json").read_text() == "m"
    assert (aside / "report.html").read_text() == "<html>step 24</html>"
    assert json.loads((aside / "trainingjob.complete.json").read_text()) == {"step": 24}
    assert runlog.read(aside / "metrics.jsonl") == [C0, C1, T0, tr(24), T1]
    assert runlog.read(paths.history) == [C0, C1, T0]
    assert sorted(p.name for p in paths.output_dir.iterdir()) == [aside.name, "metrics.jsonl",
                                                                  "trainingjob.effective.yaml"]
    assert not list(tmp_path.rglob("*.tmp"))
    assert lines == [f"resume: none: moved the earlier run (checkpoints, validation, logs, model, report.html, "
                     f"trainingjob.complete.json, its 5 records in metrics.jsonl) to {aside}"]


def test_a_second_restart_in_the_same_second_gets_its_own_folder(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    _earlier_run(paths)
    first = set_aside_earlier_run(paths, lambda _: None, now=0.0)
    _earlier_run(paths)
    second = set_aside_earlier_run(paths, lambda _: None, now=0.0)
    assert second == first.with_name(first.name + "-2")
    assert (first / "report.html").is_file() and (second / "report.html").is_file()
    assert aside_folder(paths.output_dir, 0.0) == first.with_name(first.name + "-3")


def test_nothing_moves_without_an_earlier_train_run(tmp_path: Path) -> None:
    """A cache stage's report.html, its records and an empty logs folder are no train run."""
    paths = _paths(tmp_path)
    paths.logs.mkdir(parents=True)
    paths.report.write_text("cache only")
    history = runlog.encode([C0, C1, T0])
    paths.history.write_bytes(history)
    lines = []
    assert set_aside_earlier_run(paths, lines.append) is None
    assert lines == [] and paths.history.read_bytes() == history and paths.report.read_text() == "cache only"
    assert sorted(p.name for p in paths.output_dir.iterdir()) == ["logs", "metrics.jsonl", "report.html"]


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_what_came_after_the_start_step_moves_aside_and_the_rest_stays(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    for rel in ("checkpoints/step-4/s", "checkpoints/step-8/s", "checkpoints/.tmp-step-12/s", "validation/step-3/a.png",
                "validation/step-4/a.png", "validation/step-6/a.png", "validation/step-10/a.png", "validation/notes"):
        (paths.output_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (paths.output_dir / rel).write_text(rel)
    paths.history.write_bytes(runlog.encode([T0, tr(1), va(3), va(6), tr(10), va(10), T1, T0]))
    lines = []
    aside = set_aside_abandoned_steps(paths, 4, lines.append, now=0.0)

    assert aside == paths.output_dir / "abandoned-19700101T000000Z"
    assert _files(aside) == ["checkpoints/step-8/s", "metrics.jsonl", "validation/step-10/a.png",
                             "validation/step-6/a.png"]
    assert runlog.read(aside / "metrics.jsonl") == [va(6), tr(10), va(10)]
    assert runlog.read(paths.history) == [T0, tr(1), va(3), T1, T0]
    assert _files(paths.output_dir / "checkpoints") == [".tmp-step-12/s", "step-4/s"]  # temp folders: pruning's
    assert _files(paths.output_dir / "validation") == ["notes", "step-3/a.png", "step-4/a.png"]
    assert not list(tmp_path.rglob("*.tmp"))
    assert lines == [f"starting at step 4: moved what an earlier run did after step 4, which this run replaces "
                     f"(checkpoints step-8; validation step-6, step-10; its 3 records in metrics.jsonl), to {aside}"]


@pytest.mark.parametrize("start", [0, 4])
def test_nothing_moves_when_no_step_came_after_the_start(tmp_path: Path, start: int) -> None:
    paths = _paths(tmp_path)
    history = runlog.encode([C0, C1, T0] + ([tr(1), va(4), T1, T0] if start else []))
    paths.output_dir.mkdir(parents=True)
    paths.history.write_bytes(history)
    if start:
        (paths.validation / "step-4").mkdir(parents=True)
        (paths.checkpoints / "step-4").mkdir(parents=True)
    lines = []
    assert set_aside_abandoned_steps(paths, start, lines.append) is None
    assert lines == [] and paths.history.read_bytes() == history
    assert not [p for p in paths.output_dir.iterdir() if p.name.startswith("abandoned-")]
