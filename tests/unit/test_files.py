"""runner.files: all-or-nothing writes whose temp files carry their writer (only those of writers that are gone
are swept), content digests, and build markers."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner import files as atomic
from runner.files import (BuildMarker, atomic_create_bytes, atomic_write_bytes, build_dir_once, file_digest,
                          sweep_stale_temps, temp_path)


@pytest.fixture
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def named(folder: Path, name: str, *, is_dir: bool = False, age_s: float = 0) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        path.mkdir()
        (path / "partial.png").write_bytes(b"x")
    else:
        path.write_bytes(b"half")
    if age_s:
        old = time.time() - age_s
        os.utime(path, (old, old))
    return path


def test_temp_names_carry_host_and_pid(tmp_path):
    tmp = temp_path(tmp_path / "ab" / "key.safetensors")
    assert tmp.parent == tmp_path / "ab" and tmp.name.startswith(".key.safetensors.")
    assert tmp.name.endswith(f".{os.getpid()}.tmp") and atomic._host() in tmp.name


def test_sweep_removes_only_what_dead_or_long_gone_writers_left(tmp_path, dead_pid, live_pid):
    host = atomic._host()
    dead = [
        named(tmp_path, f"ab/.k1.safetensors.{host}.{dead_pid}.tmp"),
        named(tmp_path, f"ab/cd/.k2.safetensors.{host}.{os.getpid()}.tmp"),  # our pid, before we write
        named(tmp_path, f".samples.tmp-{host}.{dead_pid}.x1_y2", is_dir=True),
        named(tmp_path, ".samples.old-" + "0123456789abcdef" * 2, is_dir=True),
        named(tmp_path, f".digests.json.other-pod.{live_pid}.tmp", age_s=2 * atomic.FOREIGN_TEMP_MAX_AGE_S),
    ]
    kept = [
        named(tmp_path, f"ab/.k3.safetensors.{host}.{live_pid}.tmp"),  # a writer still at work
        named(tmp_path, f".samples.tmp-{host}.{live_pid}.abc", is_dir=True),
        named(tmp_path, f".manifest.json.other-pod.{dead_pid}.tmp"),  # another machine: its pids mean nothing here
        named(tmp_path, "ab/k4.safetensors"),
        named(tmp_path, ".samples-complete.json"),
        named(tmp_path, ".model.old-123"),  # replace_dir's: may hold the only copy, never swept
        named(tmp_path, "notes.tmp"),
    ]
    outside = named(tmp_path.parent / f"{tmp_path.name}-other", f".x.{host}.{dead_pid}.tmp")
    (tmp_path / "link").symlink_to(outside.parent, target_is_directory=True)

    removed = sweep_stale_temps(tmp_path)
    assert sorted(removed) == sorted(dead)
    assert not any(p.exists() for p in dead)
    assert all(p.exists() for p in kept)
    assert outside.exists(), "the sweep followed a symlink out of the folder"
    assert sweep_stale_temps(tmp_path / "missing") == []


def test_a_killed_write_leaves_a_temp_that_the_sweep_removes(tmp_path):
    """A writer killed between write and rename (SIGKILL runs no except/finally)."""
    target = tmp_path / "ab" / "entry.bin"
    code = (f"import os, signal; from pathlib import Path; import runner.files as a\n"
            f"os.replace = lambda *x: os.kill(os.getpid(), signal.SIGKILL)\n"
            f"a.atomic_write_bytes(Path({str(target)!r}), b'x' * 1000)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9
    [left] = list(target.parent.iterdir())
    assert left.name.endswith(".tmp") and left.stat().st_size == 1000 and not target.exists()
    assert sweep_stale_temps(tmp_path) == [left] and not left.exists()
    atomic_write_bytes(target, b"whole")
    assert target.read_bytes() == b"whole" and sorted(tmp_path.rglob("*")) == [target.parent, target]


def test_build_dir_once_temp_folders_are_sweepable(tmp_path):
    seen = []

    def build(tmp: Path) -> None:
        seen.append(tmp.name)
        (tmp / "done").write_text("1")

    build_dir_once(tmp_path / "thing", build, lambda d: (d / "done").is_file())
    assert seen and atomic._TEMP_DIR.match(seen[0]) and f".{os.getpid()}." in seen[0]


def test_threads_writing_one_path_at_once_never_share_a_temp_file(tmp_path):
    """Two identical images share a latent key, so the cache's writer threads can write one
    entry twice at the same moment; each write must land whole, neither may lose its temp."""
    import threading

    target = tmp_path / "ab" / "key.safetensors"
    payloads = [bytes([i]) * 200_000 for i in range(8)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(payloads))

    def write(data: bytes) -> None:
        start.wait()
        try:
            for _ in range(20):
                atomic_write_bytes(target, data)
        except BaseException as e:  # noqa: BLE001 - collected for the assertion below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_bytes() in payloads
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_create_never_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "spec.yaml"
    atomic_create_bytes(path, b"first")
    with pytest.raises(FileExistsError):
        atomic_create_bytes(path, b"second")
    assert path.read_bytes() == b"first"
    assert sorted(p.name for p in path.parent.iterdir()) == ["spec.yaml"]


@pytest.mark.parametrize("content", [b"", b"abc", b"x" * (3 << 20)])
def test_file_digest_matches_hashlib(tmp_path, content):
    p = tmp_path / "f.bin"
    p.write_bytes(content)
    assert file_digest(p) == hashlib.sha256(content).hexdigest()
    assert file_digest(p, chunk_size=7) == hashlib.sha256(content).hexdigest()


def test_a_build_marker_is_complete_only_with_its_version_and_files(tmp_path):
    marker = BuildMarker(".done.json", 2)
    assert not marker.is_complete(tmp_path)
    (tmp_path / "a.bin").write_bytes(b"a")
    marker.write(tmp_path, files=["a.bin"], seed=7)
    assert marker.is_complete(tmp_path) and json.loads((tmp_path / ".done.json").read_text())["seed"] == 7
    assert BuildMarker(".done.json", 1).is_complete(tmp_path)  # newer builds serve older readers
    assert not BuildMarker(".done.json", 3).is_complete(tmp_path)
    (tmp_path / "a.bin").unlink()
    assert not marker.is_complete(tmp_path)
    (tmp_path / ".done.json").write_text("[1, 2]")  # not a marker we wrote
    assert not marker.is_complete(tmp_path)



# ----------------------------------------------------------------------------- file modes

@pytest.mark.parametrize("is_dir, executable, umask, mode", [
    (False, False, 0o022, 0o644),
    (False, False, 0o002, 0o664),
    (False, False, 0o077, 0o600),
    (True, False, 0o022, 0o755),
    (True, False, 0o002, 0o775),
    (False, True, 0o022, 0o755),  # a script keeps its executable bits
    (False, False, 0o000, 0o666),
])
def test_usual_mode_is_what_open_or_mkdir_would_give(is_dir, executable, umask, mode):
    assert atomic.usual_mode(is_dir, executable, umask) == mode


# A build the way the tiny models and the sample photos are built: safetensors' save_file
# writes 0600, mkdtemp makes the folder 0700. Prints each path's mode.
_BUILD_UNDER_UMASK = """
import json, os, sys
from pathlib import Path
from runner.files import build_dir_once, process_umask

