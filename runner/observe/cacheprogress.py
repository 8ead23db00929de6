"""Cache-stage progress by kind, updated as entries are encoded, including that of cache workers.

With several GPUs the cache stage runs one worker process per GPU, each encoding its shard,
while the launching process serves /metrics (one endpoint per node, see names.py). Workers
have no port of their own: each writes its counts, of its own shard only, to
`<dir>/rank-<R>.json` (atomically, at most twice a second), where `<dir>` is its node's own
folder, and the launching process adds them up at scrape time. It remembers the last counts
of every file it has read, so a file removed, or a switch to its own final pass, never makes
a counter fall (rate() would read that as a restart). Once the launching process plans a kind
itself (the final pass), its own counts are that kind's totals; the counters keep what the
workers encoded. The same files carry each worker's phase and last progress, so this collector
also serves the stall alert's two series (PHASE, LAST_PROGRESS) for every stage; one scrape
reads the files once.
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
        self._encoded_total = {k: 0 for k in KINDS}  # this process's, never reset (a counter)
        self._planned: set[str] = set()
        self._seen: dict[str, dict[str, Any]] = {}  # worker file -> its last counts read
        self._started: dict[str, float] = {}
        self._bytes = 0
        self._written_at = 0.0
        # Files older than this process belong to an earlier run and are not counted.
        self._since = time.time()
        self._activity = ("starting", self._since)  # (phase, unix time of the last progress): see activity()

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
            self._encoded_total[_kind(kind)] += n
            own["rate"] = own["encoded"] / max(time.time() - self._started.get(kind, time.time()), 1e-9)
            finished = own["done"] >= own["total"]
        self._share(force=finished)

    def touch(self, phase: str) -> None:
        """Progress now, in `phase` (names.PHASES); shared at once when the phase changes."""
        with self._lock:
            first_or_changed = phase != self._activity[0] or not self._written_at
            self._activity = (phase, time.time())
        self._share(force=first_or_changed)

    def written(self, nbytes: int) -> None:
        with self._lock:
            self._bytes += nbytes

    def summary(self, kind: str, total: int, encoded: int) -> None:
        """Final counts of the whole pass (entries that failed to decode are no longer counted).
        Not in a cache worker: its report counts the whole dataset, while what it shares must be
        its shard (planned/done counted that), or the launching process would add up N whole
        datasets."""
        if self._shard_file is not None:
            return
        with self._lock:
            self._own[_kind(kind)].update(total=total, done=total)
            self._planned.add(kind)
        self._share(force=True)

    def close(self) -> None:
        """A worker shares its last counts; the launching process, whose workers are done by
        now, removes their files (its node's folder only: other nodes' workers may still be
        writing theirs) so nothing of this hand-over is left in the cache folder."""
        self._share(force=True)
        if self._shard_dir is not None and self._shard_dir.is_dir():
            for path in self._shard_dir.glob("rank-*.json"):
                path.unlink(missing_ok=True)
            # .progress/<job>/node-<N>, .progress/<job>, then .progress
            for folder in (self._shard_dir, self._shard_dir.parent, self._shard_dir.parent.parent):
                with contextlib.suppress(OSError):  # not empty: another job's (or node's) files
                    folder.rmdir()

    # ---- read at scrape time ----
    def merged(self) -> tuple[dict[str, dict[str, float]], int]:
        """Per kind: this process's counts once it planned that kind, else the workers' (see
        merge), as of the workers' files last read (collect)."""
        with self._lock:
            own = {k: {**v, "encoded": self._encoded_total[k]} for k, v in self._own.items()}
            planned, nbytes, workers = set(self._planned), self._bytes, list(self._seen.values())
        return merge(own, planned, nbytes, workers)

    def activity(self) -> tuple[str, float]:
        """(phase, last progress) for the stall alert, this process's and its workers' (see
        latest_activity), as of the workers' files last read (collect)."""
        with self._lock:
            own, planned = self._activity, bool(self._planned)
            workers = [(w["phase"], w["progressed"]) for w in self._seen.values() if "progressed" in w]
        return latest_activity(own, planned, workers)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        self._remember(self._read_shards())  # once per scrape, for every series below
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
        phase, progressed = self.activity()
        phases = GaugeMetricFamily(N.PHASE, N.BY_NAME[N.PHASE].help, labels=[N.JOB_LABEL, "phase"])
        for p in N.PHASES:
            phases.add_metric([self.job, p], float(p == phase))
        yield phases
        last = GaugeMetricFamily(N.LAST_PROGRESS, N.BY_NAME[N.LAST_PROGRESS].help, labels=[N.JOB_LABEL])
        last.add_metric([self.job], progressed)
        yield last

    def describe(self) -> Iterator[Any]:
        return self.collect()

    # ---- the files between workers and the launching process ----
    def _share(self, force: bool) -> None:
        if self._shard_file is None or (not force and time.time() - self._written_at < WRITE_EVERY_S):
            return
        from runner.files import atomic_write_json

        with self._lock:
            payload = {"kinds": {k: {**v, "encoded": self._encoded_total[k]} for k, v in self._own.items()
                                 if k in self._planned}, "bytes": self._bytes,
                       "phase": self._activity[0], "progressed": self._activity[1]}
        self._written_at = time.time()
        # not fsynced: a progress note read by the launching process, rewritten twice a second;
        # an fsync each time would wait for the disk behind the cache entries being written
        atomic_write_json(self._shard_file, payload, durable=False)

    def _read_shards(self) -> dict[str, dict[str, Any]]:
        if self._shard_dir is None or not self._shard_dir.is_dir():
            return {}
        out = {}
        for path in sorted(self._shard_dir.glob("rank-*.json")):
            try:
                if path.stat().st_mtime >= self._since:
                    out[path.name] = json.loads(path.read_text())
            except (OSError, ValueError):  # replaced or half-gone between listing and reading: next scrape
                continue
        return out

    def _remember(self, shards: dict[str, dict[str, Any]]) -> None:
        with self._lock:
            self._seen.update(shards)


