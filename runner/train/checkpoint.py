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

from runner.files import atomic_write_json, file_digest, replace_dir

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
        seal(tmp, state)
        final = publish(tmp, root, state.step)
        prune(root, keep)
    accelerator.wait_for_everyone()
    return final


def spec_changes(path: Path, spec: dict, limit: int = 6) -> list[str]:
    """The fields of `spec` that differ from the spec checkpoint `path` was written under, as
    `spec.training.batchSize 2 -> 1` (at most `limit`, then a count); [] when it kept none."""
    try:
        before = json.loads((path / SPEC_FILE).read_text())
    except (OSError, ValueError):
        return []
    old, new = _leaves(before, "spec."), _leaves(json.loads(json.dumps(spec, default=str)), "spec.")
    changed = [f"{key} {old.get(key, '(unset)')} -> {new.get(key, '(unset)')}"
               for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]
    return changed[:limit] + ([f"and {len(changed) - limit} more"] if len(changed) > limit else [])


def _leaves(value: Any, prefix: str) -> dict[str, Any]:
    """Dotted paths to the values of nested dicts. Lists are kept whole, as one value (a prompt
    list), except lists of dicts, indexed like --set (`spec.datasets.0.resolution`): one changed
    dataset field, not the whole list twice."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        value = {str(i): v for i, v in enumerate(value)}
    if not isinstance(value, dict):
        return {prefix.rstrip("."): value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(_leaves(item, f"{prefix}{key}."))
    return out
