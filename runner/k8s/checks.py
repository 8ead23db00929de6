"""What a valid TrainingJob still needs to run on Kubernetes (refused: the operator's
InvalidSpec, `render`'s exit 2) and what it probably gets wrong there (warned), checked on the
spec as the pods will see it (`build.pod_document`)."""
from __future__ import annotations

import posixpath
from typing import Any

from runner.envvars import USER_ENV
from runner.k8s import podoptions
from runner.k8s.build import (STAGES, SPEC_DIR, joins_device_groups, own_env, pod_document, pod_memory, quantity,
                              secret_env, shm_size)
from runner.spec.localpaths import RESUME_KEYWORDS, mount_paths
from runner.launch import images
from runner.spec import schema as schema_mod
from runner.spec.names import LOCAL_PATH_PREFIXES
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
    problems += _env_problems(doc) + _pod_metadata_problems(doc)
    problems += _shm_problems(spec)
    secrets = k8s.get("secrets", {})
    if spec["output"]["hub"].get("push") and "hubToken" not in secrets:
        problems.append("spec.kubernetes.secrets.hubToken: required when output.hub.push is true on Kubernetes "
                        "(the Secret key holding the Hub token; tokens never go into a spec)")
    if spec["tracking"]["wandb"].get("enabled") and "wandbApiKey" not in secrets:
        problems.append("spec.kubernetes.secrets.wandbApiKey: required when tracking.wandb.enabled is true on "
                        "Kubernetes (the Secret key holding the W&B API key)")
    return problems


def _env_problems(doc: dict[str, Any]) -> list[str]:
    """spec.kubernetes.env setting a variable the runner sets itself (the rendezvous, the node
    index, the run id, a Secret's token) or torchrun's: the pods would not find each other, or a
    launcher would take itself for a worker. HOME, HF_HOME and PYTHONUNBUFFERED are only defaults."""
    spec = doc["spec"]
    filled = secret_env(spec)
    own = {var["name"] for stage in STAGES for var in own_env(doc, stage)} - set(podoptions.OVERRIDABLE_ENV)
    problems = []
    for i, var in enumerate(spec.get("kubernetes", {}).get("env") or []):
        name = var.get("name")
        if name in filled:
            why = f"spec.kubernetes.secrets.{filled[name]} fills it from its Secret"
        elif name in own:
            why = "the runner sets it on every pod (the pods find each other and their run by it)"
        else:
            why = podoptions.reserved_env(name)
        if why:
            problems.append(f"spec.kubernetes.env[{i}].name: {name} is not yours to set: {why}; remove it (of the "
                            f"runner's variables only {', '.join(podoptions.OVERRIDABLE_ENV + USER_ENV)} may be set)")
    return problems


def _pod_metadata_problems(doc: dict[str, Any]) -> list[str]:
    """Pod labels and annotations that the runner or the Job controller set, and find the pods by."""
    given = doc["spec"].get("kubernetes", {}).get("podMetadata") or {}
    found = [("labels", key, podoptions.reserved_label(key)) for key in given.get("labels") or {}]
    found += [("annotations", key, podoptions.reserved_annotation(key)) for key in given.get("annotations") or {}]
    return [f"spec.kubernetes.podMetadata.{kind}: {key} is not yours to set: {why}; remove it"
            for kind, key, why in found if why]


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


def _shm_problems(spec: dict[str, Any]) -> list[str]:
    """A /dev/shm that cannot be what the spec says: empty (the kubelet reads a sizeLimit of 0 as
    no bound at all), or not below the memory limit, which it counts against (the kubelet caps the
    tmpfs at the limit, and a pod that filled it would be OOM-killed with nothing left to run on)."""
    shm = spec.get("kubernetes", {}).get("shmSize")
    size = None if shm is None else quantity(shm)
    if size is None:
        return []  # unset (shm_size then fits it to the pod) or malformed (the schema's pattern says so)
    if size < 1:
        return [f"spec.kubernetes.shmSize: {shm} is no size (a sizeLimit of 0 would leave /dev/shm unbounded); give "
                "the room the data loaders and NCCL need, e.g. 1Gi (`trainingjob explain spec.kubernetes.shmSize`)"]
    limit, limit_bytes = pod_memory(spec, "limits")
    if limit_bytes is not None and size >= limit_bytes:
        return [f"spec.kubernetes.shmSize: {shm} does not fit in spec.kubernetes.resources.limits.memory ({limit}): "
                "/dev/shm is memory and counts against that limit, which would leave the processes nothing; lower "
                "shmSize below the limit (to what the data loaders and NCCL need: `trainingjob explain "
                "spec.kubernetes.shmSize`) or raise limits.memory"]
    return []


