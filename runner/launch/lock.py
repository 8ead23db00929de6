"""One run at a time per output folder: an advisory lock on `<output.dir>/.trainingjob.lock`.

Two runs writing the same folder would interleave checkpoints, exports and metrics.jsonl, so the
launching process holds an flock on the folder's lock file for the whole run, and a second run
is refused at once with who holds it (pid, host, start time: written into the lock file).

- The kernel drops an flock when its process dies, however it dies (SIGKILL, OOM), so a killed
  run never leaves a stale lock: the file stays, the lock does not.
- Only the launching process of node 0 takes it (`takes_lock`). torchrun's workers are its
  children and run inside its lock; the other nodes (pods sharing the output volume) run under
  node 0's. The lock is per stage on Kubernetes, where each stage is its own Job.
- File systems without flock (some NFS mounts: ENOLCK, EOPNOTSUPP) run without the lock, as
  before it existed, rather than not at all.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Mapping

from runner.launch.torchrun import node_rank

LOCK_FILE = ".trainingjob.lock"
# flock is not supported here: run unlocked.
UNSUPPORTED = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL})


class OutputBusy(Exception):
    """Another run holds the output folder."""


def takes_lock(env: Mapping[str, str], in_worker: bool) -> bool:
    """Whether this process holds the output folder's lock: the launching process (not a
    torchrun worker) of node 0 (pure)."""
    return not in_worker and node_rank(env) == 0


def holder_record(job: str, stage: str, pid: int, host: str, started: float) -> dict[str, Any]:
    """What the holder writes into the lock file, for the message a refused run prints (pure)."""
    return {"job": job, "stage": stage, "pid": pid, "host": host,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started))}


def busy_message(folder: str, record: Mapping[str, Any] | None) -> str:
    """Why a run is refused: the folder and who holds it (pure)."""
    if record:
        who = (f"run of {record.get('job')!r} (stage {record.get('stage')}, pid {record.get('pid')} on host "
               f"{record.get('host')}, started {record.get('started')})")
    else:
        who = "run (it has not yet written who it is)"
    return (f"spec.output.dir: {folder} is in use by another {who}; wait for it to finish or stop it, "
            f"or give this run another spec.output.dir")


def _read_record(fd: int) -> dict[str, Any] | None:
    try:
        data = os.pread(fd, 4096, 0)
        record = json.loads(data) if data else None
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


class OutputLock:
    """The held lock; `release` frees it (the process ending does too)."""

    def __init__(self, fd: int | None):
        self.fd = fd

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        import fcntl

        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.ftruncate(fd, 0)  # the holder's record goes with the lock
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass
        finally:
            os.close(fd)


def hold_output_dir(folder: Path, job: str, stage: str) -> OutputLock:
    """Take `folder`'s lock for this process, or raise OutputBusy naming the holder. On a file
    system without flock the lock is not held (OutputLock.held is False) and the run goes on."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        record = _read_record(fd)
        os.close(fd)
        raise OutputBusy(busy_message(str(folder), record)) from None
    except OSError as e:
        os.close(fd)
        if e.errno in UNSUPPORTED:
            return OutputLock(None)
        raise
    record = holder_record(job, stage, os.getpid(), socket.gethostname(), time.time())
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    return OutputLock(fd)
