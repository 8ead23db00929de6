"""What a train stage sets aside as it starts, never deleting it.

`resume: none`: the earlier train run in spec.output.dir is set aside whole. Its checkpoints,
validation images, TensorBoard logs, exported model, report.html, completion record and its
records in metrics.jsonl move together to `<output.dir>/before-<UTC time>/`.

A run that starts at step N (resumed from a checkpoint of step N, or from the base model at 0)
abandons what earlier runs did after step N: a run stopped before its next checkpoint, or one
past the checkpoint a resume names. Those checkpoints, validation folders and history records
move to `<output.dir>/abandoned-<UTC time>/`, in the same layout.

Left in place either would mix with the new run's: pruning keeps the highest step numbers (so
old checkpoints would delete the new run's own, and `resume: auto` would load them), validation
folders of the same step would be overwritten, and the report would show the old run's steps
(its header, logged values, validation grid, counts) as the newest."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from runner.files import atomic_write_bytes
from runner.observe import runlog
from runner.spec.plan import JobPaths
from runner.train.checkpoint import list_checkpoints

ASIDE_PREFIX = "before-"  # resume: none
ABANDONED_PREFIX = "abandoned-"  # the steps after the one a run starts at


def aside_folder(output_dir: Path, now: float, prefix: str = ASIDE_PREFIX) -> Path:
    """`<output.dir>/before-<UTC time>` (or another prefix), with a suffix when that name is
    taken (two restarts in one second)."""
    base = output_dir / f"{prefix}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}"
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    return folder


def _present(path: Path) -> bool:
    """A file, or a folder with something in it (an empty folder is nobody's run)."""
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def set_aside_earlier_run(paths: JobPaths, log: Callable[[str], None], now: float | None = None) -> Path | None:
    """Move the earlier train run aside (main process only; see loop.py for the collective).
    Returns the folder it went to, None when there was no earlier train run. A report.html
    alone (written by a cache stage) is no train run: it is rewritten by this one."""
    earlier, kept = runlog.split_earlier_run(runlog.read(paths.history))
    outputs = [p for p in paths.train_run_outputs() if _present(p)]
    if not earlier and all(p == paths.report for p in outputs):
        return None
    aside = aside_folder(paths.output_dir, time.time() if now is None else now)
    aside.mkdir(parents=True)
    if earlier:
        atomic_write_bytes(aside / paths.history.name, runlog.encode(earlier))
        atomic_write_bytes(paths.history, runlog.encode(kept))  # this invocation's cache stage and train start stay
    for path in outputs:
        os.rename(path, aside / path.name)
    if paths.earlier_effective_spec.is_file():  # the spec that run ran (this run's replaced it on starting)
        os.rename(paths.earlier_effective_spec, aside / paths.effective_spec.name)
        outputs.append(paths.effective_spec)
    moved = [p.name for p in outputs] + ([f"its {len(earlier)} records in {paths.history.name}"] if earlier else [])
    log(f"resume: none: moved the earlier run ({', '.join(moved)}) to {aside}")
    return aside


def steps_after(folder: Path, start_step: int) -> list[Path]:
    """The `step-M` folders in `folder` with M > start_step, in step order."""
    return [path for step, path in list_checkpoints(folder) if step > start_step]


def set_aside_abandoned_steps(paths: JobPaths, start_step: int, log: Callable[[str], None],
                              now: float | None = None) -> Path | None:
    """Move the checkpoints, validation folders and history records of steps after
    `start_step` aside (main process only; see loop.py for the collective). Returns the folder
    they went to, None when there were none."""
    records, kept = runlog.split_abandoned(runlog.read(paths.history), start_step)
    folders = {root: steps_after(root, start_step) for root in (paths.checkpoints, paths.validation)}
    if not records and not any(folders.values()):
        return None
    aside = aside_folder(paths.output_dir, time.time() if now is None else now, ABANDONED_PREFIX)
    aside.mkdir(parents=True)
    moved = []
    for root, steps in folders.items():
        if steps:
            (aside / root.name).mkdir()
            for path in steps:
                os.rename(path, aside / root.name / path.name)
            moved.append(f"{root.name} {', '.join(p.name for p in steps)}")
    if records:
        atomic_write_bytes(aside / paths.history.name, runlog.encode(records))
        atomic_write_bytes(paths.history, runlog.encode(kept))
        moved.append(f"its {len(records)} records in {paths.history.name}")
    log(f"starting at step {start_step}: moved what an earlier run did after step {start_step}, which this run "
        f"replaces ({'; '.join(moved)}), to {aside}")
    return aside
