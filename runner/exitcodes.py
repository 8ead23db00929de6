"""Exit codes of `trainingjob`, the same from the CLI, the stages, the launcher, the container
and the smoke run (README: Commands). Kubernetes reads them too: a pod that exits
EXIT_INVALID or EXIT_NOT_RETRYABLE fails its Job at once (podFailurePolicy), and torchrun
restarts no worker group after either (runner/launch/agent.py): a retry of the same spec
would only fail the same way again."""
from __future__ import annotations

import contextlib
import signal
from typing import Iterator

EXIT_OK = 0
# Our bug, a crash, or a machine limit a retry may get past (disk full, the Hub still failing);
# the message says what to change.
EXIT_INTERNAL = 1
# Bad input: the spec, its data, the model reference, the hardware, a stale cache.
EXIT_INVALID = 2
# The spec ran, and failed in a way its rerun would repeat: training diverged (the loss or the
# weights became non-finite; a resume takes the same checkpoint and data, so it would very likely
# diverge again: bit-identically on the CPU, while GPU kernels are not deterministic), or the GPU
# ran out of memory (the same batch shapes very likely meet the same limit; fragmentation can play
# a part too). The message says which spec fields to change.
EXIT_NOT_RETRYABLE = 3
# Codes after which neither torchrun nor the Job starts the same work again.
NOT_RETRIED = (EXIT_INVALID, EXIT_NOT_RETRYABLE)


def killed_by(signum: int) -> int:
    """The shell's code for a process ended by a signal: 128 + N."""
    return 128 + int(signum)


EXIT_INTERRUPTED = killed_by(signal.SIGINT)  # 130: Ctrl-C
EXIT_STOPPED = killed_by(signal.SIGTERM)  # 143: stopped by SIGTERM after writing a checkpoint


class StageStopped(KeyboardInterrupt):
    """SIGTERM in a stage with nothing to checkpoint (the cache stage: each entry is written whole,
    so what is written is kept and a rerun goes on from there). An interrupt, so `finally`
    blocks record how the stage ended; the CLI exits EXIT_STOPPED."""


@contextlib.contextmanager
def sigterm_stops() -> Iterator[None]:
    """Within: SIGTERM raises StageStopped, where Python's default would end the process at once
    (no record of the stage, no message)."""
    def stop(signum, _frame):
        raise StageStopped(signal.Signals(signum).name)

    try:
        before = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
