"""Progress: tqdm bars on a TTY, plain periodic log lines otherwise (CI, Kubernetes logs)."""
from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    def __init__(self, total: int, desc: str, unit: str = "it", enabled: bool = True, every_s: float = 10.0,
                 initial: int = 0):
        """`initial`: work already done before this process (a resumed run); rates and ETA
        count only what this process does."""
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.count = self._initial = initial
        self.postfix: dict[str, Any] = {}
        self._start = self._last = time.time()
        self._every = every_s
        self._bar = None
        self._printed_final = False
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, initial=initial)

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.count += n
        self.postfix.update(postfix)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(self.postfix, refresh=False)
            return
        now = time.time()
        finished = self.count >= self.total
        if (n and (now - self._last >= self._every or finished)) or (finished and not self._printed_final):
            self._printed_final = finished
            self._last = now
            rate = (self.count - self._initial) / max(now - self._start, 1e-9)
            eta = f"{(self.total - self.count) / rate:.0f}s" if rate > 0 else "?"
            extra = " ".join(f"{k}={_fmt(v)}" for k, v in self.postfix.items())
            print(f"{self.desc}: {self.count}/{self.total} {self.unit} ({rate:.2f} {self.unit}/s, ETA {eta}) {extra}".rstrip(),
                  flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class Laps:
    """Wall-clock laps of one piece of work, said in one line: "loaded 3.1s, encoded 24.7s, ..."."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self._parts: list[str] = []

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self._parts.append(f"{name} {now - self._last:.1f}s")
        self._last = now

    def __str__(self) -> str:
        return ", ".join(self._parts)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
