"""Pods of one job get SIGTERM at different moments. Every rank must learn of the stop at the
same step: then one checkpoint is written, every rank exits 143, and the rerun resumes.
Without the agreement, the rank that got the signal checkpoints (a collective) while the
other starts the next step's gradient all-reduce, and the job hangs with no checkpoint."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, assert_clean
from tests.e2e.train_state import published_steps, quiet_env, run, runner_with_cache, shared_cache

pytestmark = pytest.mark.e2e

TWO_RANKS = ("spec.hardware.gpusPerNode=2", "spec.training.batchSize=1", "spec.training.checkpointEvery=1000",
             "spec.validation.prompts=[]", "spec.tracking.tensorboard=false")


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_model):
    return shared_cache(tmp_path_factory, tiny_model)


def _proc_env(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def workers_by_rank(root: int) -> dict[int, int]:
    """Training processes under `root`, by their RANK: found by environment, not by how they
    were launched (our launcher today, torchrun tomorrow). A worker's own children (data
    loaders) inherit RANK, so only the topmost process with a given RANK counts."""
    parents = {int(p.name): _parent(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}
    under = {root}
    for _ in range(8):  # a few levels: launcher -> agent -> worker
        under |= {pid for pid, ppid in parents.items() if ppid in under}
    found: dict[int, int] = {}
    for pid in sorted(under - {root}):
        rank = _proc_env(pid).get("RANK")
        if rank is not None and _proc_env(parents.get(pid, 0)).get("RANK") != rank:
            found[int(rank)] = pid
    return found


def test_sigterm_to_rank_1_then_rank_0_checkpoints_once_and_exits_143(tmp_path, tiny_model, cache):
    runner = runner_with_cache(tmp_path, tiny_model, cache)
    sets = (*TWO_RANKS, "spec.training.maxSteps=400")
    proc = subprocess.Popen(runner.args(*sets, stage="train"), cwd=REPO, env=quiet_env(runner), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    lines: list[str] = []
    training = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            # rank 0 finished step 1, so both ranks are in the loop (torchrun prefixes "[rank0]: ")
            if re.sub(r"^\[rank\d+\]:\s*", "", line).startswith("train: 1/"):
                training.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert training.wait(timeout=300), "training never started:\n" + "".join(lines)[-3000:]
        ranks = workers_by_rank(proc.pid)
        assert set(ranks) == {0, 1}, f"worker processes by rank: {ranks}"
        os.kill(ranks[1], signal.SIGTERM)
        time.sleep(0.5)
        os.kill(ranks[0], signal.SIGTERM)
        try:
            code = proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            pytest.fail("the job hung after SIGTERM reached its ranks at different moments:\n"
                        + "".join(lines)[-3000:])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=10)
    out = "".join(lines)
    assert code == 128 + signal.SIGTERM, out[-3000:]
    assert "Traceback" not in out, out[-3000:]

    steps = published_steps(runner.out)
    assert len(steps) == 1, f"expected one checkpoint, found {steps}"
    saved = steps[0]
    assert 0 < saved < 400 and f"checkpointed at step {saved}" in out
    record = json.loads((runner.out / "checkpoints" / f"step-{saved}" / "trainer_state.json").read_text())
    assert record["state"]["step"] == saved
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(record["files"])  # both ranks saved

    again = run(runner, *TWO_RANKS, f"spec.training.maxSteps={saved + 1}", env=quiet_env(runner))
    assert_clean(again)
    assert f"resuming from step {saved}" in again.stdout
    assert published_steps(runner.out)[-1] == saved + 1