def _memory_warnings(spec: dict[str, Any]) -> list[str]:
    """A GPU job whose pods request no memory: BestEffort QoS, the first evicted under memory
    pressure (a LimitRange may still give them a default, which the spec cannot see). And a
    request smaller than /dev/shm, which a pod that fills it exceeds. Only warned: what a pod
    needs is the user's to say, and a cluster may default it."""
    shm = shm_size(spec)
    request, request_bytes = pod_memory(spec, "requests")
    if request is None:  # the API server takes a container's limit as its request
        request, request_bytes = pod_memory(spec, "limits")
    flavour = images.FLAVOURS.get(spec["hardware"]["accelerator"])
    if request is None and flavour is not None and flavour.gpu_resource:
        least = f" (at least the /dev/shm size, {shm} (spec.kubernetes.shmSize), plus the processes' own)"
        return ["spec.kubernetes.resources.requests.memory: not set on a GPU job, so its pods request no memory "
                "(QoS BestEffort, unless the namespace's LimitRange sets a default) and are the first evicted when "
                "their node runs short of memory, losing the work since the last checkpoint; set it to what a pod "
                f"uses{least}"]
    shm_bytes = quantity(shm)
    if request_bytes is not None and shm_bytes is not None and request_bytes < shm_bytes:
        return [f"spec.kubernetes.shmSize: {shm} is more than the pods' memory request ({request}, "
                "spec.kubernetes.resources.requests.memory): /dev/shm is memory, so a pod that fills it uses more "
                "than it requested and is among the first evicted under memory pressure; raise requests.memory or "
                "lower shmSize"]
    return []


def _device_group_warnings(spec: dict[str, Any]) -> list[str]:
    """AMD pods with no `render` group: on nodes with the usual 0660 root:render device nodes the
    non-root pods cannot open /dev/kfd and see no GPU. Only warned: nodes whose udev rules make
    the devices world-accessible need no group, and the GID is the host's to tell."""
    if not joins_device_groups(spec):
        return []
    if spec.get("kubernetes", {}).get("deviceGroups", {}).get("render") is not None:
        return []
    return [f"spec.kubernetes.deviceGroups.render: not set; the pods run as the non-root user {images.IMAGE_UID}, which "
            "opens /dev/kfd and /dev/dri/renderD* only as a member of the node's `render` group (a GID each host "
            "picks), so on nodes with the usual 0660 device mode they see no GPU; set it to what `stat -c %g "
            "/dev/kfd` prints on a GPU node (not needed where the nodes' udev rules make the devices mode 0666)"]


def _unused_device_group_warnings(spec: dict[str, Any]) -> list[str]:
    """deviceGroups set on a job whose pods join no device groups (only `rocm` does): likely a spec
    copied from an AMD one, or an accelerator set wrong. The schema fills video's default, so only
    `render`, or a `video` other than the default, says the user set it."""
    if joins_device_groups(spec):
        return []
    accelerator = spec["hardware"]["accelerator"]
    groups = spec.get("kubernetes", {}).get("deviceGroups", {})
    video_default = schema_mod.node_at(["spec", "kubernetes", "deviceGroups", "video"], indexed=False).get("default")
    set_ = [f"{name}: {groups[name]}" for name in ("video", "render")
            if groups.get(name) is not None and (name != "video" or groups[name] != video_default)]
    if not set_:
        return []
    return [f"spec.kubernetes.deviceGroups: only used with hardware.accelerator: rocm; this job's accelerator is "
            f"{accelerator}, so its pods join no device groups and {', '.join(set_)} has no effect (NVIDIA's device "
            "nodes need none); remove deviceGroups, or set hardware.accelerator: rocm if the nodes have AMD GPUs"]


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


