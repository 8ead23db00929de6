"""torchrun on the CPU: several workers on one node, and two nodes standing in for two pods."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, assert_clean, free_port
from tests.e2e.train_state import quiet_env, runner_with_cache, shared_cache

pytestmark = pytest.mark.e2e

SMALL = ("spec.training.batchSize=1", "spec.training.maxSteps=2", "spec.training.checkpointEvery=2",
         "spec.validation.prompts=[]", "spec.tracking.tensorboard=false")


def test_gpus_per_node_2_goes_through_torchrun(runner):
    """gpusPerNode: 2 with accelerator cpu runs two gloo workers per stage through torchrun: the
    same launch and sharding code path as on 2 GPUs, checked here without one."""
    proc = runner.run("spec.hardware.gpusPerNode=2", *SMALL)
    assert_clean(proc)
    out = proc.stdout + proc.stderr
    assert "launching 2 cache workers on node 0 of 1: torchrun --nproc-per-node=2" in out
    assert "launching 2 training processes on node 0 of 1: torchrun" in out
    assert "--rdzv-endpoint=localhost:0" in out  # a free port, not a fixed 29500
    # Every worker line carries its rank, and the tee'd files keep each rank's output.
    assert "[rank0]: " in out and "[rank1]: " in out
    logs = sorted(p.relative_to(runner.out) for p in (runner.out / "logs" / "torchrun").rglob("stdout.log"))
    assert len(logs) == 4, logs  # 2 cache + 2 train workers
    # The cache is encoded in two shards, one per worker; the final pass finds it all cached.
    shard_counts = [int(n) for n in re.findall(r"cache shard \d/2 done: text embeds: \d+ \((\d+) encoded", out)]
    assert len(shard_counts) == 2 and all(n > 0 for n in shard_counts)
    final = runner.cache_report()
    assert final["latents_encoded"] == 0 and final["text_encoded"] == 0
    assert sum(shard_counts) == final["text_total"]
    assert "on 2 x cpu" in out
    state = json.loads((runner.out / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert state["state"]["samples_seen"] == 2 * 2  # 2 steps x batch 1 x 2 processes
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(state["files"])


def test_two_nodes_of_one_process_each_as_two_pods(runner):
    """What the Indexed Jobs run: each 'pod' gets JOB_COMPLETION_INDEX, the rendezvous address
    (pod 0) and a run id; the cache pods split the shards and the last one writes the manifest;
    the train pods meet in one c10d rendezvous and train as one 2-process group."""
    sets = ("spec.hardware.nodes=2", *SMALL)
    port, run = free_port(), uuid.uuid4().hex

    def pods(stage: str) -> list[subprocess.CompletedProcess]:
        procs = []
        for index in (0, 1):
            env = {**runner.env(), "JOB_COMPLETION_INDEX": str(index), "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(port), "POD_IP": "127.0.0.1", "TRAININGJOB_RUN_ID": f"{run}-{stage}"}
            procs.append(subprocess.Popen(runner.args(*sets, stage=stage), cwd=REPO, env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        return [subprocess.CompletedProcess(p.args, p.wait(timeout=400), p.stdout.read(), "") for p in procs]

    cache = pods("cache")
    for proc in cache:
        assert_clean(proc)
    shard_lines = [line for proc in cache for line in proc.stdout.splitlines() if "cache shard" in line and " done: " in line]
    assert sorted(line.split("cache shard ")[1][:3] for line in shard_lines) == ["1/2", "2/2"]
    report = runner.cache_report()
    assert report["text_encoded"] == 0 and report["latents_encoded"] == 0  # the shards did it all

    train = pods("train")
    for proc in train:
        assert_clean(proc)
    assert "on node 1 of 2" in train[1].stdout and "--nnodes=2" in train[1].stdout
    assert "[rank0]: " in train[0].stdout  # node 0's worker is global rank 0 (it logs for the group)
    state = json.loads((runner.out / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert state["state"]["samples_seen"] == 2 * 2  # 2 steps x batch 1 x 2 nodes
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(state["files"])  # one per global rank


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_model):
    return shared_cache(tmp_path_factory, tiny_model)


def attempts(out, stage: str = "train") -> list[str]:
    """torchrun's log folders, one per start of the worker group: attempt_0, then one per restart."""
    return sorted(p.name for p in (out / "logs" / "torchrun" / stage).glob("*/attempt_*"))