def merge(own: dict[str, dict[str, float]], planned: set[str], own_bytes: int,
          workers: list[dict[str, Any]]) -> tuple[dict[str, dict[str, float]], int]:
    """What the endpoint shows (pure). `own`: this process's counts by kind, `encoded` being its
    running total; `workers`: the last counts read from each worker's file, present or since
    removed. The gauges of a kind this process planned are its own; of the others, the sum
    over its workers (each counts its own shard). The counters (`encoded`, the bytes) add this
    process's to every worker's, so they only grow."""
    out = {}
    for kind in KINDS:
        theirs = [w["kinds"][kind] for w in workers if kind in w.get("kinds", {})]
        row = dict(own[kind]) if kind in planned or not theirs else \
            {f: sum(t.get(f, 0) for t in theirs) for f in _blank()}
        row["encoded"] = own[kind]["encoded"] + sum(t.get("encoded", 0) for t in theirs)
        out[kind] = row
    return out, own_bytes + sum(int(w.get("bytes", 0)) for w in workers)


def latest_activity(own: tuple[str, float], planned: bool,
                    workers: list[tuple[str, float]]) -> tuple[str, float]:
    """(phase, last progress) the endpoint shows (pure). A launching process waiting for its
    workers (it has planned nothing itself yet) shows theirs: the latest progress of any, and
    the phase of one still in a long phase (loading its encoder) before `running`, so the
    slowest worker decides what the alert allows. Otherwise its own."""
    if planned or not workers:
        return own
    slow = [phase for phase, _ in workers if phase != "running"]
    return (slow[0] if slow else "running"), max(own[1], *(at for _, at in workers))


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"cache kind {kind!r} is not one of {KINDS}")
    return kind