def warning_events(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(Event reason, warning) for what a runnable spec probably gets wrong on Kubernetes; the
    operator posts each as a Warning Event when the cache Job starts, `render` prints them."""
    spec = doc["spec"]
    return ([("DatasetNotOnVolume", w) for w in _dataset_warnings(doc)]
            + [(reason, w) for reason, w in _read_path_warnings(doc)]
            + [("LowMemoryRequest", w) for w in _memory_warnings(spec)]
            + [("NoRenderGroup", w) for w in _device_group_warnings(spec)]
            + [("UnusedDeviceGroups", w) for w in _unused_device_group_warnings(spec)]
            + [("EnvFromUnchecked", w) for w in _env_from_warnings(spec)])


def kubernetes_warnings(doc: dict[str, Any]) -> list[str]:
    """The warnings of `warning_events`, as `field.path: message` lines."""
    return [w for _, w in warning_events(doc)]


def _env_from_warnings(spec: dict[str, Any]) -> list[str]:
    """An envFrom source whose keys could set a variable that spec.kubernetes.env may not (torchrun's
    PET_* and RANK..., the GPU device plugin's CUDA_VISIBLE_DEVICES..., TRAININGJOB_*): its keys are
    read only when a pod starts, so they cannot be checked here. Kubernetes gives `env` precedence,
    so the variables the runner sets on the pod are safe; the others are not. A prefix that no such
    name starts with (`prefix: X_`) makes the source safe. Only warned: most ConfigMaps set none."""
    reserved = ", ".join([*(f"{p}*" for p in podoptions.RESERVED_ENV_PREFIXES), *podoptions.TORCHRUN_ENV,
                          *podoptions.GPU_ENV])
    found = []
    for i, source in enumerate(spec.get("kubernetes", {}).get("envFrom") or []):
        kind = "configMapRef" if "configMapRef" in source else "secretRef"
        if podoptions.prefix_may_set_reserved(source.get("prefix") or ""):
            found.append(f"spec.kubernetes.envFrom[{i}]: the keys of {kind} {source.get(kind, {}).get('name')} are "
                         "read only when a pod starts, so they are not checked here; make sure none sets a variable "
                         f"that spec.kubernetes.env may not ({reserved}): such a key makes the pods wait for "
                         "nodes that never come, hide their GPUs or take the launcher for a worker; or give the "
                         "source a `prefix` (e.g. CFG_) that keeps its variables apart")
    return found


def _dataset_warnings(doc: dict[str, Any]) -> list[str]:
    """A local dataset folder on no volume of the pod (with no `data` volume, a relative path
    stays relative to the image's working directory). Only an image built with the photos
    inside has it, so this warns rather than refuses."""
    spec = pod_document(doc)["spec"]
    off, mounts = _off_volumes(spec, dataset_dirs(spec))
    return [f"{where}: {path} is on no volume in the pod (mounted: {', '.join(mounts) or 'none'}), so the pods "
            "find it only if the image holds it; add a `data` volume (spec.kubernetes.volumes.data, a "
            "PersistentVolumeClaim with the images) and give the path relative to it, or one under a "
            "volume's mountPath" for where, path in off]


# What the pods find of a path the run reads that is on no volume (runner/k8s/specfile.py places
# the relative ones it can), and where to put it instead.
_READ_PATHS = {
    "spec.training.resume": ("ResumeNotOnVolume", "that checkpoint", "give the checkpoint relative to the output "
                             "volume (e.g. <output.dir>/checkpoints/step-N, as `auto` finds them) or under a volume's "
                             "mountPath"),
    "spec.model.pretrained": ("ModelNotOnVolume", "that model folder", "put the pipeline on a volume: a `data` volume "
                              "(spec.kubernetes.volumes.data) with the path relative to it, or a path under a volume's "
                              "mountPath; or give a Hub repo id"),
}


def _read_path_warnings(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """A checkpoint to resume from or a local model folder on no volume of the pod: like a dataset
    (an image may hold it), warned rather than refused."""
    spec = pod_document(doc)["spec"]
    found = []
    if spec["training"]["resume"] not in RESUME_KEYWORDS:
        found.append(("spec.training.resume", spec["training"]["resume"]))
    ref = spec["model"].get("pretrained")
    if isinstance(ref, str) and ref.startswith(LOCAL_PATH_PREFIXES):
        found.append(("spec.model.pretrained", ref))
    off, mounts = _off_volumes(spec, found)
    return [(_READ_PATHS[where][0], f"{where}: {path} is on no volume in the pod (mounted: {', '.join(mounts) or 'none'}), "
             f"so the pods find {_READ_PATHS[where][1]} only if the image holds it; {_READ_PATHS[where][2]}")
            for where, path in off]


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
