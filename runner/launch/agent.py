"""torchrun's agent with one change: a worker group that failed in a way a restart would repeat
(bad input, a divergence, running out of GPU memory) is not restarted.

torchrun restarts the whole worker group after any worker failure, up to --max-restarts (3 in
a pod: torchrun.POD_MAX_RESTARTS), and has no per-exit-code policy. A restart helps after a
crash (a worker killed, a CUDA error, a peer pod replaced after an eviction). After exit 2 (bad
input: a checkpoint that cannot be resumed, a dataset file gone since the cache stage, ...) or
exit 3 (training diverged, the GPU ran out of memory: the restarted group resumes from the same
checkpoint with the same data and the same batch shapes, so it would very likely fail the same
way, bit-identically on the CPU; GPU kernels are not deterministic and an OOM may come from
fragmentation, but a retry rarely gets further) each restart loads the model again, very
likely only to meet the same error; and the survivors that the
agent kills on the way exit 1 or by a signal, so the pod could end with a crash's code, which
the Job's podFailurePolicy retries instead of failing the Job at once.

How: torch's `launch_agent` (torch.distributed.launcher.api) builds a `LocalElasticAgent` by
that module-global name. For the one call, `restarts_only_after_crashes` swaps in a subclass
whose `_monitor_workers` sets the restarts left to 0 when a failed worker exited EXIT_INVALID or
EXIT_NOT_RETRYABLE (torchrun.restart_helps).
The rest is torch's own: it stops the other workers, raises ChildFailedError with every exit
code, and closes the rendezvous, so the agents of other nodes fail their next rendezvous
instead of waiting for this one (their pods exit too, after the Job has already failed on
this pod's exit 2 or 3).

Why not a marker file that the launcher watches for (a worker writes it, the launcher stops
torchrun): the launcher *is* torchrun's agent, in this process, and the exit code already
says what a marker would. A watcher would race the agent's own monitor (every 0.5 s): a
restart could begin before it looked, and a SIGTERM from it leaves the rendezvous open.

`_monitor_workers` and `_remaining_restarts` are private to torch (unchanged since
torchelastic came into torch 1.9). A torch whose agent has no `_monitor_workers` gets its own
agent, restarts and all, with a warning; one that renamed `_remaining_restarts` would restart
without a word. Either way test_the_agent_restarts_after_crashes_only in
tests/e2e/test_torchrun.py fails on that torch.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import torch.distributed.launcher.api as launcher_api
from torch.distributed.elastic.agent.server.api import RunResult, WorkerGroup
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent

from runner.launch.torchrun import restart_helps


class RestartsOnlyAfterCrashes(LocalElasticAgent):
    """LocalElasticAgent that spends no restart on a worker group a restart would fail again."""

    def _monitor_workers(self, worker_group: WorkerGroup) -> RunResult:
        result = super()._monitor_workers(worker_group)
        if result.is_failed() and not restart_helps(f.exitcode for f in result.failures.values()):
            # torch's loop reads this right after: with none left it stops the group and
            # returns the failure instead of restarting
            self._remaining_restarts = 0
        return result


@contextlib.contextmanager
def restarts_only_after_crashes() -> Iterator[None]:
    """Within: torch's launcher builds RestartsOnlyAfterCrashes instead of its LocalElasticAgent."""
    torch_agent = launcher_api.LocalElasticAgent
    if not hasattr(torch_agent, "_monitor_workers"):
        print("warning: this torch's elastic agent has no _monitor_workers, so after a worker's exit 2 (bad input) "
              "or 3 (diverged, out of GPU memory) torchrun restarts the workers anyway, up to --max-restarts times",
              file=sys.stderr, flush=True)
        yield
        return
    launcher_api.LocalElasticAgent = RestartsOnlyAfterCrashes
    try:
        yield
    finally:
        launcher_api.LocalElasticAgent = torch_agent