def build(tmp):
    (tmp / "sub").mkdir()
    fd = os.open(tmp / "sub" / "weights.safetensors", os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    (tmp / "done").write_text("1")
    (tmp / "link").symlink_to(sys.argv[2])  # a file outside the build, not the build's to change
    os.link(sys.argv[2], tmp / "hardlink")  # the same file under another name (an export's base weights)

dest = build_dir_once(Path(sys.argv[1]), build, lambda d: (d / "done").is_file())
modes = {p.relative_to(dest).as_posix() or ".": oct(p.lstat().st_mode & 0o777) for p in [dest, *dest.rglob("*")]}
print(json.dumps({"umask": oct(process_umask()), "modes": modes}))
"""


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_a_built_folder_gets_the_usual_modes_of_the_umask(tmp_path, umask):
    """It was 0700 with a 0600 file in it: unreadable by a serving container of another uid,
    or through a pod's fsGroup."""
    outside = tmp_path / "outside.txt"
    outside.write_text("someone else's")
    outside.chmod(0o600)
    proc = subprocess.run([sys.executable, "-c", _BUILD_UNDER_UMASK, str(tmp_path / "built"), str(outside)],
                          umask=umask, cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
                          check=True)
    report = json.loads(proc.stdout)
    assert report["umask"] == oct(umask)
    folder, file = oct(0o777 & ~umask), oct(0o666 & ~umask)
    assert report["modes"].pop("link") == oct(0o777)  # a symlink's own mode, untouched
    assert report["modes"].pop("hardlink") == oct(0o600)
    assert report["modes"] == {".": folder, "sub": folder, "sub/weights.safetensors": file, "done": file}
    assert outside.stat().st_mode & 0o777 == 0o600  # neither the symlink nor the hard link changed it
