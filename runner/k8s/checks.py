"""What a valid TrainingJob still needs to run on Kubernetes (refused: the operator's
InvalidSpec, `render`'s exit 2) and what it probably gets wrong there (warned), checked on the
spec as the pods will see it (`build.pod_document`)."""
from __future__ import annotations

import posixpath
from typing import Any

from runner.k8s.build import SPEC_DIR, pod_document
from runner.spec.localpaths import mount_paths
from runner.launch import images
from runner.spec.semantics import dataset_dirs, written_dirs


def kubernetes_problems(doc: dict[str, Any]) -> list[str]:
    """What a valid spec still needs to run on Kubernetes (the operator reports these as
    InvalidSpec; render refuses them)."""
    spec = doc["spec"]
    k8s, problems = spec.get("kubernetes", {}), []
    volumes = k8s.get("volumes", {})
    for volume, holds in (("cache", "the cache stage's output, read by the train stage"),
                          ("output", "checkpoints, so a retried pod resumes instead of starting over")):
        if "claimName" not in volumes.get(volume, {}):
            problems.append(f"spec.kubernetes.volumes.{volume}.claimName: required on Kubernetes: a "
                            f"PersistentVolumeClaim for {holds} (ReadWriteMany when hardware.nodes > 1)")
    problems += _mount_problems(volumes)
    if not problems:  # with a volume missing, what lands off the volumes is that volume's problem
        problems += _off_volume_problems(doc)
    if not k8s.get("image"):
        try:
            images.flavour(spec["hardware"]["accelerator"])
        except images.NoImageError as e:
            problems.append(f"{e}; or set spec.kubernetes.image")
    problems += _gpu_count_problems(spec)
    secrets = k8s.get("secrets", {})
    if spec["output"]["hub"].get("push") and "hubToken" not in secrets:
        problems.append("spec.kubernetes.secrets.hubToken: required when output.hub.push is true on Kubernetes "
                        "(the Secret key holding the Hub token; tokens never go into a spec)")
    if spec["tracking"]["wandb"].get("enabled") and "wandbApiKey" not in secrets:
        problems.append("spec.kubernetes.secrets.wandbApiKey: required when tracking.wandb.enabled is true on "
                        "Kubernetes (the Secret key holding the W&B API key)")
    return problems


def _gpu_count_problems(spec: dict[str, Any]) -> list[str]:
    """A GPU count set in spec.kubernetes.resources that is not hardware.gpusPerNode: the pods get
    gpusPerNode (one process per GPU), so the other number would be silently dropped."""
    flavour = images.FLAVOURS.get(spec["hardware"]["accelerator"])
    if flavour is None or not flavour.gpu_resource:
        return []
    wanted, gpus = spec.get("kubernetes", {}).get("resources", {}), spec["hardware"]["gpusPerNode"]
    return [f"spec.kubernetes.resources.{side}.{flavour.gpu_resource}: {wanted[side][flavour.gpu_resource]} is not "
            f"spec.hardware.gpusPerNode ({gpus}); each pod gets gpusPerNode GPUs (one process each): set "
            f"gpusPerNode, and leave {flavour.gpu_resource} out of resources"
            for side in ("requests", "limits")
            if flavour.gpu_resource in wanted.get(side, {}) and str(wanted[side][flavour.gpu_resource]) != str(gpus)]


# Paths every pod mounts itself (_volumes), and what is there.
RESERVED_MOUNTS = {SPEC_DIR: "the spec's ConfigMap (read-only)", "/dev/shm": "shared memory", "/tmp": "scratch space"}


def _off_volumes(spec: dict[str, Any], dirs) -> tuple[list[tuple[str, str]], list[str]]:
    """(field path, path) of `dirs` (from the pods' spec) that no volume's mount covers, and the mounts."""
    mounts = [path for _, path in mount_paths(spec.get("kubernetes", {}).get("volumes", {}))]
    off = []
    for where, path in dirs:
        path = posixpath.normpath(path) if path.startswith("/") else path
        if not any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts):
            off.append((where, path))
    return off, mounts


def _off_volume_problems(doc: dict[str, Any]) -> list[str]:
    """Caches and outputs the pods would write off every volume (an absolute path no mount
    covers): lost with the pod, and never seen by the other stage's pod."""
    spec = pod_document(doc)["spec"]
    off, mounts = _off_volumes(spec, written_dirs(spec))
    return [f"{where}: {path} is on no volume in the pod (mounted: {', '.join(mounts) or 'none'}), so what is "
            "written there is lost with the pod and the other stage never sees it; use a relative path (it goes on "
            "the cache or output volume) or one under a volume's mountPath" for where, path in off]


def kubernetes_warnings(doc: dict[str, Any]) -> list[str]:
    """What a runnable spec probably gets wrong on Kubernetes: a local dataset folder on no
    volume of the pod (with no `data` volume, a relative path stays relative to the image's
    working directory). Only an image built with the photos inside has it, so this warns
    rather than refuses."""
    spec = pod_document(doc)["spec"]
    off, mounts = _off_volumes(spec, dataset_dirs(spec))
    return [f"{where}: {path} is on no volume in the pod (mounted: {', '.join(mounts) or 'none'}), so the pods "
            "find it only if the image holds it; add a `data` volume (spec.kubernetes.volumes.data, a "
            "PersistentVolumeClaim with the images) and give the path relative to it, or one under a "
            "volume's mountPath" for where, path in off]


def _mount_problems(volumes: dict[str, Any]) -> list[str]:
    """Two mounts at one path (the API server refuses the pod), or a volume inside the spec's
    read-only ConfigMap (the kubelet cannot create its mount point)."""
    taken, problems = dict(RESERVED_MOUNTS), []
    for name, path in mount_paths(volumes):
        where = f"spec.kubernetes.volumes.{name}.mountPath"
        if path in taken or path.startswith(SPEC_DIR + "/"):
            what = taken.get(path, RESERVED_MOUNTS[SPEC_DIR])
            problems.append(f"{where}: {path} is where {what} is mounted; give each volume a path of its own, "
                            f"e.g. /{name}")
        taken.setdefault(path, f"volume {name}")
    return problems
