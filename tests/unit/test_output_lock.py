"""runner.launch.lock: one run per output folder, refused at once with who holds it."""
from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runner.launch.lock import (LOCK_FILE, POD_LOCK_WAIT_S, OutputBusy, busy_message, hold_output_dir, holder_record,
                                lock_wait_s, takes_lock)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("env, in_worker, expected", [
    ({}, False, True),                                   # a local run
    ({"LOCAL_RANK": "0"}, True, False),                  # a torchrun worker: its launcher holds it
    ({"JOB_COMPLETION_INDEX": "0"}, False, True),        # pod 0 of an Indexed Job
    ({"JOB_COMPLETION_INDEX": "1"}, False, False),       # another pod on the shared volume
    ({"NODE_RANK": "2"}, False, False),
])
def test_takes_lock_table(env, in_worker, expected):
    assert takes_lock(env, in_worker) is expected


@pytest.mark.parametrize("record, expected", [
    ({"job": "smoke", "stage": "all", "pid": 42, "host": "box", "started": "2025-01-02 03:04:05 +0000"},
     "spec.output.dir: out is in use by another run of 'smoke' (stage all, pid 42 on host box, started "
     "2025-01-02 03:04:05 +0000); wait for it to finish or stop it, or give this run another spec.output.dir"),
    (None, "spec.output.dir: out is in use by another run (it has not yet written who it is); wait for it to "
           "finish or stop it, or give this run another spec.output.dir"),
])
def test_busy_message_table(record, expected):
    assert busy_message("out", record) == expected


def test_holder_record_names_the_process():
    record = holder_record("smoke", "train", 7, "box", 0.0)
    assert (record["job"], record["stage"], record["pid"], record["host"]) == ("smoke", "train", 7, "box")
    assert record["started"].startswith("19")


def test_a_second_hold_is_refused_until_the_first_is_released(tmp_path):
    first = hold_output_dir(tmp_path / "out", "smoke", "all")
    assert first.held
    with pytest.raises(OutputBusy) as refused:  # flock: another open of the file, even in this process
        hold_output_dir(tmp_path / "out", "other", "all")
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in str(refused.value)
    first.release()
    again = hold_output_dir(tmp_path / "out", "other", "all")
    assert again.held
    again.release()
    assert (tmp_path / "out" / LOCK_FILE).read_text() == ""  # no stale holder left in the file


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP])
def test_a_file_system_without_flock_runs_unlocked(tmp_path, monkeypatch, code):
    import fcntl

    def no_flock(fd, op):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    lock = hold_output_dir(tmp_path / "out", "smoke", "all")
    assert not lock.held
    lock.release()


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from runner.launch.lock import hold_output_dir
    lock = hold_output_dir(Path(sys.argv[1]), "first", "all")
    print("held", flush=True)
    time.sleep(120)
""")


def test_a_second_run_on_the_same_output_dir_is_refused_while_the_first_holds_it(tmp_path):
    out = tmp_path / "conc"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = subprocess.run([sys.executable, "-m", "runner", "run", "examples/smoke.yaml",
                               "--set", f"spec.output.dir={out}", "--set", "spec.training.maxSteps=12"],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"error: spec.output.dir: {out} is in use by another run of 'first' (stage all, pid {holder.pid} " \
               f"on host {socket.gethostname()}, started " in proc.stderr
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing of the refused run written
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing: the kernel dropped its lock, so nothing stale remains.
    lock = hold_output_dir(out, "next", "all")
    assert lock.held
    lock.release()


@pytest.fixture
def stages(monkeypatch):
    """run_job with its stages replaced by recorders: what it does around them, without a model."""
    import runner.launch.run as run_mod

    ran: list[str] = []
    monkeypatch.setattr(run_mod, "run_cache_stage", lambda job, *a, **kw: ran.append("cache"))
    monkeypatch.setattr(run_mod, "run_train_stage", lambda job, *a: ran.append("train") or 0)
    for name in ("LOCAL_RANK", "JOB_COMPLETION_INDEX", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    return ran


def smoke_job(out: Path):
    from runner.spec.load import load_spec

    return load_spec(REPO / "examples" / "smoke.yaml", [f"spec.output.dir={out}"])


def test_a_single_process_run_writes_the_effective_spec_and_releases_the_lock(tmp_path, stages):
    import yaml

    from runner.launch.run import run_job

    job = smoke_job(tmp_path / "out")
    assert run_job(job) == 0 and stages == ["cache", "train"]
    effective = tmp_path / "out" / "trainingjob.effective.yaml"
    assert yaml.safe_load(effective.read_text()) == job.document.to_dict()
    assert effective.read_text() == yaml.safe_dump(job.document.to_dict(), sort_keys=False)
    hold_output_dir(tmp_path / "out", "next", "all").release()  # run_job let go of it


def test_a_refused_run_runs_no_stage_and_leaves_the_effective_spec_alone(tmp_path, stages, capsys):
    from runner.launch.run import run_job

    first = hold_output_dir(tmp_path / "out", "first", "all")
    try:
        assert run_job(smoke_job(tmp_path / "out")) == 2
    finally:
        first.release()
    assert stages == [] and not (tmp_path / "out" / "trainingjob.effective.yaml").exists()
    assert "is in use by another run of 'first'" in capsys.readouterr().err


def test_a_worker_neither_locks_nor_writes_the_effective_spec(tmp_path, stages, monkeypatch):
    from runner.launch.run import run_job

    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr("runner.train.data.load_manifest", lambda *a: None)  # as if its launcher had cached
    first = hold_output_dir(tmp_path / "out", "launcher", "train")  # its launcher holds the folder
    try:
        assert run_job(smoke_job(tmp_path / "out"), stage="train") == 0 and stages == ["train"]
    finally:
        first.release()
    assert not (tmp_path / "out" / "trainingjob.effective.yaml").exists()


def test_the_rerun_of_a_finished_job_touches_nothing(tmp_path, stages, monkeypatch):
    """No lock file and no effective spec either: e2e/test_resume.py snapshots such a folder."""
    import runner.train.completion
    from runner.launch.run import run_job

    monkeypatch.setattr(runner.train.completion, "finished_step", lambda spec, job: 20)
    (tmp_path / "out").mkdir()
    assert run_job(smoke_job(tmp_path / "out")) == 0 and stages == []
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("env, wait", [
    ({}, 0),
    ({"JOB_COMPLETION_INDEX": "0"}, POD_LOCK_WAIT_S),  # a pod of the TrainingJob's Jobs: a predecessor holds it
    ({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, 0),  # any other pod (a notebook's): a second run, refused at once
])
def test_only_a_pod_waits_for_the_lock(env, wait):
    assert lock_wait_s(env) == wait


def test_a_waiting_hold_gets_the_lock_when_the_holder_lets_go(tmp_path, capsys):
    import threading

    first = hold_output_dir(tmp_path, "predecessor", "train")
    threading.Timer(0.3, first.release).start()
    second = hold_output_dir(tmp_path, "successor", "train", wait_s=10, poll_s=0.05)
    try:
        assert second.held
        out = capsys.readouterr().out
        assert out.count("is held by another run of 'predecessor'") == 1 and "waiting up to 10 s" in out
    finally:
        second.release()
    first = hold_output_dir(tmp_path, "predecessor", "train")
    try:
        with pytest.raises(OutputBusy, match="in use by another run of 'predecessor'"):
            hold_output_dir(tmp_path, "successor", "train", wait_s=0.2, poll_s=0.05)  # the holder stays: refused
    finally:
        first.release()
