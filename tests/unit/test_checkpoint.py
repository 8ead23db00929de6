"""Checkpoints: sealed folders verify, damaged ones are rejected with a reason and skipped."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

from runner.train import checkpoint as ckpt
from runner.train.checkpoint import (
    STATE_FILE,
    TrainerState,
    latest_complete,
    list_checkpoints,
    prune,
    publish,
    read_state,
    seal,
    usable,
    verify,
)
from tests.state_diff import differences

WEIGHTS = {"proj.weight": torch.linspace(-1, 1, 2400).reshape(48, 50), "proj.bias": torch.zeros(48),
           "step_counter": torch.arange(4)}
FILES = {
    "model.safetensors": safetensors_bytes(WEIGHTS),
    "optimizer.bin": bytes(range(256)) * 20,
    "random_states_0.pkl": b"rng-state",
    "nested/scheduler.bin": b"scheduler",
}


def _write_folder(folder: Path, files: dict[str, bytes] = FILES) -> Path:
    for rel, data in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def _sealed(folder: Path, step: int = 7) -> Path:
    _write_folder(folder)
    seal(folder, TrainerState(step=step, epoch=1, batch_in_epoch=3, samples_seen=14, spec_hash="abc"))
    return folder


# ----------------------------------------------------------------------------- seal / verify

def test_seal_records_every_file_and_verifies(tmp_path: Path) -> None:
    folder = _sealed(tmp_path / "step-7")
    record = json.loads((folder / STATE_FILE).read_text())
    assert set(record["files"]) == set(FILES)
    for rel, data in FILES.items():
        assert record["files"][rel]["size"] == len(data)
    assert verify(folder) is None
    assert read_state(folder) == TrainerState(step=7, epoch=1, batch_in_epoch=3, samples_seen=14, spec_hash="abc")
    assert not list(folder.glob(f".{STATE_FILE}.tmp"))


def _remove_state(folder: Path) -> None:
    (folder / STATE_FILE).unlink()


def _truncate(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])


def _flip_byte(folder: Path) -> None:
    path = folder / "optimizer.bin"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _flip_nested(folder: Path) -> None:
    (folder / "nested" / "scheduler.bin").write_bytes(b"Scheduler")


def _delete_file(folder: Path) -> None:
    (folder / "random_states_0.pkl").unlink()


def _garbage_json(folder: Path) -> None:
    (folder / STATE_FILE).write_text('{"state": {"step": 7,')


def _json_missing_files(folder: Path) -> None:
    (folder / STATE_FILE).write_text(json.dumps({"state": {"step": 7}}))


def _json_bad_state_field(folder: Path) -> None:
    record = json.loads((folder / STATE_FILE).read_text())
    record["state"]["unknown_field"] = 1
    (folder / STATE_FILE).write_text(json.dumps(record))


def _json_no_files(folder: Path) -> None:
    record = json.loads((folder / STATE_FILE).read_text())
    record["files"] = {}
    (folder / STATE_FILE).write_text(json.dumps(record))


@pytest.mark.parametrize("damage, reason", [
    (_remove_state, "no trainer_state.json"),
    (_truncate, f"model.safetensors has {len(FILES['model.safetensors']) - 100} bytes, "
                f"expected {len(FILES['model.safetensors'])}"),
    (_flip_byte, "optimizer.bin checksum mismatch"),
    (_flip_nested, "nested/scheduler.bin checksum mismatch"),
    (_delete_file, "random_states_0.pkl is missing"),
    (_garbage_json, "unreadable trainer_state.json"),
    (_json_missing_files, "unreadable trainer_state.json"),
    (_json_bad_state_field, "unreadable trainer_state.json"),
    (_json_no_files, "records no files"),
])
def test_verify_reports_damage(tmp_path: Path, damage, reason: str) -> None:
    folder = _sealed(tmp_path / "step-7")
    assert verify(folder) is None
    damage(folder)
    problem = verify(folder)
    assert problem is not None and reason in problem, problem


def test_flip_byte_keeps_size(tmp_path: Path) -> None:
    folder = _sealed(tmp_path / "step-7")
    size = (folder / "optimizer.bin").stat().st_size
    _flip_byte(folder)
    assert (folder / "optimizer.bin").stat().st_size == size


# ----------------------------------------------------------------------------- listing / latest

@pytest.mark.parametrize("names, expected", [
    ([], []),
    (["step-1", "step-10", "step-2"], [1, 2, 10]),
    (["step-3", ".tmp-step-4", "step-x", "step-5.bak", "Step-6", "step-", "steps-7", ".old-step-3-12"], [3]),
])
def test_list_checkpoints_only_step_dirs(tmp_path: Path, names: list[str], expected: list[int]) -> None:
    for n in names:
        (tmp_path / n).mkdir()
    (tmp_path / "step-99").write_text("a file, not a folder")
    found = list_checkpoints(tmp_path)
    assert [s for s, _ in found] == expected
    assert all(p == tmp_path / f"step-{s}" for s, p in found)


def test_list_checkpoints_missing_root(tmp_path: Path) -> None:
    assert list_checkpoints(tmp_path / "nope") == []


@pytest.mark.parametrize("damages, expected", [
    ({}, 30),
    ({30: _truncate}, 20),
    ({30: _remove_state, 20: _flip_byte}, 10),
    ({30: _delete_file, 20: _garbage_json, 10: _flip_nested}, None),
    ({10: _truncate}, 30),
])
def test_latest_complete_skips_and_logs_bad(tmp_path: Path, damages: dict, expected: int | None) -> None:
    for step in (10, 20, 30):
        folder = _sealed(tmp_path / f"step-{step}", step=step)
        if step in damages:
            damages[step](folder)
    logs: list[str] = []
    found = latest_complete(tmp_path, logs.append)
    assert found == (tmp_path / f"step-{expected}" if expected is not None else None)
    skipped = [s for s in (30, 20, 10) if expected is None or s > expected]
    assert len(logs) == len(skipped)
    for line, step in zip(logs, skipped):
        assert f"step-{step}" in line and "ignoring checkpoint" in line


# ----------------------------------------------------------------------------- prune / publish

@pytest.mark.parametrize("steps, keep, kept", [
    ([1, 2, 3, 4], 2, [3, 4]),
    ([5, 40, 300], 1, [300]),
    ([1, 2], 5, [1, 2]),
    ([1, 2, 3], 0, [1, 2, 3]),  # 0 = keep everything
])
def test_prune_keeps_newest(tmp_path: Path, steps: list[int], keep: int, kept: list[int]) -> None:
    for s in steps:
        _sealed(tmp_path / f"step-{s}", step=s)
    (tmp_path / ".tmp-step-99").mkdir()
    (tmp_path / ".tmp-step-99" / "partial.bin").write_bytes(b"x")
    (tmp_path / "notes").mkdir()
    removed = prune(tmp_path, keep)
    assert [s for s, _ in list_checkpoints(tmp_path)] == kept
    assert sorted(removed) == sorted(tmp_path / f"step-{s}" for s in steps if s not in kept)
    assert not (tmp_path / ".tmp-step-99").exists()
    assert (tmp_path / "notes").is_dir()


def test_publish_new_and_replace(tmp_path: Path) -> None:
    tmp1 = _sealed(tmp_path / ".tmp-step-8", step=8)
    final = publish(tmp1, tmp_path, 8)
    assert final == tmp_path / "step-8" and verify(final) is None and not tmp1.exists()
    (final / "stale-only-in-old.bin").write_bytes(b"old")

    tmp2 = tmp_path / ".tmp-step-8"
    _write_folder(tmp2, {"model.safetensors": b"new weights"})
    seal(tmp2, TrainerState(step=8, samples_seen=99))
    final2 = publish(tmp2, tmp_path, 8)
    assert final2 == final
    assert (final / "model.safetensors").read_bytes() == b"new weights"
    assert not (final / "stale-only-in-old.bin").exists()
    assert read_state(final).samples_seen == 99
    assert verify(final) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-8"]


# ----------------------------------------------------------------------------- save with accelerate

@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps process-wide singleton state; leave none behind for other tests."""
    import accelerate
    from accelerate.state import AcceleratorState, GradientState

    yield accelerate
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _train_a_little(accelerate, seed: int):
    torch.manual_seed(seed)
    accelerator = accelerate.Accelerator(cpu=True)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 3))
    model, opt, sched = accelerator.prepare(model, opt, sched)
    return accelerator, model, opt, sched


