"""Worker processes through torchrun (torch.distributed.run), on a laptop and in pods alike.

`trainingjob run` stays the one entry point: with `gpusPerNode > 1` or `nodes > 1` it becomes
a torchrun agent (in this process, through torch's launcher API) that starts one worker per
GPU, each running `python -m runner run <effective spec> --stage <stage>`.

- One node: a c10d rendezvous on a free local port, as `--standalone` (no fixed 29500).
- Several nodes (pods of an Indexed Job): node rank from JOB_COMPLETION_INDEX, the c10d
  rendezvous at MASTER_ADDR:MASTER_PORT, which is pod 0's stable hostname through the headless
  Service; pod 0 hosts the rendezvous store (`is_host`), so no hostname matching is needed.
- The cache stage never spans pods: its shards are independent, so each pod runs its own
  workers standalone and the shard index comes from the node rank (see `cache_shard`).
- Worker output is tee'd to files and to the console, each line prefixed with the global
  rank (`[rank1]: ...`); the files go to `<output.dir>/logs/torchrun/`, so they outlive a pod.
- SIGTERM to this process is forwarded to every worker by torchrun's agent, which then waits
  `SHUTDOWN_TIMEOUT_S` for them to checkpoint before it kills them.
- A worker group is restarted after a crash (in a pod), never after a worker's exit 2 or 3:
  bad input, a divergence or running out of GPU memory fails the same way every time
  (runner/launch/agent.py).

The builders here are pure (argv, topology, exit codes); only `launch` touches torch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from runner.envvars import COMPLETION_INDEX_ENV, in_job_pod
from runner.exitcodes import EXIT_INTERNAL, EXIT_INVALID, EXIT_NOT_RETRYABLE, EXIT_OK, EXIT_STOPPED, NOT_RETRIED, killed_by

# A pod's agent restarts its worker group this often (a worker crash, or a peer pod replaced
# after eviction: the survivors re-rendezvous and resume from the checkpoint) before the pod
# fails and the Job's own retries take over; never after bad input, a divergence or running out
# of GPU memory (see `restart_helps`).
# Locally a restart would only repeat the failure, and it would undo a stop: workers that
# exit 143 after a SIGTERM checkpoint must stay down.
POD_MAX_RESTARTS = 3
LOCAL_MAX_RESTARTS = 0
# Time a worker gets after SIGTERM to write its checkpoint. The pods' terminationGracePeriod
# (runner.k8s.build.GRACE_PERIOD_S) is longer, so the kubelet's SIGKILL never comes first.
SHUTDOWN_TIMEOUT_S = 540
# How long a pod waits for the others at the rendezvous (image pulls, scheduling of N nodes).
JOIN_TIMEOUT_S = 1800
RENDEZVOUS_PORT = 29500
LOG_PREFIX = "[rank${rank}]: "
TEE_ALL = "3"  # stdout and stderr of every worker


@dataclass(frozen=True)
class Topology:
    """Where this agent sits: workers on this node, nodes in the group, and how they meet."""

    nproc: int
    nnodes: int = 1
    node_rank: int = 0
    endpoint: str = ""    # host:port of the rendezvous; "" = standalone on a free local port
    local_addr: str = ""  # this node's address as peers reach it ("" = torch's own lookup)

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes


def node_rank(env: Mapping[str, str]) -> int:
    """This node's index: the Indexed Job's completion index in a pod, else 0."""
    return int(env.get(COMPLETION_INDEX_ENV) or env.get("NODE_RANK") or 0)


def topology(hardware: Mapping[str, Any], stage: str, env: Mapping[str, str]) -> Topology:
    """The launch for `stage` given spec.hardware and this process's environment (pure)."""
    gpus, nodes = int(hardware["gpusPerNode"]), int(hardware["nodes"])
    if stage == "cache" or nodes == 1:
        return Topology(nproc=gpus, nnodes=1, node_rank=node_rank(env) if stage == "cache" else 0)
    addr = env.get("MASTER_ADDR")
    if not addr:
        raise LaunchError(f"spec.hardware.nodes is {nodes}: set MASTER_ADDR (and MASTER_PORT) to node 0's address, "
                          "and JOB_COMPLETION_INDEX to this node's index (the operator and `trainingjob render` do)")
    port = env.get("MASTER_PORT") or str(RENDEZVOUS_PORT)
    return Topology(nproc=gpus, nnodes=nodes, node_rank=node_rank(env), endpoint=f"{addr}:{port}",
                    local_addr=env.get("POD_IP", ""))


