"""`resume: none`: the earlier train run in spec.output.dir is set aside whole, never deleted.

Its checkpoints, validation images, TensorBoard logs, exported model, report.html, completion
record and its records in metrics.jsonl move together to `<output.dir>/before-<UTC time>/`.
Left in place they would mix with the new run's: pruning keeps the highest step numbers (so
old checkpoints would delete the new run's own), validation folders of the same step would be
overwritten, and the report would show the old run's steps as the newest."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from runner.files import atomic_write_bytes
from runner.observe import runlog
from runner.spec.plan import JobPaths

ASIDE_PREFIX = "before-"


def aside_folder(output_dir: Path, now: float) -> Path:
    """`<output.dir>/before-<UTC time>`, with a suffix when that name is taken (two restarts in one second)."""
    base = output_dir / f"{ASIDE_PREFIX}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}"
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
