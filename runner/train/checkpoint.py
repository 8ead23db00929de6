"""Checkpoints that are complete or ignored.

A checkpoint is written into `.tmp-step-N`, every file is hashed into `trainer_state.json`
(written last), and only then is the folder renamed to `step-N`. A folder without a state
file, or whose files do not match their recorded sizes and hashes, is never loaded: a
SIGKILL mid-write or a corrupted disk costs at most the last interval of training.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from runner.files import atomic_write_json, file_digest, give_usual_modes, replace_dir

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class TrainerState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    samples_seen: int = 0
    spec_hash: str = ""
    job: str = ""  # metadata.name of the job that wrote it ("" in checkpoints from before it was kept)


def seal(folder: Path, state: TrainerState) -> None:
    """Record every file's size and hash, then the state file itself (atomically)."""
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": file_digest(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != STATE_FILE}
    atomic_write_json(folder / STATE_FILE, {"state": asdict(state), "files": files})


def verify(folder: Path) -> str | None:
    """None when the checkpoint is complete and intact, else why not."""
    state_path = folder / STATE_FILE
    if not state_path.is_file():
        steps = [p for p in folder.glob("step-*") if p.is_dir() and p.name[5:].isdigit()]
        if steps:  # the parent of the checkpoints, not one of them
            newest = max(steps, key=lambda p: int(p.name[5:]))
            return f"it is a folder of checkpoints, not one; name one of them (e.g. {newest}), or use auto"
        if (folder / "checkpoints").is_dir():
            return f"it is an output folder; name a checkpoint under {folder / 'checkpoints'}, or use auto"
        return f"no {STATE_FILE} (incomplete write)"
    try:
        record = json.loads(state_path.read_text())
        files = record["files"]
        TrainerState(**record["state"])
    except (ValueError, KeyError, TypeError) as e:
        return f"unreadable {STATE_FILE} ({e})"
    if not files:
        return "records no files"
    for rel, meta in files.items():
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != meta["size"]:
            return f"{rel} has {path.stat().st_size} bytes, expected {meta['size']} (truncated?)"
        if file_digest(path) != meta["sha256"]:
            return f"{rel} checksum mismatch (corrupt)"
    return None


def nonfinite_weights(folder: Path) -> str | None:
    """None when every floating-point tensor in the checkpoint's safetensors files is finite.

    This version never writes non-finite weights, but older ones did when training diverged
    (the loss was checked every 10 steps), and `resume: auto` would have picked such a
    checkpoint and carried the NaNs on. Only run on resume: it reads the weights once more."""
    import torch
    from safetensors import SafetensorError, safe_open

    for path in sorted(folder.rglob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as weights:
                for name in weights.keys():
                    t = weights.get_tensor(name)
                    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                        return (f"{path.relative_to(folder)}: {name} holds NaN or inf "
                                "(training had diverged when it was saved)")
        except (SafetensorError, OSError) as e:
            return f"{path.relative_to(folder)} is unreadable ({e})"
    return None


def usable(folder: Path) -> str | None:
    """None when a resume may load the checkpoint: complete, intact, finite; else why not."""
    return verify(folder) or nonfinite_weights(folder)


def read_state(folder: Path) -> TrainerState:
    return TrainerState(**json.loads((folder / STATE_FILE).read_text())["state"])


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def latest_complete(root: Path, log: Callable[[str], None]) -> Path | None:
    """The newest checkpoint a resume may use; each newer one skipped is logged with why."""
    for step, path in reversed(list_checkpoints(root)):
        problem = usable(path)
        if problem is None:
            return path
        log(f"ignoring checkpoint {path}: {problem}")
    return None


def publish(tmp: Path, root: Path, step: int) -> Path:
    """Rename a sealed temp folder to `step-N`, replacing an older folder of that step."""
    return replace_dir(tmp, root / f"step-{step}")


def prune(root: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints, and stale temp folders."""
    removed = []
    for p in root.glob(".tmp-step-*"):
        shutil.rmtree(p, ignore_errors=True)
    for _, path in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


SPEC_FILE = "trainingjob.spec.json"  # the spec the checkpoint was written under (its `spec`)


def save(accelerator, root: Path, state: TrainerState, keep: int, spec: dict | None = None) -> Path:
    """Collective: every process calls it (accelerate saves per-process RNG states). `spec` is
    kept beside the state, so a resume under another spec can say what changed."""
    tmp = root / f".tmp-step-{state.step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    final = root / f"step-{state.step}"
    if accelerator.is_main_process:
        if spec is not None:
            (tmp / SPEC_FILE).write_text(json.dumps(spec, sort_keys=True, default=str))
        give_usual_modes(tmp)  # model.safetensors is written 0600
        seal(tmp, state)
        final = publish(tmp, root, state.step)
        prune(root, keep)
    accelerator.wait_for_everyone()
    return final


def spec_changes(path: Path, spec: dict, limit: int = 6) -> list[str]:
    """The fields of `spec` that differ from the spec checkpoint `path` was written under, as
    `spec.datasets[0].resolution 128 -> 192` (at most `limit`, then a count); [] when it kept none."""
    try:
        before = json.loads((path / SPEC_FILE).read_text())
    except (OSError, ValueError):
        return []
    changed = [change_line(*change)
               for change in json_differences(before, json.loads(json.dumps(spec, default=str)), "spec")]
    return changed[:limit] + ([f"and {len(changed) - limit} more"] if len(changed) > limit else [])


_UNSET = object()  # a field one of the two specs does not have
_SHORT = 60  # characters: a longer list or mapping is shown by its size


def json_differences(old: Any, new: Any, where: str) -> list[tuple[str, Any, Any]]:
    """(path, before, after) for every value that differs between two JSON documents, deepest
    first: mappings by key, lists of one length by index (`spec.datasets[0].resolution`). A list
    that changed length is one difference: its indexes no longer pair items up."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [change for key in sorted(old.keys() | new.keys())
                for change in json_differences(old.get(key, _UNSET), new.get(key, _UNSET), f"{where}.{key}")]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [change for i, (a, b) in enumerate(zip(old, new)) for change in json_differences(a, b, f"{where}[{i}]")]
    return [] if old == new else [(where, old, new)]


def change_line(where: str, old: Any, new: Any) -> str:
    """`spec.training.batchSize 2 -> 1`: one of json_differences on one short line."""
    return f"{where} {_shown(old)} -> {_shown(new)}"


def _shown(value: Any) -> str:
    """A value on one short line: a scalar's repr, a small list or mapping as JSON, else its size."""
    if value is _UNSET:
        return "(unset)"
    if not isinstance(value, (dict, list)):
        return repr(value)
    text = json.dumps(value, sort_keys=True)
    if len(text) <= _SHORT:
        return text
    unit = "item" if isinstance(value, list) else "field"
    return f"{len(value)} {unit}{'' if len(value) == 1 else 's'}"