def _everything(model, opt, sched) -> dict:
    """What a resume must bring back: weights, optimizer moments, LR schedule, every RNG."""
    import random

    import numpy as np

    return {"weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "moments": {i: {k: v.clone() for k, v in st.items()} for i, st in opt.state_dict()["state"].items()},
            "lr": sched.get_last_lr(), "schedule": sched.state_dict(),
            "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(), "numpy_rng": np.random.get_state()}


def test_save_with_real_accelerator_and_restore(tmp_path: Path, fresh_accelerate_state) -> None:
    """A checkpoint restores the whole training state, not just the step counter: compared
    value by value with the state at the moment it was saved."""
    accelerate = fresh_accelerate_state
    accelerator, model, opt, sched = _train_a_little(accelerate, seed=0)
    for _ in range(2):
        loss = model(torch.randn(5, 4)).pow(2).mean()
        accelerator.backward(loss)
        opt.step()
        sched.step()
        opt.zero_grad()

    root = tmp_path / "checkpoints"
    (root / ".tmp-step-1").mkdir(parents=True)  # stale temp from a killed run
    final = ckpt.save(accelerator, root, TrainerState(step=2, epoch=0, samples_seen=10), keep=1)
    saved = _everything(model, opt, sched)
    final = ckpt.save(accelerator, root, TrainerState(step=4, epoch=0, samples_seen=20), keep=1)
    assert final == root / "step-4"
    assert verify(final) is None and usable(final) is None
    assert read_state(final).samples_seen == 20
    assert sorted(p.name for p in root.iterdir()) == ["step-4"]
    assert any(p.suffix == ".safetensors" for p in final.rglob("*"))

    # A fresh model/optimizer/schedule, from another seed, gets everything back.
    accelerator.free_memory()
    acc2, fresh, fresh_opt, fresh_sched = _train_a_little(accelerate, seed=123)
    torch.rand(7)  # and the RNGs moved on
    before = _everything(fresh, fresh_opt, fresh_sched)
    assert differences(before, saved), "the fresh state should differ before loading"
    acc2.load_state(str(final))
    assert differences(_everything(fresh, fresh_opt, fresh_sched), saved) == []


_SAVE = """
import sys
from pathlib import Path
import accelerate, torch
from runner.train import checkpoint as ckpt
accelerator = accelerate.Accelerator(cpu=True)
model, opt = accelerator.prepare(torch.nn.Linear(4, 3), torch.optim.AdamW(torch.nn.Linear(4, 3).parameters()))
ckpt.save(accelerator, Path(sys.argv[1]), ckpt.TrainerState(step=2), keep=1, spec={"training": {"batchSize": 1}})
"""


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_every_checkpoint_file_gets_the_usual_mode_of_the_umask(tmp_path: Path, umask: int) -> None:
    """model.safetensors was written 0600 (safetensors' save_file), every other file 0644."""
    root = tmp_path / "checkpoints"
    subprocess.run([sys.executable, "-c", _SAVE, str(root)], umask=umask, check=True, capture_output=True,
                   cwd=Path(__file__).resolve().parents[2])
    modes = {p.relative_to(root).as_posix(): p.stat().st_mode & 0o777 for p in sorted(root.rglob("*"))}
    assert "step-2/model.safetensors" in modes and f"step-2/{STATE_FILE}" in modes
    assert modes == {path: (0o777 if (root / path).is_dir() else 0o666) & ~umask for path in modes}
    assert usable(root / "step-2") is None


# ----------------------------------------------------------------------------- non-finite weights

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_checkpoint_with_non_finite_weights_is_never_resumed(tmp_path: Path, bad: float) -> None:
    """Older versions checked the loss every 10 steps and could save a diverged model; such a
    checkpoint is intact as a set of files, but resuming from it only carries the NaNs on."""
    for step in (10, 20):
        _sealed(tmp_path / f"step-{step}", step=step)
    poisoned = {**WEIGHTS, "proj.weight": WEIGHTS["proj.weight"].clone()}
    poisoned["proj.weight"][3, 7] = bad
    newest = _write_folder(tmp_path / "step-30", {**FILES, "model.safetensors": safetensors_bytes(poisoned)})
    seal(newest, TrainerState(step=30))
    assert verify(newest) is None
    assert "model.safetensors: proj.weight holds NaN or inf" in usable(newest)
    logs: list[str] = []
    assert latest_complete(tmp_path, logs.append) == tmp_path / "step-20"
    assert len(logs) == 1 and "step-30" in logs[0] and "NaN or inf" in logs[0]


def test_unreadable_weights_file_is_not_usable(tmp_path: Path) -> None:
    folder = _write_folder(tmp_path / "step-5", {**FILES, "model.safetensors": b"not a safetensors file"})
    seal(folder, TrainerState(step=5))  # sealed as written: the bytes were wrong before the hash
    assert verify(folder) is None
    assert "model.safetensors is unreadable" in usable(folder)


def test_resuming_from_a_folder_that_holds_checkpoints_says_which_to_name(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for step in (3, 12, 6):
        (out / "checkpoints" / f"step-{step}").mkdir(parents=True)
    assert verify(out / "checkpoints") == (f"it is a folder of checkpoints, not one; name one of them "
                                           f"(e.g. {out / 'checkpoints' / 'step-12'}), or use auto")
    assert verify(out) == f"it is an output folder; name a checkpoint under {out / 'checkpoints'}, or use auto"
    assert verify(out / "checkpoints" / "step-3") == f"no {STATE_FILE} (incomplete write)"


@pytest.mark.parametrize("state, job, total, auto, words", [
    (TrainerState(step=4, job="smoke"), "smoke", 10, True, None),
    (TrainerState(step=10, job="smoke"), "smoke", 10, True, None),      # complete: the export is what is left
    (TrainerState(step=12, job="smoke"), "smoke", 10, True, "spec.training.maxSteps: this run plans 10 step(s)"),
    (TrainerState(step=12, job="smoke"), "smoke", 10, False, "is at step 12"),   # a named checkpoint too
    (TrainerState(step=4, job="other"), "smoke", 10, True, "holds the checkpoints of job 'other', not 'smoke'"),
    (TrainerState(step=4, job="other"), "smoke", 10, False, None),      # named on purpose: fine-tune from it
    (TrainerState(step=4, job=""), "smoke", 10, True, None),            # written before the job was kept
])
def test_which_checkpoints_a_run_must_not_resume(state, job, total, auto, words) -> None:
    from runner.train.loop import resume_problem

    problem = resume_problem(state, Path("/o/checkpoints/step-4"), job, total, auto)
    assert (problem is None) if words is None else (words in problem), problem


def test_a_resume_under_another_spec_names_the_fields_that_changed(tmp_path: Path) -> None:
    """It said only "the spec changed"; a batch size changed under a resume moves the data
    position (the epoch and batch come from the checkpoint)."""
    folder = tmp_path / "step-4"
    folder.mkdir()
    before = {"training": {"batchSize": 2, "learningRate": 1e-4, "resume": "auto"},
              "validation": {"prompts": ["a cat"]}}
    (folder / ckpt.SPEC_FILE).write_text(json.dumps(before))
    now = {"training": {"batchSize": 1, "learningRate": 1e-4, "resume": "auto", "seed": 7},
           "validation": {"prompts": ["a cat", "a dog"]}}
    assert ckpt.spec_changes(folder, now) == [
        "spec.training.batchSize 2 -> 1", "spec.training.seed (unset) -> 7",
        'spec.validation.prompts ["a cat"] -> ["a cat", "a dog"]']
    assert ckpt.spec_changes(folder, before) == []
    assert ckpt.spec_changes(tmp_path, now) == []  # a checkpoint from before the spec was kept
    datasets = {"datasets": [{"name": "photos", "resolution": 128}]}  # indexed, not the whole list
    (folder / ckpt.SPEC_FILE).write_text(json.dumps(datasets))
    assert ckpt.spec_changes(folder, {"datasets": [{"name": "photos", "resolution": 192}]}) == [
        "spec.datasets[0].resolution 128 -> 192"]
    (folder / ckpt.SPEC_FILE).write_text(json.dumps(before))
    many = {"training": {f"k{i}": i for i in range(9)}}
    assert ckpt.spec_changes(folder, many, limit=3)[-1] == "and 10 more"  # 13 leaves differ, 3 shown


def test_a_changed_field_inside_a_list_is_named_by_its_index(tmp_path: Path) -> None:
    """`--set spec.datasets.0.resolution=192` printed both whole datasets lists as Python dicts,
    their keys in different orders."""
    dataset = {"name": "mine", "path": "/data/mine", "resolution": 128, "captionStrategy": "textfile", "crop": True,
               "repeats": 1, "minimumImageSize": 64}
    (tmp_path / ckpt.SPEC_FILE).write_text(json.dumps({"datasets": [dataset], "training": {"batchSize": 2}}))
    now = {"training": {"batchSize": 2}, "datasets": [{**dict(reversed(dataset.items())), "resolution": 192}]}
    assert ckpt.spec_changes(tmp_path, now) == ["spec.datasets[0].resolution 128 -> 192"]


_DATASET = {"name": "a", "path": "/data/a", "resolution": 128, "crop": True, "repeats": 1,
            "captionStrategy": "textfile"}


@pytest.mark.parametrize("old, new, shown", [
    ({"a": 1}, {"a": 1}, []),
    ({"a": {"b": 1, "c": 2}}, {"a": {"c": 2, "b": 3}}, ["spec.a.b 1 -> 3"]),
    ({"a": 1}, {}, ["spec.a 1 -> (unset)"]),
    ({"a": "x"}, {"a": None}, ["spec.a 'x' -> None"]),
    ({"a": 1.5}, {"a": 2.5e-05}, ["spec.a 1.5 -> 2.5e-05"]),
    # lists of one length: by index, down to the field
    ({"p": ["x", "y"]}, {"p": ["x", "z"]}, ["spec.p[1] 'y' -> 'z'"]),
    ({"d": [_DATASET, _DATASET]}, {"d": [_DATASET, {**_DATASET, "crop": False, "repeats": 3}]},
     ["spec.d[1].crop True -> False", "spec.d[1].repeats 1 -> 3"]),
    ({"d": [[1, 2]]}, {"d": [[1, 5]]}, ["spec.d[0][1] 2 -> 5"]),
    # a list that changed length: one line, small ones as JSON, long ones by their size
    ({"p": ["a cat"]}, {"p": ["a cat", "a dog"]}, ['spec.p ["a cat"] -> ["a cat", "a dog"]']),
    ({"d": [_DATASET]}, {"d": [_DATASET, _DATASET]}, ["spec.d 1 item -> 2 items"]),
    ({"r": [[512, 512]]}, {"r": []}, ["spec.r [[512, 512]] -> []"]),
    # a mapping that appeared: sorted JSON when short, its size when long
    ({}, {"hub": {"push": True, "private": False}}, ['spec.hub (unset) -> {"private": false, "push": true}']),
    ({"d": _DATASET}, {"d": None}, ["spec.d 6 fields -> None"]),
    ({"d": {"x": "y" * 80}}, {}, ["spec.d 1 field -> (unset)"]),
])
def test_spec_differences_are_one_short_line_each(old, new, shown) -> None:
    assert [ckpt.change_line(*change) for change in ckpt.json_differences(old, new, "spec")] == shown
