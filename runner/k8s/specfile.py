"""What the job's ConfigMap holds: the spec the pods read (`/etc/trainingjob/trainingjob.yaml`) and
the spec the job started with, which the operator builds every later child from.

- Paths are placed on the volumes (pod_document): what a relative path names on this machine is
  what it names on the volume that holds that kind of thing in the pod.
- The operator's copy (started_text) is that placed spec whole, every default filled in: an
  operator upgraded mid-run builds the train Job from the values the cache Job was built from,
  not from its own version's defaults.
- The pods' copy (config_text) holds only what the trainer reads, so that an older trainer image
  (spec.kubernetes.image) does not meet fields it has never heard of. Of spec.kubernetes that is
  TRAINER_KUBERNETES (the volumes, which tell it what lies only in the pod); the rest shapes the
  pod itself (env, affinity, labels, pull Secrets...). Defaults are the trainer's to apply: the
  values that equal this version's schema defaults are left out. The API server has already
  filled the CRD's defaults into a TrainingJob, so "what the user wrote" is not known to the
  operator; what is left out is what the trainer's own defaults give back. The sections the
  pods themselves are built from (PINNED) are kept whole: the image, GPU count, node count and
  metrics port of the pod must be what the trainer inside it reads, whatever its version's
  defaults.
"""
from __future__ import annotations

import copy
import hashlib
import json
import posixpath
from typing import Any

import yaml

from runner.spec.localpaths import RESUME_KEYWORDS
from runner.spec.names import LOCAL_PATH_PREFIXES
from runner.spec.schema import strip_defaults

# spec sections the pod template is built from (image, GPUs, nodes, the metrics port).
PINNED = ("hardware", "metrics")
# What the trainer reads of spec.kubernetes (runner/spec/localpaths.mount_paths: a path under a
# volume's mountPath exists only in the pod); the other fields are the pod's, not the trainer's.
TRAINER_KUBERNETES = ("volumes",)


def _under(mount: str, path: str) -> str:
    return path if path.startswith("/") else f"{mount.rstrip('/')}/{path}"


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _place_read(path: str, spec: dict[str, Any], mounts: dict[str, str], fallback: str) -> str:
    """A relative path the run reads (a checkpoint, a model folder) on the volume that holds its
    local counterpart: under the (relative) output.dir on the output volume, under the cacheDir on
    the cache volume, under a local dataset folder on the data volume; any other on the
    `fallback` volume when the pod mounts it (as output.dir and dataset paths go: the working
    directory here is the volume's root there). Absolute paths, `~` and paths that climb out of
    the working directory are kept: checks.py warns when they are on no volume."""
    if path.startswith(("/", "~")):
        return path
    norm = posixpath.normpath(path)
    if norm == ".." or norm.startswith("../"):
        return path
    local = [(spec["output"]["dir"], "output"), (spec["cacheDir"], "cache")]
    local += [(ds["path"], "data") for ds in spec["datasets"] if ds.get("path") and ds.get("type", "local") == "local"]
    for folder, volume in local:
        if not folder.startswith(("/", "~")) and _within(norm, posixpath.normpath(folder)) and volume in mounts:
            return _under(mounts[volume], norm)
    return _under(mounts[fallback], norm) if fallback in mounts else path


def pod_document(doc: dict[str, Any]) -> dict[str, Any]:
    """The spec with its relative paths placed on the volumes: cache folders on the cache
    volume, the output dir on the output volume, local dataset folders on the data volume, a
    checkpoint to resume from and a local model folder where their local counterparts are
    (_place_read). Absolute paths are kept: they already name a place inside the pod.
    Idempotent: the pods' spec placed again is itself."""
    out = copy.deepcopy(doc)
    out["metadata"] = {k: v for k, v in doc["metadata"].items() if k in ("name", "namespace")}
    out.pop("status", None)
    spec, given = out["spec"], doc["spec"]
    mounts = {v: m.get("mountPath", f"/{v}") for v, m in spec.get("kubernetes", {}).get("volumes", {}).items()}
    placed = {**mounts, "cache": mounts.get("cache", "/cache"), "output": mounts.get("output", "/output")}
    resume = given["training"]["resume"]
    if isinstance(resume, str) and resume not in RESUME_KEYWORDS:
        spec["training"]["resume"] = _place_read(resume, given, placed, "output")
    pretrained = given["model"].get("pretrained")
    if isinstance(pretrained, str) and pretrained.startswith(LOCAL_PATH_PREFIXES):
        spec["model"]["pretrained"] = _place_read(pretrained, given, placed, "data")
    spec["cacheDir"] = _under(placed["cache"], spec["cacheDir"])
    if spec.get("textEmbeds", {}).get("cacheDir"):
        spec["textEmbeds"]["cacheDir"] = _under(placed["cache"], spec["textEmbeds"]["cacheDir"])
    spec["output"]["dir"] = _under(placed["output"], spec["output"]["dir"])
    for ds in spec["datasets"]:
        if ds.get("path") and "data" in mounts:
            ds["path"] = _under(mounts["data"], ds["path"])
        if ds.get("vaeCacheDir"):
            ds["vaeCacheDir"] = _under(placed["cache"], ds["vaeCacheDir"])
    return out


def started_text(doc: dict[str, Any]) -> str:
    """The operator's copy: the placed spec, every default as `doc` has it (reconcile.started_document)."""
    return yaml.safe_dump(pod_document(doc), sort_keys=False, allow_unicode=True)


def config_text(doc: dict[str, Any]) -> str:
    """The file the pods read: the placed spec with only TRAINER_KUBERNETES of spec.kubernetes,
    without the values that equal their schema defaults, but for the PINNED sections."""
    full = pod_document(doc)
    kubernetes = full["spec"].get("kubernetes")
    if kubernetes is not None:
        full["spec"]["kubernetes"] = {k: v for k, v in kubernetes.items() if k in TRAINER_KUBERNETES}
    lean = strip_defaults(full)
    lean.setdefault("spec", {})
    for section in PINNED:
        if section in full["spec"]:
            lean["spec"][section] = full["spec"][section]
    return yaml.safe_dump(lean, sort_keys=False, allow_unicode=True)


def digest(data: dict[str, str]) -> str:
    """The short content hash of a ConfigMap's data, which names a content-named ConfigMap (10 hex
    digits, as Kustomize's configMapGenerator suffix is 10 characters)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]