def process_tree(root: int) -> list[int]:
    """`root` and every process under it, through /proc: torchrun starts each worker in a
    session of its own, so no process group holds them all."""
    parents = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    tree = [root]
    for pid in tree:  # grows while it is walked: children, then theirs
        tree += [child for child, parent in parents.items() if parent == pid]
    return tree


def run_pods(commands: list[tuple[list[str], dict[str, str]]], timeout: float) -> list[subprocess.CompletedProcess]:
    """Each (argv, env) as a pod's `trainingjob run`, all at once. On a timeout every process
    under them is killed: a launcher killed alone leaves its workers behind, blocked in a
    collective by a dead peer (they catch SIGTERM to checkpoint)."""
    procs = [subprocess.Popen(argv, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for argv, env in commands]
    deadline = time.monotonic() + timeout
    try:
        outputs = [p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0] for p in procs]
    except subprocess.TimeoutExpired:
        for pid in [pid for p in procs for pid in process_tree(p.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        said = "\n".join(f"--- pod {i}:\n{p.communicate()[0][-2000:]}" for i, p in enumerate(procs))
        pytest.fail(f"still running after {timeout:.0f} s:\n{said}")
    return [subprocess.CompletedProcess(p.args, p.returncode, out, "") for p, out in zip(procs, outputs)]


# A worker that records its start (torchrun's restart count) and then ends as told.
WORKER = """
import os, signal, sys
with open(sys.argv[1], "a") as f:
    f.write(os.environ["TORCHELASTIC_RESTART_COUNT"] + "\\n")
if sys.argv[2] == "SIGKILL":
    os.kill(os.getpid(), signal.SIGKILL)
sys.exit(int(sys.argv[2]))
"""
# torchrun's own launcher API, as runner.launch.torchrun.launch calls it, on that worker.
AGENT = """
import sys
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import elastic_launch
from torch.distributed.run import config_from_args, parse_args
from runner.launch.agent import restarts_only_after_crashes
config, entrypoint, args = config_from_args(parse_args(sys.argv[1:]))
try:
    with restarts_only_after_crashes():
        elastic_launch(config, entrypoint)(*args)
except ChildFailedError as e:
    print("exit codes", sorted(f.exitcode for f in e.failures.values()))
"""


@pytest.mark.parametrize("ends, starts, code", [
    ("2", 1, 2),             # bad input: no restart would end otherwise
    ("3", 1, 3),             # diverged or out of GPU memory: the restart resumes into the same failure
    ("1", 4, 1),             # a crash: the 3 restarts, as torchrun gives them
    ("SIGKILL", 4, -9),      # killed (the OOM killer): the same
])
def test_the_agent_restarts_after_crashes_only(tmp_path, ends, starts, code):
    """The agent of runner/launch/agent.py under torch's own launcher, with --max-restarts=3 as
    in a pod, on a one-process worker group (with two, which one the agent stops first varies)."""
    (tmp_path / "worker.py").write_text(WORKER)
    log = tmp_path / "starts.txt"
    argv = ["--nproc-per-node=1", "--max-restarts=3", "--monitor-interval=0.1", "--rdzv-backend=c10d",
            "--rdzv-endpoint=localhost:0", f"--rdzv-id={uuid.uuid4().hex}", str(tmp_path / "worker.py"), str(log), ends]
    proc = subprocess.run([sys.executable, "-c", AGENT, *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"exit codes [{code}]" in proc.stdout, proc.stderr[-3000:]
    assert log.read_text().split() == [str(n) for n in range(starts)]  # torchrun's restart count at each start


def test_bad_input_in_a_pod_ends_it_with_exit_2_and_no_restarts(tmp_path, tiny_model, cache):
    """A worker that exits 2 (here: a resume folder that holds no checkpoint, which every worker
    finds after the launch) fails the same way however often torchrun restarts it. In a pod
    (JOB_COMPLETION_INDEX set: up to 3 restarts) the group is started once and the pod exits 2,
    the code the Job's podFailurePolicy fails the Job on. Before, the group was started 4 times
    (110 s here, or a hang) and the pod exited 1: a survivor stopped by the agent had exited 1,
    which the Job retries as a crash."""
    runner = runner_with_cache(tmp_path, tiny_model, cache)
    empty = tmp_path / "not-a-checkpoint"
    empty.mkdir()
    argv = runner.args(*SMALL, "spec.hardware.gpusPerNode=2", f"spec.training.resume={empty}", stage="train")
    [proc] = run_pods([(argv, quiet_env(runner, JOB_COMPLETION_INDEX="0"))], timeout=180)
    assert_clean(proc, code=2)
    assert "--max-restarts=3" in proc.stdout  # a pod's launch: restarts are on, for crashes
    assert f"cannot resume from {empty}: no trainer_state.json" in proc.stdout
    assert attempts(runner.out) == ["attempt_0"], proc.stdout[-3000:]
    assert "train stage: bad input, see the error of rank" in proc.stdout
    assert "the workers were not restarted" in proc.stdout


DIVERGE = ("spec.training.optimizer=sgd", "spec.training.learningRate=1", "spec.training.maxGradNorm=0",
           "spec.training.lrWarmupSteps=0", "spec.training.maxSteps=30", "spec.training.checkpointEvery=100")
OOM_ON_RANK_1 = {"target": "runner.models.pixart_sigma:Objective.__call__", "nth": 3, "rank": 1,
                 "raise": "torch.cuda:OutOfMemoryError"}


@pytest.mark.parametrize("fault", ["diverged", "out of GPU memory"])
def test_a_failure_a_retry_would_repeat_ends_the_pod_with_exit_3_and_no_restarts(tmp_path, tiny_model, cache, fault):
    """Training that diverges (every rank stops at the same step: the verdict is all-reduced)
    or a rank out of GPU memory (its peer loses it mid collective) would fail the same way after
    every restart: the restarted group resumes from the same checkpoint with the same data. In a
    pod the group is started once and the pod exits 3, which the Job's podFailurePolicy fails
    the Job on. Before, both exited 1: 4 starts of the group per pod, then up to 3 more pods per
    node, each loading the model again."""
    runner = runner_with_cache(tmp_path, tiny_model, cache)
    sets, extra_env = (DIVERGE, {}) if fault == "diverged" else \
        (("spec.training.maxSteps=50",), {"TJ_KILL_AT": json.dumps(OOM_ON_RANK_1),
                                           # killpoints first; then the runner this test belongs to, which
                                           # sitecustomize imports before the working directory is on sys.path
                                           "PYTHONPATH": os.pathsep.join([str(KILLPOINTS), str(REPO)])})
    argv = runner.args(*SMALL, *sets, "spec.hardware.gpusPerNode=2", stage="train")
    [proc] = run_pods([(argv, quiet_env(runner, JOB_COMPLETION_INDEX="0", **extra_env))], timeout=240)
    assert_clean(proc, code=3)
    assert "--max-restarts=3" in proc.stdout  # a pod's launch: restarts are on, for crashes
    assert attempts(runner.out) == ["attempt_0"], proc.stdout[-3000:]
    assert "train stage: a failure that a retry would repeat, see the error of rank" in proc.stdout
    assert "the workers were not restarted" in proc.stdout
    if fault == "diverged":
        assert re.search(r"\[rank0\]: error: training diverged: the loss is not finite at step \d+", proc.stdout)
        assert "lower spec.training.learningRate (now 1)" in proc.stdout
    else:
        said = next(line for line in proc.stdout.splitlines() if line.startswith("[rank1]: error: out of GPU memory"))
        assert "in the train stage" in said and "spec.training.batchSize (now 1" in said, said
        assert "spec.training.gradientCheckpointing: true" in said and "(exit 3: not retried)" in said
    assert "bug in trainingjob" not in proc.stdout


def test_bad_input_on_one_of_two_nodes_ends_both(tmp_path, tiny_model, cache):
    """Two 'pods' of a 2-node train Job; only node 1's worker finds bad input (its own resume
    folder, which holds no checkpoint: a stand-in for a fault only one rank meets). Node 1 exits
    2 at once, without restarts. Node 0's worker loses its peer (exit 1); node 0's agent restarts
    it and finds the rendezvous closed: it exits 1 saying another node ended the run, not that
    trainingjob has a bug. On a cluster the Job has failed on node 1's exit 2 by then
    (podFailurePolicy FailJob), and the operator reports that pod's exit."""
    runner = runner_with_cache(tmp_path, tiny_model, cache)
    empty = tmp_path / "not-a-checkpoint"
    empty.mkdir()
    port, run_id = free_port(), uuid.uuid4().hex
    per_node = [(f"spec.output.dir={tmp_path / 'out-0'}",),
                (f"spec.output.dir={tmp_path / 'out-1'}", f"spec.training.resume={empty}")]
    node0, node1 = run_pods([
        (runner.args("spec.hardware.nodes=2", *SMALL, "spec.training.maxSteps=50", *sets, stage="train"),
         quiet_env(runner, JOB_COMPLETION_INDEX=str(index), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   POD_IP="127.0.0.1", TRAININGJOB_RUN_ID=run_id))
        for index, sets in enumerate(per_node)], timeout=180)

    assert_clean(node1, code=2)
    assert f"cannot resume from {empty}" in node1.stdout and "the workers were not restarted" in node1.stdout
    assert attempts(tmp_path / "out-1") == ["attempt_0"]
    assert_clean(node0, code=1)
    assert "another node ended this run and closed its rendezvous" in node0.stdout, node0.stdout[-3000:]
    assert "bug in trainingjob" not in node0.stdout.split("another node ended")[1]


KILLPOINTS = REPO / "tests" / "e2e" / "killpoints"


@pytest.mark.parametrize("error, code", [("runner.data:DatasetError", 2), ("builtins:ValueError", 1)])
def test_a_worker_that_loses_its_peer_says_so_not_that_trainingjob_has_a_bug(tmp_path, tiny_model, cache, error, code):
    """Rank 1 fails in its 3rd forward pass (bad input, or a bug of ours); rank 0, in that step's
    collective, loses its peer (gloo: Connection closed by peer). Rank 0 says it lost contact and
    points at rank 1's error; before, it printed 'internal error ... This is a bug in trainingjob'
    under rank 1's real error, as if it were a second one."""
    runner = runner_with_cache(tmp_path, tiny_model, cache)
    fault = {"target": "runner.models.pixart_sigma:Objective.__call__", "nth": 3, "rank": 1, "raise": error}
    env = quiet_env(runner, PYTHONPATH=str(KILLPOINTS), TJ_KILL_AT=json.dumps(fault))
    [proc] = run_pods([(runner.args(*SMALL, "spec.training.maxSteps=50", "spec.hardware.gpusPerNode=2",
                                    stage="train"), env)], timeout=240)
    assert proc.returncode == code, proc.stdout[-4000:]
    assert "KILLPOINT runner.models.pixart_sigma:Objective.__call__ call 3" in proc.stdout  # rank 1's own error
    rank0 = [line for line in proc.stdout.splitlines() if line.startswith("[rank0]")]
    said = "\n".join(rank0)
    assert "error: rank 0: lost contact with another worker of this run (" in said, proc.stdout[-4000:]
    assert "that worker's own error above says what went wrong" in said
    assert "This is a bug in trainingjob" not in said and "internal error" not in said, said[-3000:]
