"""Files written all-or-nothing, and files identified by their content.

Writes are all-or-nothing: a reader sees the old content or the new, never a torn one.

Every temp name carries its writer (`<host>.<pid>`), so `sweep_stale_temps` can later remove
what a killed writer left (SIGKILL, the OOM killer and power cuts skip every cleanup handler)
without touching the temp file of a writer that is still running, on this machine or on
another pod sharing the volume.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

# Temp files (`.<name>.<host>.<pid>.tmp`), temp folders (`.<name>.tmp-<host>.<pid>.<random>`)
# and the trash of build_dir_once (`.<name>.old-<uuid4 hex>`, an incomplete folder moved aside).
_TEMP_FILE = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.tmp$")
_TEMP_DIR = re.compile(r"^\..+\.tmp-(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+$")
_TRASH_DIR = re.compile(r"^\..+\.old-[0-9a-f]{32}$")
# A temp written from another machine is only judged by its age: its writer's pid means
# nothing here. No cache entry takes a day to write.
FOREIGN_TEMP_MAX_AGE_S = 24 * 3600


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"


def writer_tag() -> str:
    """`<host>.<pid>`: who is writing a temp file or folder."""
    return f"{_host()}.{os.getpid()}"


def temp_path(path: Path) -> Path:
    """The hidden sibling `path` is written to before it is renamed into place. A random part
    keeps two threads of one process apart when they write the same path at once (two
    identical images share one latent key)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.{writer_tag()}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _is_stale(entry: os.DirEntry, now: float) -> bool:
    if entry.is_dir(follow_symlinks=False):
        if _TRASH_DIR.match(entry.name):
            return True  # build_dir_once moved an incomplete folder here to delete it
        m = _TEMP_DIR.match(entry.name)
    else:
        m = _TEMP_FILE.match(entry.name)
    if not m:
        return False
    if m["host"] != _host():
        try:
            return now - entry.stat(follow_symlinks=False).st_mtime > FOREIGN_TEMP_MAX_AGE_S
        except OSError:
            return False
    pid = int(m["pid"])
    # Our own pid counts as stale: the caller promises no write of its own is in flight, so a
    # temp with our pid is from an earlier process that had it (a restarted container's pid 1).
    return pid == os.getpid() or not _pid_alive(pid)


def sweep_stale_temps(folder: Path) -> list[Path]:
    """Delete, under `folder` (recursively), the temp files and folders whose writer is gone.

    Call it only while this process has no write of its own in flight under `folder`.
    Returns what was removed. Symlinks are never followed."""
    removed: list[Path] = []
    now = time.time()
    stack = [Path(folder)]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue  # gone, or not a folder: nothing of ours to clean there
        for entry in entries:
            path = Path(entry.path)
            if _is_stale(entry, now):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                removed.append(path)
            elif entry.is_dir(follow_symlinks=False):
                stack.append(path)
    return removed


def not_writable(path: Path | str) -> str | None:
    """Why nothing can be written at `path` (created when missing): the nearest folder that
    exists is on a read-only file system, or this user may not write in it, or it takes no new
    folder (sysfs and procfs refuse even root, with EPERM or ENOENT); None when it can.

    os.access answers from the permission bits alone, and root passes it everywhere, so where
    it says yes a hidden folder is made in that folder and removed at once: the kernel's answer."""
    full = Path(path).absolute()
    existing = next((step for step in (full, *full.parents) if step.is_dir()), None)
    if existing is None:
        return None
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{path} cannot be written: {existing} {_why_not_writable(existing, errno.EACCES)}"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".trainingjob-probe-", dir=existing))
    except OSError as e:
        return f"{path} cannot be written: {existing} {_why_not_writable(existing, e.errno)}"
    return None


def _why_not_writable(folder: Path, error: int | None) -> str:
    try:
        read_only = error == errno.EROFS or bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        return "is on a read-only file system"
    if error == errno.EACCES:
        return "is not writable by this user"
    return f"takes no new folder ({os.strerror(error) if error else 'refused'})"


def not_a_directory(path: Path | str) -> str | None:
    """Why `path` cannot be used as a directory (created when missing): it is a file, or a
    folder on the way to it is; None when it can."""
    full = Path(path).absolute()
    for step in (full, *full.parents):
        if step.exists():
            if step.is_dir():
                return None
            return f"{path} is a file, not a directory" if step == full else \
                f"{step} is a file, so {path} cannot be a directory under it"
    return None


