"""What spec.kubernetes adds to every pod of both stages, in the Kubernetes API's own shapes: the
trainer's environment (env, envFrom), pull Secrets, scheduling (affinity, priorityClassName,
runtimeClassName) and the pods' labels and annotations. Pure: a spec in, pod-spec fields out.

The runner's own variables and labels stay the runner's. What may not be overridden is listed
here; runner/k8s/checks.py refuses a spec that tries (it needs the builder to know the rest).
"""
from __future__ import annotations

import copy
from typing import Any

from runner.envvars import USER_ENV
from runner.k8s.labels import own_label
from runner.spec.podrules import pod_options

# The runner's defaults for the pod's environment: a user's variable of the same name replaces
# the runner's (in place, so later variables' $(HF_HOME) still resolve).
OVERRIDABLE_ENV = ("PYTHONUNBUFFERED", "HOME", "HF_HOME")
# Set by torchrun for each worker: the runner tells a worker from its launcher by LOCAL_RANK
# (runner/launch/run.py) and finds the rendezvous by MASTER_ADDR/MASTER_PORT.
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
# The GPUs a pod was given, set by the device plugin and the container runtime (NVIDIA's, AMD's):
# another value hides GPUs the pod holds or names ones it does not.
GPU_ENV = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")
# Whole families of names, and whose they are (a TRAININGJOB_* name of USER_ENV is a user's knob).
RESERVED_ENV_PREFIXES = {
    "TRAININGJOB_": "TRAININGJOB_* variables are the runner's own (" + " and ".join(USER_ENV) + " are yours to set)",
    "TORCHELASTIC_": "TORCHELASTIC_* variables are torchrun's agent's",
    "PET_": "torchrun reads PET_<OPTION> for each option the runner leaves off its command line (PET_NNODES=2 "
            "would make a one-node job wait for a second node)",
}
# Pod labels and annotations the Job controller sets (a Job's selector matches its pods by them).
JOB_CONTROLLER_PREFIX = "batch.kubernetes.io/"
JOB_CONTROLLER_LABELS = ("controller-uid", "job-name")


def reserved_env(name: str) -> str | None:
    """Why a variable is not the user's to set (the runner's, torchrun's or the GPU device
    plugin's), or None; not those the runner only defaults (OVERRIDABLE_ENV) or sets on the pod
    itself (checks.py knows those from the builder)."""
    if name in TORCHRUN_ENV:
        return "torchrun sets it for each worker, and the runner tells its workers and their rendezvous by it"
    if name in GPU_ENV:
        return "the GPU device plugin sets it to the GPUs the pod was given; another value hides them or names others"
    for prefix, why in RESERVED_ENV_PREFIXES.items():
        if name.startswith(prefix) and name not in USER_ENV:
            return why
    return None


def prefix_may_set_reserved(prefix: str) -> bool:
    """Whether a variable named `prefix` + some key could be one `reserved_env` refuses: what an
    envFrom source with that prefix may bring in, unseen until the pod starts."""
    exact = TORCHRUN_ENV + GPU_ENV
    return (any(name.startswith(prefix) for name in exact)
            or any(p.startswith(prefix) or prefix.startswith(p) for p in RESERVED_ENV_PREFIXES))


def merge_env(own: list[dict[str, Any]], spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The runner's variables, then spec.kubernetes.env; a user's variable of OVERRIDABLE_ENV takes
    the place of the runner's default."""
    user = {var["name"]: copy.deepcopy(var) for var in pod_options(spec).get("env") or []}
    out = [user.pop(var["name"]) if var["name"] in OVERRIDABLE_ENV and var["name"] in user else var for var in own]
    return out + list(user.values())


def container_fields(spec: dict[str, Any]) -> dict[str, Any]:
    """Fields of the trainer container: envFrom. (Kubernetes gives `env`, the runner's included,
    precedence over envFrom, so a ConfigMap cannot override the runner's variables.)"""
    env_from = pod_options(spec).get("envFrom")
    return {"envFrom": copy.deepcopy(env_from)} if env_from else {}


def pod_fields(spec: dict[str, Any]) -> dict[str, Any]:
    """Fields of the pod spec: imagePullSecrets, affinity, priorityClassName, runtimeClassName."""
    k8s, out = pod_options(spec), {}
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
    given = pod_options(spec).get("podMetadata") or {}
    meta = dict(own)
    if given.get("labels"):
        ours = own.get("labels", {})
        meta["labels"] = {**ours, **{k: v for k, v in given["labels"].items() if k not in ours}}
    annotations = {**own.get("annotations", {}), **(given.get("annotations") or {})}
    if annotations:
        meta["annotations"] = annotations
    return meta


def reserved_label(key: str) -> str | None:
    """Why a pod label key is not the user's to set, or None."""
    if own_label(key):
        return "the runner sets it (the Service, the PodMonitor and the operator find the pods by it)"
    if key.startswith(JOB_CONTROLLER_PREFIX) or key in JOB_CONTROLLER_LABELS:
        return "the Job controller sets it (the Job's selector finds its pods by it)"
    return None


def reserved_annotation(key: str) -> str | None:
    if key.startswith(JOB_CONTROLLER_PREFIX):
        return "the Job controller sets it (the pods read their completion index from it)"
    return None
