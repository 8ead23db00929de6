"""Cache-stage progress by kind, updated as entries are encoded, including that of cache workers.

With several GPUs the cache stage runs one worker process per GPU, each encoding its shard,
while the launching process serves /metrics (one endpoint per job, see names.py). Workers
have no port of their own: each writes its counts to `<dir>/rank-<R>.json` (atomically, at
most twice a second) and the launching process sums those files at scrape time. Once the
launching process plans a kind itself (the final pass), its own counts are the answer.
"""
from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from runner.observe import names as N

KINDS = ("text", "latent")
WRITE_EVERY_S = 0.5


def _blank() -> dict[str, float]:
    return {"total": 0, "done": 0, "encoded": 0, "rate": 0.0}


class CacheProgress:
    """A prometheus_client collector (collect() runs at each scrape) plus the calls that feed it."""

    def __init__(self, job: str, *, shard_file: Path | None = None, shard_dir: Path | None = None):
        self.job = job
        self._shard_file, self._shard_dir = shard_file, shard_dir
        self._lock = threading.Lock()
        self._own = {k: _blank() for k in KINDS}
        self._planned: set[str] = set()
        self._started: dict[str, float] = {}
        self._bytes = 0
        self._written_at = 0.0
        # Files older than this process belong to an earlier run and are not counted.
        self._since = time.time()

    # ---- fed by the cache stage ----
    def planned(self, kind: str, total: int, todo: int) -> None:
        with self._lock:
            own = self._own[_kind(kind)]
            own.update(total=total, done=total - todo, encoded=0, rate=0.0)
            self._planned.add(kind)
            self._started[kind] = time.time()
        self._share(force=True)

    def done(self, kind: str, n: int) -> None:
        with self._lock:
            own = self._own[_kind(kind)]
            own["done"] += n
            own["encoded"] += n
            own["rate"] = own["encoded"] / max(time.time() - self._started.get(kind, time.time()), 1e-9)
            finished = own["done"] >= own["total"]
        self._share(force=finished)

    def written(self, nbytes: int) -> None:
        with self._lock:
            self._bytes += nbytes

    def summary(self, kind: str, total: int, encoded: int) -> None:
        """Final counts of the whole pass (entries that failed to decode are no longer counted)."""
        with self._lock:
            self._own[_kind(kind)].update(total=total, done=total)
            self._planned.add(kind)
        self._share(force=True)

    def close(self) -> None:
        """A worker shares its last counts; the launching process, whose workers are done by
        now, removes their files so nothing of this hand-over is left in the cache folder."""
        self._share(force=True)
        if self._shard_dir is not None and self._shard_dir.is_dir():
            for path in self._shard_dir.glob("rank-*.json"):
                path.unlink(missing_ok=True)
            for folder in (self._shard_dir, self._shard_dir.parent):  # .progress/<job>, then .progress
                with contextlib.suppress(OSError):  # not empty: another job's (or node's) files
                    folder.rmdir()

    # ---- read at scrape time ----
    def merged(self) -> tuple[dict[str, dict[str, float]], int]:
        """Per kind: this process's counts once it planned that kind, else the sum over workers."""
        with self._lock:
            own = {k: dict(v) for k, v in self._own.items()}
            planned, nbytes = set(self._planned), self._bytes
        shards = self._read_shards()
        out = {}
        for kind in KINDS:
            if kind in planned or not shards:
                out[kind] = own[kind]
            else:
                out[kind] = {f: sum(s["kinds"].get(kind, {}).get(f, 0) for s in shards) for f in _blank()}
        return out, nbytes + sum(int(s.get("bytes", 0)) for s in shards)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        kinds, nbytes = self.merged()
        families = {
            N.CACHE_ITEMS: (GaugeMetricFamily, "total"),
            N.CACHE_ITEMS_DONE: (GaugeMetricFamily, "done"),
            N.CACHE_ITEMS_ENCODED: (CounterMetricFamily, "encoded"),
            N.CACHE_ENCODE_RATE: (GaugeMetricFamily, "rate"),
        }
        for name, (family_type, field) in families.items():
            family = family_type(name.removesuffix("_total"), N.BY_NAME[name].help, labels=[N.JOB_LABEL, "kind"])
            for kind in KINDS:
                family.add_metric([self.job, kind], kinds[kind][field])
            yield family
        written = CounterMetricFamily(N.CACHE_WRITTEN_BYTES.removesuffix("_total"), N.BY_NAME[N.CACHE_WRITTEN_BYTES].help,
                                      labels=[N.JOB_LABEL])
        written.add_metric([self.job], nbytes)
        yield written

    def describe(self) -> Iterator[Any]:
        return self.collect()

    # ---- the files between workers and the launching process ----
    def _share(self, force: bool) -> None:
        if self._shard_file is None or (not force and time.time() - self._written_at < WRITE_EVERY_S):
            return
        from runner.files import atomic_write_json

        with self._lock:
            payload = {"kinds": {k: dict(v) for k, v in self._own.items() if k in self._planned}, "bytes": self._bytes}
        self._written_at = time.time()
        atomic_write_json(self._shard_file, payload)

    def _read_shards(self) -> list[dict[str, Any]]:
        if self._shard_dir is None or not self._shard_dir.is_dir():
            return []
        out = []
        for path in sorted(self._shard_dir.glob("rank-*.json")):
            try:
                if path.stat().st_mtime >= self._since:
                    out.append(json.loads(path.read_text()))
            except (OSError, ValueError):  # replaced or half-gone between listing and reading: next scrape
                continue
        return out


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"cache kind {kind!r} is not one of {KINDS}")
    return kind