def process_umask() -> int:
    """The process umask. Read from /proc where Linux shows it: os.umask can only be read by
    setting it, and while it is set to 0 another thread's new files would be world-writable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def usual_mode(is_dir: bool, executable: bool, umask: int) -> int:
    """The permission bits open() or mkdir() give a new file or folder under `umask`."""
    return (0o777 if is_dir or executable else 0o666) & ~umask


def give_usual_modes(root: Path) -> None:
    """chmod `root` and everything under it to usual_mode: safetensors' save_file writes 0600
    files and mkdtemp makes 0700 folders, which a serving container, another uid on a shared
    volume or a pod's fsGroup then cannot read. For folders this process has just written.
    Symlinks and hard-linked files are left alone: a file with other links shares its mode with
    them (an export's unchanged components are the base model's files)."""
    umask = process_umask()
    paths = [Path(root)]
    for folder, subfolders, files in os.walk(root):  # never descends into a symlinked folder
        paths += [Path(folder, name) for name in subfolders + files]
    for path in paths:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink > 1):
            continue
        want = usual_mode(stat.S_ISDIR(st.st_mode), bool(st.st_mode & 0o111), umask)
        if stat.S_IMODE(st.st_mode) != want:
            os.chmod(path, want)


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace `path` with `data` in one step (temp file, fsync, rename). `durable=False` skips
    the fsync: a killed process still leaves the old or the new file, never a part of one, but
    a power loss may leave an empty one. For many small files that verify themselves when read
    (cache entries), where one `flush_to_disk` after the last of them replaces an fsync each."""
    _via_temp(path, data, lambda tmp: os.replace(tmp, path), durable=durable)


def atomic_write_json(path: Path, payload: Any, *, durable: bool = True) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=1, sort_keys=True) + "\n").encode(), durable=durable)


def flush_to_disk() -> None:
    """Every file written so far reaches the disk (one sync, where an fsync per file would wait
    for the disk's journal once per file: on a network volume that is most of the time)."""
    os.sync()


def atomic_create_bytes(path: Path, data: bytes) -> None:
    """Like atomic_write_bytes, but never replaces: FileExistsError when `path` exists, even
    when it appeared while this was writing (a hard link, unlike a rename, refuses to
    overwrite). Where the file system has no hard links, an exclusive create writes in place."""
    def link(tmp: Path) -> None:
        try:
            os.link(tmp, path)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            with open(path, "xb") as f:
                f.write(data)
        os.unlink(tmp)

    _via_temp(path, data, link)


def _via_temp(path: Path, data: bytes, publish: Callable[[Path], None], durable: bool = True) -> None:
    """Write `data` to `path`'s temp sibling, flush it to disk (when `durable`), then `publish(tmp)` it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        publish(tmp)
    except BaseException as e:
        # A full disk must not leave half-written temp files behind (a SIGKILL skips this:
        # sweep_stale_temps is for that).
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # write() errors name no file
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def file_digest(path: Path, chunk_size: int = 1 << 20) -> str:
    """sha256 hex digest of a file's content, read in chunks (cache keys, checkpoint seals)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


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
    the temp folder is given usual modes (give_usual_modes) and renamed into place. A `dest` that is already complete is
    returned untouched. When several processes race, one rename wins and the others keep
    the winner's folder. An incomplete `dest` is replaced only if `may_replace(dest)`
    (so a folder someone else made is never deleted); otherwise FileExistsError."""
    dest = Path(dest)
    if is_complete(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-{writer_tag()}.", dir=dest.parent))
    try:
        build(tmp)
        give_usual_modes(tmp)
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


@dataclass(frozen=True)
class BuildMarker:
    """The file a build_dir_once `build` writes last into its folder: the folder is complete
    when the marker is there, its version is this one or newer, and every file it lists exists."""

    name: str
    version: int

    def write(self, folder: Path, files: Sequence[str] = (), **info: Any) -> None:
        record = {**info, "version": self.version, "files": list(files)}
        (Path(folder) / self.name).write_text(json.dumps(record, indent=1) + "\n")

    def is_complete(self, folder: Path) -> bool:
        folder = Path(folder)
        try:
            record = json.loads((folder / self.name).read_text())
            return (int(record.get("version", 0)) >= self.version
                    and all((folder / name).is_file() for name in record.get("files", [])))
        except (OSError, ValueError, TypeError, AttributeError):  # absent, or not a marker we wrote
            return False