class LaunchError(Exception):
    """The environment cannot start this launch (a spec or set-up error, exit 2)."""


def torchrun_argv(topo: Topology, worker_args: list[str], *, run_id: str, log_dir: str, role: str,
                  max_restarts: int, shutdown_timeout: bool = True) -> list[str]:
    """The torchrun command line (without the leading `torchrun`) for this node (pure).
    `worker_args` follow `python -m`: the module and its arguments. `shutdown_timeout`: whether
    this torch's torchrun has `--shutdown-timeout` (older ones refuse the flag)."""
    argv = [f"--nproc-per-node={topo.nproc}", f"--max-restarts={max_restarts}", f"--role={role}",
            f"--log-dir={log_dir}", f"--tee={TEE_ALL}", "--monitor-interval=0.5"]
    if shutdown_timeout:
        argv.append(f"--shutdown-timeout={SHUTDOWN_TIMEOUT_S}")
    if not topo.endpoint:
        # What `torchrun --standalone` does (the launcher API only sees the parsed config):
        # a c10d store on a free local port, so parallel runs never collide on 29500.
        argv += ["--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0", f"--rdzv-id={run_id}"]
    else:
        conf = f"is_host={'true' if topo.node_rank == 0 else 'false'},join_timeout={JOIN_TIMEOUT_S}," \
               f"read_timeout={JOIN_TIMEOUT_S}"
        argv += [f"--nnodes={topo.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={topo.endpoint}",
                 f"--rdzv-id={run_id}", f"--rdzv-conf={conf}"]
        if topo.local_addr:
            argv.append(f"--local-addr={topo.local_addr}")
    return argv + ["--module", *worker_args]


def exit_code(exitcodes: list[int]) -> int:
    """One exit code for the failed workers, in the CLI's terms: a signal becomes 128+N; a
    SIGTERM stop (143) wins over the SIGTERMs torchrun then sends to the slower workers. Bad
    input (2) wins over everything, then a failure a retry would repeat (3: diverged, out of GPU
    memory): the others' failures follow from it (a peer gone mid collective exits 1, one the
    agent stops exits by its signal), and 2 and 3 are the codes that tell the Job a retry
    cannot help."""
    codes = [killed_by(-c) if c < 0 else c for c in exitcodes if c != 0]
    if not codes:
        return EXIT_OK
    for final in NOT_RETRIED:
        if final in codes:
            return final
    return EXIT_STOPPED if all(c == EXIT_STOPPED for c in codes) else next(c for c in codes if c != EXIT_STOPPED)


def restart_helps(exitcodes: Iterable[int]) -> bool:
    """Whether restarting a failed worker group can end otherwise (pure): not when a worker
    exited 2 (bad input) or 3 (diverged, out of GPU memory), which every restarted worker would
    very likely meet again: it resumes from the same checkpoint with the same data (bit-identically
    on the CPU; GPU kernels are not deterministic, and an OOM may come from fragmentation)."""
    return not set(NOT_RETRIED) & set(exitcodes)


def not_restarted_message(job_name: str, stage: str, code: int, ranks: Iterable[int], max_restarts: int) -> str:
    """What the launcher says when workers exited 2 or 3 (pure); their own errors are above it."""
    ranks = sorted(ranks)
    which = f"rank{'s' * (len(ranks) > 1)} {', '.join(map(str, ranks))}"
    what = "bad input" if code == EXIT_INVALID else "a failure that a retry would repeat"
    not_again = (f"; the workers were not restarted, since a restart would meet the same error (the "
                 f"{max_restarts} restarts are for crashes)" if max_restarts else "")
    return f"[{job_name}] {stage} stage: {what}, see the error of {which} above (exit {code}){not_again}"


