"""The runner's environment variables that are a user's to set, and how a process tells that it runs
in a pod of a TrainingJob. Standard library only: the CLI, the launcher, the metrics and the
Kubernetes builders (which refuse the runner's other TRAININGJOB_* names in spec.kubernetes.env)
all read the names here.
"""
from __future__ import annotations

from typing import Mapping

DEBUG_ENV = "TRAININGJOB_DEBUG"  # set: an internal error prints its traceback
HOLD_ENV = "TRAININGJOB_METRICS_HOLD_S"  # seconds a diverged run keeps /metrics up (runner/observe/metrics.py)
# The TRAININGJOB_* variables a user may set, on a pod too; the others are the runner's own.
USER_ENV = (DEBUG_ENV, HOLD_ENV)

# Set on every pod of a TrainingJob's Indexed Jobs (runner/k8s/build.own_env, from the Job
# controller's completion-index annotation): the node's index, and the sign of such a pod.
COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"


def in_job_pod(env: Mapping[str, str]) -> bool:
    """Whether this process runs in a pod of a TrainingJob's Jobs (pure). Not any pod: one that
    runs `trainingjob` by hand (a notebook's) has KUBERNETES_SERVICE_HOST too, but no Job
    controller retries it, no predecessor pod holds its output folder and no Prometheus scrapes it."""
    return COMPLETION_INDEX_ENV in env
