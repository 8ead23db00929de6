"""What the bench's experiment scripts share: a median kernel time and a JSON-lines row writer."""
from __future__ import annotations

import json
import os
import statistics
import time
from typing import Callable

import torch


def median_ms(fn: Callable[[], object], *, cuda: bool, warm: int = 2, iters: int = 8) -> float:
    """Median milliseconds of one call of `fn`: CUDA events around each call on a GPU (the
    host does not wait for kernels), the wall clock elsewhere."""
    for _ in range(warm):
        fn()
    if cuda:
        torch.cuda.synchronize()
    ms = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            ms.append(start.elapsed_time(end))
        else:
            t = time.time()
            fn()
            ms.append((time.time() - t) * 1e3)
    return statistics.median(ms)


class Rows:
    """Append each row to DIR/NAME as a JSON line (flushed, so a killed run keeps its rows) and
    print it with the seconds since the script started."""

    def __init__(self, folder: str, name: str):
        os.makedirs(folder, exist_ok=True)
        self.file = open(os.path.join(folder, name), "a")
        self.t0 = time.time()

    def log(self, *parts) -> None:
        print(f"[{time.time() - self.t0:6.1f}s]", *parts, flush=True)

    def __call__(self, **rec) -> None:
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        self.log(json.dumps({k: v for k, v in rec.items() if k != "losses"}))