def cache_shard(env: Mapping[str, str], nodes: int) -> tuple[int, int]:
    """(index, count) of the cache shard a worker encodes: node-major over every worker of
    every node, so the Indexed cache Job's pods split the work without talking to each other."""
    per_node = int(env.get("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", "1")))
    local = int(env.get("LOCAL_RANK", env.get("RANK", "0")))
    return node_rank(env) * per_node + local, nodes * per_node


def run_id(env: Mapping[str, str], job_name: str) -> str:
    """Shared by every node of one run: the Job's uid in a pod (set by the operator through the
    downward API), else the job's name."""
    return env.get("TRAININGJOB_RUN_ID") or job_name


def has_shutdown_timeout() -> bool:
    """Whether the installed torchrun takes `--shutdown-timeout` (torch 2.13 does; torch 2.11's
    agent has no such option and gives workers a fixed 30 s after SIGTERM)."""
    from torch.distributed.launcher.api import LaunchConfig

    return "shutdown_timeout" in {f.name for f in dataclasses.fields(LaunchConfig)}


def launch(spec_file: Path, *, job_name: str, hardware: Mapping[str, Any], stage: str, output_dir: Path) -> int:
    """Run this node's workers for `stage` through torchrun; returns the CLI exit code."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousClosedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, parse_args

    from runner.launch.agent import restarts_only_after_crashes

    env = dict(os.environ)
    try:
        topo = topology(hardware, stage, env)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INVALID
    in_pod = in_job_pod(env)
    timeout = has_shutdown_timeout()
    if not timeout:
        import torch

        print(f"[{job_name}] warning: torch {torch.__version__}'s torchrun has no --shutdown-timeout, so after a "
              f"SIGTERM the workers get its fixed 30 s to write their checkpoint, not {SHUTDOWN_TIMEOUT_S} s; "
              "the torch in constraints.txt has it", file=sys.stderr, flush=True)
    argv = torchrun_argv(topo, ["runner", "run", str(spec_file), "--stage", stage], run_id=run_id(env, job_name),
                         log_dir=str(output_dir / "logs" / "torchrun" / stage),
                         role="cache" if stage == "cache" else "trainer",
                         max_restarts=POD_MAX_RESTARTS if in_pod else LOCAL_MAX_RESTARTS, shutdown_timeout=timeout)
    what = "training processes" if stage == "train" else "cache workers"
    print(f"[{job_name}] launching {topo.nproc} {what} on node {topo.node_rank} of {topo.nnodes}: "
          f"torchrun {' '.join(argv)}", flush=True)
    config, entrypoint, args = config_from_args(parse_args(argv))
    config.log_line_prefix_template = LOG_PREFIX
    # torchrun sets its own SIGTERM/SIGINT/SIGHUP/SIGQUIT handlers (raising SignalException) and
    # leaves them: restored after it, so a signal between two stages meets run_job's, not torch's.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)}
    try:
        with restarts_only_after_crashes():
            elastic_launch(config, entrypoint)(*args)
    except ChildFailedError as e:
        code = exit_code([f.exitcode for f in e.failures.values()])
        if code in NOT_RETRIED:
            print(not_restarted_message(job_name, stage, code, [r for r, f in e.failures.items() if f.exitcode == code],
                                        config.max_restarts), file=sys.stderr, flush=True)
        return code
    except SignalException as e:
        # torchrun has already passed the signal on and waited for the workers to checkpoint.
        return killed_by(e.sigval)
    except RendezvousClosedError:
        # An agent that gives up closes the run's rendezvous; the others meet the closed one when
        # they restart after their workers lost that node's. Not our bug, and nothing to retry here.
        print(f"error: [{job_name}] {stage} stage: another node ended this run and closed its rendezvous "
              f"({config.rdzv_endpoint}, run id {config.run_id}); its log says why (bad input if it exited "
              f"{EXIT_INVALID}, a divergence or running out of GPU memory if {EXIT_NOT_RETRYABLE}, else its "
              "workers' crashes). This node stops too", file=sys.stderr, flush=True)
        return EXIT_INTERNAL
    finally:
        for sig, handler in handlers.items():
            if handler is not None:  # None: one not set from Python, which cannot be put back
                with contextlib.suppress(ValueError):  # not the main thread
                    signal.signal(sig, handler)
    return EXIT_OK
