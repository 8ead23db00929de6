"""What spec.kubernetes adds to every pod of both stages, in the Kubernetes API's own shapes: the
trainer's environment (env, envFrom), pull Secrets, scheduling (affinity, priorityClassName,
runtimeClassName) and the pods' labels and annotations. Pure: a spec in, pod-spec fields out.

The runner's own variables and labels stay the runner's. What may not be overridden is listed
here; runner/k8s/checks.py refuses a spec that tries (it needs the builder to know the rest).
"""
from __future__ import annotations

import copy
from typing import Any

# The runner's defaults for the pod's environment: a user's variable of the same name replaces
# the runner's (in place, so later variables' $(HF_HOME) still resolve).
OVERRIDABLE_ENV = ("PYTHONUNBUFFERED", "HOME", "HF_HOME")
# Set by torchrun for each worker: the runner tells a worker from its launcher by LOCAL_RANK
# (runner/launch/run.py) and finds the rendezvous by MASTER_ADDR/MASTER_PORT.
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
RESERVED_ENV_PREFIXES = ("TRAININGJOB_", "TORCHELASTIC_")
ALLOWED_RESERVED_ENV = ("TRAININGJOB_DEBUG",)  # runner.cli.DEBUG_ENV, a user's knob: tracebacks in the log
# Pod labels and annotations the Job controller sets (a Job's selector matches its pods by them).
JOB_CONTROLLER_PREFIX = "batch.kubernetes.io/"
JOB_CONTROLLER_LABELS = ("controller-uid", "job-name")


def _kubernetes(spec: dict[str, Any]) -> dict[str, Any]:
    return spec.get("kubernetes") or {}


def reserved_env(name: str) -> str | None:
    """Why a variable is the runner's (or torchrun's) alone, or None; not those it only defaults."""
    if name in TORCHRUN_ENV:
        return "torchrun sets it for each worker, and the runner tells its workers and their rendezvous by it"
    if name.startswith(RESERVED_ENV_PREFIXES) and name not in ALLOWED_RESERVED_ENV:
        return f"{name.split('_')[0]}_* variables are the runner's own"
    return None


def merge_env(own: list[dict[str, Any]], spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The runner's variables, then spec.kubernetes.env; a user's variable of OVERRIDABLE_ENV takes
    the place of the runner's default."""
    user = {var["name"]: copy.deepcopy(var) for var in _kubernetes(spec).get("env") or []}
    out = [user.pop(var["name"]) if var["name"] in OVERRIDABLE_ENV and var["name"] in user else var for var in own]
    return out + list(user.values())


def container_fields(spec: dict[str, Any]) -> dict[str, Any]:
    """Fields of the trainer container: envFrom. (Kubernetes gives `env`, the runner's included,
    precedence over envFrom, so a ConfigMap cannot override the runner's variables.)"""
    env_from = _kubernetes(spec).get("envFrom")
    return {"envFrom": copy.deepcopy(env_from)} if env_from else {}


def pod_fields(spec: dict[str, Any]) -> dict[str, Any]:
    """Fields of the pod spec: imagePullSecrets, affinity, priorityClassName, runtimeClassName."""
    k8s, out = _kubernetes(spec), {}
    if k8s.get("imagePullSecrets"):
        out["imagePullSecrets"] = [{"name": s["name"]} for s in k8s["imagePullSecrets"]]
    if k8s.get("affinity"):
        out["affinity"] = copy.deepcopy(k8s["affinity"])
    for key in ("priorityClassName", "runtimeClassName"):
        if k8s.get(key):
            out[key] = k8s[key]
    return out


def pod_metadata(own: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """The pod template's metadata: the runner's labels over the user's (checks.py refuses a
    clash), the user's annotations over the runner's (`prometheus.io/scrape: "false"` opts out)."""
    given = _kubernetes(spec).get("podMetadata") or {}
    meta = dict(own)
    if given.get("labels"):
        ours = own.get("labels", {})
        meta["labels"] = {**ours, **{k: v for k, v in given["labels"].items() if k not in ours}}
    annotations = {**own.get("annotations", {}), **(given.get("annotations") or {})}
    if annotations:
        meta["annotations"] = annotations
    return meta


def reserved_label(key: str, own: dict[str, str]) -> str | None:
    """Why a pod label key is not the user's to set, or None."""
    if key in own:
        return "the runner sets it (the Service, the PodMonitor and the operator find the pods by it)"
    if key.startswith(JOB_CONTROLLER_PREFIX) or key in JOB_CONTROLLER_LABELS:
        return "the Job controller sets it (the Job's selector finds its pods by it)"
    return None


def reserved_annotation(key: str) -> str | None:
    if key.startswith(JOB_CONTROLLER_PREFIX):
        return "the Job controller sets it (the pods read their completion index from it)"
    return None
