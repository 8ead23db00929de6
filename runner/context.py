"""The run context passed to every stage (no global state)."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from runner.plan import JobPaths, job_paths
from runner.spec import TrainingJob


@dataclass
class RunContext:
    job: TrainingJob
    paths: JobPaths
    device: str
    rank: int = 0
    world_size: int = 1
    metrics: Any = None
    started: float = field(default_factory=time.time)

    @property
    def spec(self):
        return self.job.spec

    @property
    def spec_dict(self) -> dict[str, Any]:
        return self.job.spec.to_dict()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def log(self, message: str) -> None:
        if self.is_main:
            print(f"[{self.job.name}] {message}", file=sys.stdout, flush=True)


def make_context(job: TrainingJob, device: str, rank: int = 0, world_size: int = 1, metrics: Any = None) -> RunContext:
    return RunContext(job=job, paths=job_paths(job.spec.to_dict()), device=device, rank=rank,
                      world_size=world_size, metrics=metrics)
