"""The run context passed to every stage (no global state)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from runner.observe.metrics import Metrics
from runner.spec.node import TrainingJob
from runner.spec.plan import JobPaths, job_paths


@dataclass
class RunContext:
    job: TrainingJob
    paths: JobPaths
    device: str
    rank: int = 0
    world_size: int = 1
    metrics: Metrics | None = None  # None: one that counts but serves nothing

    def __post_init__(self) -> None:
        if self.metrics is None:
            self.metrics = Metrics(self.job.name)

    @property
    def spec(self):
        return self.job.spec

    @cached_property
    def spec_dict(self) -> dict[str, Any]:
        """Plain-dict view of the frozen spec (built once; treat it as read-only)."""
        return self.job.spec.to_dict()

    @cached_property
    def family(self):
        """The model family the spec trains (runner.models.family.ModelFamily), imported on first use."""
        from runner.models.registry import family

        return family(self.job.spec.model.family)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def log(self, message: str) -> None:
        if self.is_main:
            print(f"[{self.job.name}] {message}", file=sys.stdout, flush=True)


def make_context(job: TrainingJob, device: str, rank: int = 0, world_size: int = 1, metrics: Metrics | None = None) -> RunContext:
    return RunContext(job=job, paths=job_paths(job.spec.to_dict()), device=device, rank=rank,
                      world_size=world_size, metrics=metrics)
