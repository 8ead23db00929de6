"""The labels the runner puts on every object it makes, and the one test of whether a label key is
the runner's: the operator, the Service and the PodMonitor find a job's objects and pods by them,
so neither spec.kubernetes.podMetadata nor --pod-monitor-label may set one (checks.py, options.py).
"""
from __future__ import annotations

from runner.spec import schema as schema_mod

PART_OF = "trainingjob-runner"
APP_PREFIX = "app.kubernetes.io/"


def label_job() -> str:
    return f"{schema_mod.api_group()}/job"


def label_stage() -> str:
    return f"{schema_mod.api_group()}/stage"


def labels(job: str, component: str, managed_by: str, stage: str | None = None) -> dict[str, str]:
    out = {f"{APP_PREFIX}name": "trainingjob", f"{APP_PREFIX}instance": job, f"{APP_PREFIX}component": component,
           f"{APP_PREFIX}part-of": PART_OF, f"{APP_PREFIX}managed-by": managed_by, label_job(): job}
    if stage:
        out[label_stage()] = stage
    return out


def own_label(key: str) -> bool:
    """A label key that is the runner's: one `labels` sets, or any under the runner's API group
    (a later version may add one there). Other app.kubernetes.io/ keys (`version`) are yours."""
    return key in labels("", "", "", "cache") or key.startswith(f"{schema_mod.api_group()}/")
