"""Writes that are all-or-nothing: a reader sees the old content or the new, never a torn one."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        # A full disk (or a kill) must not leave half-written temp files behind.
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # write() errors name no file
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=1, sort_keys=True) + "\n").encode())


def replace_dir(tmp: Path, dest: Path) -> Path:
    """Put the finished folder `tmp` at `dest`. An existing `dest` is moved aside first and
    deleted only once the new one is in place (rename cannot replace a non-empty folder)."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)
    return dest


def build_dir_once(dest: Path, build: Callable[[Path], None], is_complete: Callable[[Path], bool],
                   may_replace: Callable[[Path], bool] = lambda _dest: True) -> Path:
    """Build a folder at most once, safely under concurrency.

    `build(tmp)` fills a temp folder next to `dest` (its completion marker written last);
    the temp folder is then renamed into place. A `dest` that is already complete is
    returned untouched. When several processes race, one rename wins and the others keep
    the winner's folder. An incomplete `dest` is replaced only if `may_replace(dest)`
    (so a folder someone else made is never deleted); otherwise FileExistsError."""
    dest = Path(dest)
    if is_complete(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        build(tmp)
        if dest.exists() and not is_complete(dest):
            if not may_replace(dest):
                raise FileExistsError(str(dest))
            trash = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex}"
            with contextlib.suppress(FileNotFoundError):
                os.rename(dest, trash)
                shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, dest)
        except OSError:
            if is_complete(dest):  # lost the race (ENOTEMPTY/EEXIST): the winner's folder is in place
                return dest
            raise
        return dest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
