"""The operator's own Prometheus metrics (served by `trainingjob operator --metrics-port`).

Standard library only when imported (prometheus_client inside), like the rest of runner/k8s.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

STATES = ("Pending", "Caching", "Training", "Succeeded", "Failed", "Suspended")
# A resync round lists the TrainingJobs and syncs the unfinished ones; it should stay well under
# progress.PROGRESS_INTERVAL_S (15 s). The buckets reach far beyond, where a round is in trouble.
RESYNC_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60, 120, 300)


@dataclass
class OperatorMetrics:
    """Reconciles, errors, TrainingJobs by state, and how long each resync round takes.

    `states` is written from kopf's handler threads (observe_state, after each sync) and from the
    event loop's resync task (observe_all, after each listing): one lock keeps a publish from
    iterating it while another thread changes it."""

    registry: Any = None
    states: dict[tuple[str, str], str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.reconciles = Counter("trainingjob_operator_reconciles", "Reconciles run, by trigger and result",
                                  ["trigger", "result"], registry=self.registry)
        self.errors = Counter("trainingjob_operator_errors", "Reconcile errors, by kind", ["kind"],
                              registry=self.registry)
        self.jobs = Gauge("trainingjob_operator_trainingjobs", "TrainingJobs by state", ["state"],
                          registry=self.registry)
        self.resync_seconds = Histogram(
            "trainingjob_operator_resync_duration_seconds",
            "Time one resync round took: listing the TrainingJobs and syncing each unfinished one",
            buckets=RESYNC_BUCKETS_S, registry=self.registry)

    def observe_state(self, key: tuple[str, str], state: str | None) -> None:
        with self._lock:
            if state is None:
                self.states.pop(key, None)
            else:
                self.states[key] = state
            self._publish()

    def observe_all(self, states: dict[tuple[str, str], str | None]) -> None:
        """The states of every TrainingJob there is (a full listing): any other is gone."""
        with self._lock:
            self.states = {key: state for key, state in states.items() if state is not None}
            self._publish()

    def _publish(self) -> None:  # under self._lock
        for s in STATES:
            self.jobs.labels(s).set(sum(1 for v in self.states.values() if v == s))
