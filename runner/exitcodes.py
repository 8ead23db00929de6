"""Exit codes of `trainingjob`, the same from the CLI, the stages, the launcher, the container
and the smoke run (README: Commands). Kubernetes reads them too: a pod that exits
EXIT_INVALID fails its Job at once, since retrying cannot fix its input."""
from __future__ import annotations

import signal

EXIT_OK = 0
# Our bug, or a machine limit (disk full, GPU out of memory); the message says what to change.
EXIT_INTERNAL = 1
# Bad input: the spec, its data, the model reference, the hardware, a stale cache.
EXIT_INVALID = 2


def killed_by(signum: int) -> int:
    """The shell's code for a process ended by a signal: 128 + N."""
    return 128 + int(signum)


EXIT_INTERRUPTED = killed_by(signal.SIGINT)  # 130: Ctrl-C
EXIT_STOPPED = killed_by(signal.SIGTERM)  # 143: stopped by SIGTERM after writing a checkpoint
