"""Decode ahead: the next batches' images load in worker threads while the GPU encodes.

PIL's decode and resize and numpy's conversion release the GIL, so threads scale over the
cores; with `depth` batches in flight the VAE never waits on JPEG decoding.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Executor
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def decode_workers() -> int:
    """Threads for image decoding: the cores this process may use, at most 16."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(16, cores))


def prefetched(batches: Iterable[Sequence[T]], load: Callable[[T], R], pool: Executor,
               depth: int = 2) -> Iterator[tuple[Sequence[T], list[R]]]:
    """Yield (batch, [load(item) ...]) in order, with up to `depth` further batches already
    submitted to `pool`."""
    source = iter(batches)
    pending: deque = deque()

    def submit() -> None:
        batch = next(source, None)
        if batch is not None:
            pending.append((batch, [pool.submit(load, item) for item in batch]))

    for _ in range(depth + 1):
        submit()
    while pending:
        batch, futures = pending.popleft()
        submit()
        yield batch, [f.result() for f in futures]
