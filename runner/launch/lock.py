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
- In a pod of a TrainingJob the holder can only be a predecessor pod of the same Job, on its way out
  (the Job replaces a pod once it has failed, as its podFailurePolicy requires), or a crashed
  node whose NFS lock the server frees when its lease runs out (90 s for NFSv4). So a pod waits
  for the lock (`lock_wait_s`) instead of failing its Job at once; elsewhere a second run is
  refused at once.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Mapping

from runner.envvars import in_job_pod
from runner.launch.torchrun import node_rank

LOCK_FILE = ".trainingjob.lock"
# flock is not supported here: run unlocked.
UNSUPPORTED = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL})


# In a pod: two NFSv4 leases, for a lock left by a node that died.
POD_LOCK_WAIT_S = 180


class OutputBusy(Exception):
    """Another run holds the output folder."""


def takes_lock(env: Mapping[str, str], in_worker: bool) -> bool:
    """Whether this process holds the output folder's lock: the launching process (not a
    torchrun worker) of node 0 (pure)."""
    return not in_worker and node_rank(env) == 0


def lock_wait_s(env: Mapping[str, str]) -> float:
    """How long this process waits for a held output folder before it is refused (pure)."""
    return POD_LOCK_WAIT_S if in_job_pod(env) else 0


def holder_record(job: str, stage: str, pid: int, host: str, started: float) -> dict[str, Any]:
    """What the holder writes into the lock file, for the message a refused run prints (pure)."""
    return {"job": job, "stage": stage, "pid": pid, "host": host,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started))}


def holder_text(record: Mapping[str, Any] | None) -> str:
    """Who holds the folder, from the lock file's record (pure)."""
    if record:
        return (f"run of {record.get('job')!r} (stage {record.get('stage')}, pid {record.get('pid')} on host "
                f"{record.get('host')}, started {record.get('started')})")
    return "run (it has not yet written who it is)"


def busy_message(folder: str, record: Mapping[str, Any] | None) -> str:
    """Why a run is refused: the folder and who holds it (pure)."""
    return (f"spec.output.dir: {folder} is in use by another {holder_text(record)}; wait for it to finish or "
            "stop it, or give this run another spec.output.dir")


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


def _take(fd: int) -> bool:
    """Take the lock on `fd` if it is free (OSError where flock is not supported)."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def hold_output_dir(folder: Path, job: str, stage: str, wait_s: float = 0, poll_s: float = 5) -> OutputLock:
    """Take `folder`'s lock for this process, waiting up to `wait_s` for a holder to let go, or
    raise OutputBusy naming the holder. On a file system without flock the lock is not held
    (OutputLock.held is False) and the run goes on."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # 0666: the umask decides, as for every other output (another uid of the group may lock it too).
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    deadline, told = time.monotonic() + wait_s, False
    try:
        while not _take(fd):
            holder = _read_record(fd)
            if time.monotonic() >= deadline:
                os.close(fd)
                raise OutputBusy(busy_message(str(folder), holder))
            if not told:
                print(f"[{job}] {folder} is held by another {holder_text(holder)}; waiting up to {wait_s:.0f} s "
                      "for it to let go", flush=True)
                told = True
            time.sleep(poll_s)
    except OSError as e:
        os.close(fd)
        if e.errno in UNSUPPORTED:
            return OutputLock(None)
        raise
    record = holder_record(job, stage, os.getpid(), socket.gethostname(), time.time())
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    return OutputLock(fd)
