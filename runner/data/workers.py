"""How many worker processes may decode images: the CPUs this process may really use.

In a container the affinity mask often lists every core of the node while the cgroup's CPU
quota (`cpu.max`, what a Kubernetes CPU limit becomes) allows a few; sixteen decoders under a
quota of four only queue for the CPU and hold memory.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
MAX_DECODE_WORKERS = 16


def quota_cpus(cpu_max: str) -> float | None:
    """CPUs allowed by a cgroup v2 `cpu.max` line ("max 100000" or "400000 100000"), None if unlimited."""
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def usable_cpus(affinity: int, cpu_max: str | None) -> int:
    """The smaller of the affinity mask and the cgroup quota (rounded up), at least 1."""
    quota = quota_cpus(cpu_max) if cpu_max else None
    return max(1, min(affinity, math.ceil(quota)) if quota else affinity)


def decode_workers() -> int:
    """Image decoding processes for the cache stage: this process's part of the usable CPUs
    (torchrun's LOCAL_WORLD_SIZE cache workers on the node share them), at most 16."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = os.cpu_count() or 1
    try:
        cpu_max = CGROUP_CPU_MAX.read_text()
    except OSError:
        cpu_max = None
    sharing = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    return max(1, min(MAX_DECODE_WORKERS, usable_cpus(affinity, cpu_max) // sharing))
