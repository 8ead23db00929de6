"""Prometheus metrics for every stage, on `spec.metrics.port` (0 disables). One registry per
run, passed in the RunContext; nothing global."""
from __future__ import annotations

from typing import Any


class Metrics:
    def __init__(self, job_name: str, port: int):
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        labels = ["job"]
        self.job = job_name
        self.stage = Gauge("trainingjob_stage", "1 for the stage now running", labels + ["stage"], registry=self.registry)
        self.cache_items = Gauge("trainingjob_cache_items", "Cache entries by kind and whether they were encoded or reused",
                                 labels + ["kind", "result"], registry=self.registry)
        self.step = Gauge("trainingjob_train_step", "Optimizer steps done", labels, registry=self.registry)
        self.total_steps = Gauge("trainingjob_train_total_steps", "Optimizer steps planned", labels, registry=self.registry)
        self.loss = Gauge("trainingjob_train_loss", "Latest training loss (mean over processes)", labels, registry=self.registry)
        self.samples_per_second = Gauge("trainingjob_train_samples_per_second", "Training throughput", labels,
                                        registry=self.registry)
        self.checkpoints = Counter("trainingjob_checkpoints", "Checkpoints written", labels, registry=self.registry)
        self.server = None
        if port:
            from prometheus_client import start_http_server

            self.server, _ = start_http_server(port, registry=self.registry)

    def set_stage(self, stage: str) -> None:
        for s in ("cache", "train"):
            self.stage.labels(self.job, s).set(1 if s == stage else 0)

    def cache_report(self, report: Any) -> None:
        for kind, total, encoded in (("text", report.text_total, report.text_encoded),
                                     ("latent", report.latents_total, report.latents_encoded)):
            self.cache_items.labels(self.job, kind, "encoded").set(encoded)
            self.cache_items.labels(self.job, kind, "reused").set(total - encoded)

    def train_progress(self, step: int, total: int, loss: float, samples_per_second: float) -> None:
        self.step.labels(self.job).set(step)
        self.total_steps.labels(self.job).set(total)
        self.loss.labels(self.job).set(loss)
        self.samples_per_second.labels(self.job).set(samples_per_second)

    def checkpoint_saved(self) -> None:
        self.checkpoints.labels(self.job).inc()

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class NoMetrics:
    """Same interface, does nothing (port 0, or a non-main process)."""

    def __getattr__(self, name: str):
        return lambda *a, **k: None
