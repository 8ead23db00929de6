"""Pure builders: a validated TrainingJob document in, its child objects out (plain dicts).

The operator (runner/k8s/operator.py) and `trainingjob render` both call these, so a rendered
manifest and what the operator creates are the same objects. Nothing here talks to a cluster.

Children, in apply order: the ConfigMap holding the spec as the pods see it (specfile.py); an optional
PodMonitor; the Indexed cache Job (one pod per node, each encoding its own shards; the last to
finish writes the manifest); then the headless Service and the Indexed train Job (completions =
nodes), whose pods meet at pod 0 through the Service (torchrun's c10d rendezvous).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from runner.envvars import COMPLETION_INDEX_ENV
from runner.exitcodes import NOT_RETRIED  # bad input, diverged, out of GPU memory: the Job fails at once
from runner.k8s import podoptions, specfile
from runner.k8s.labels import label_job, label_stage, labels  # noqa: F401 (label_job re-exported: operator)
from runner.k8s.options import Options
from runner.k8s.specfile import pod_document  # noqa: F401 (re-exported: checks, reconcile)
from runner.launch import images
from runner.launch.torchrun import RENDEZVOUS_PORT, SHUTDOWN_TIMEOUT_S
from runner.spec import schema as schema_mod
from runner.spec.localpaths import mount_paths

CONTAINER = "trainer"
SPEC_DIR, SPEC_FILE = "/etc/trainingjob", "trainingjob.yaml"
# The ConfigMap's other key: the spec the job started with, for the operator (not mounted in the pods).
STARTED_SPEC_FILE = "trainingjob.started.yaml"
# The kubelet's SIGKILL must come after torchrun's own deadline for the workers' checkpoint.
GRACE_PERIOD_S = SHUTDOWN_TIMEOUT_S + 60
# Pod failures each node (completion index) may have before the Job fails: its own crashes and
# OOM kills, and exits after a peer's eviction once torchrun's in-pod restarts ran out
# (POD_MAX_RESTARTS). Per index, so a bigger job does not share one budget among more pods;
# evictions and preemptions count nowhere (podFailurePolicy Ignore on DisruptionTarget).
BACKOFF_LIMIT_PER_INDEX = 3
# Set by the Job controller on every pod of an Indexed Job (the label of the same name only
# since Kubernetes 1.28, so the annotation is what the pods and the PodMonitor read).
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
# podFailurePolicy FailJob: exit 2 (bad input) and 3 (training diverged, or out of GPU memory),
# which a retry would very likely meet again: it resumes from the same checkpoint with the same data
# (bit-identically on the CPU; GPU kernels are not deterministic, and an OOM may come from fragmentation).
FAIL_JOB_EXIT_CODES = NOT_RETRIED
KUEUE_PREFIX = "kueue.x-k8s.io/"
JOB_NAME_MAX = 52  # an Indexed Job's pod hostname is `<job>-<index>` and must stay within 63
STAGES = ("cache", "train")


@dataclass(frozen=True)
class Owner:
    """The TrainingJob object that owns the children (absent for `render`)."""

    name: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {"apiVersion": schema_mod.api_version(), "kind": schema_mod.KIND, "name": self.name,
                "uid": self.uid, "controller": True, "blockOwnerDeletion": True}


def child_name(job: str, suffix: str, limit: int = 63) -> str:
    """`<job>-<suffix>`, deterministic; shortened with a hash of the job name when too long.
    Starts with a letter (Service names must)."""
    name = f"{job}-{suffix}" if suffix else job
    if not name[0].isalpha():
        name = f"tj-{name}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(job.encode()).hexdigest()[:6]
    tail = f"-{digest}-{suffix}" if suffix else f"-{digest}"
    return name[:limit - len(tail)].rstrip("-") + tail


def names(job: str) -> dict[str, str]:
    return {"config": child_name(job, "spec"), "cache": child_name(job, "cache", JOB_NAME_MAX),
            "train": child_name(job, "train", JOB_NAME_MAX), "service": child_name(job, "train"),
            "monitor": child_name(job, "")}


def _meta(doc: dict, name: str, component: str, opts: Options, owner: Owner | None,
          stage: str | None = None, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name,
                            "labels": {**labels(doc["metadata"]["name"], component, opts.managed_by, stage),
                                       **(extra_labels or {})}}
    if doc["metadata"].get("namespace"):
        meta["namespace"] = doc["metadata"]["namespace"]
    if owner is not None:
        meta["ownerReferences"] = [owner.reference()]
    return meta


# ----------------------------------------------------------------------------- objects

def config_data(doc: dict) -> dict[str, str]:
    """The ConfigMap's data: the pods' spec, and the operator's copy of the spec as started
    (runner/k8s/specfile.py)."""
    return {SPEC_FILE: specfile.config_text(doc), STARTED_SPEC_FILE: specfile.started_text(doc)}


def config_map_name(doc: dict, opts: Options) -> str:
    """`NAME-spec`, or with Options.content_named_config `NAME-spec-<hash of its content>`."""
    job = doc["metadata"]["name"]
    if not opts.content_named_config:
        return names(job)["config"]
    return child_name(job, f"spec-{specfile.digest(config_data(doc))}")


def build_config_map(doc: dict, opts: Options, owner: Owner | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _meta(doc, config_map_name(doc, opts), "spec", opts, owner),
            "data": config_data(doc)}


def secret_env(spec: dict) -> dict[str, str]:
    """{variable: its spec.kubernetes.secrets key} for each variable the pods get from a Secret:
    the Hub token's and the W&B key's, under the names the spec gives them."""
    secrets = spec.get("kubernetes", {}).get("secrets", {})
    named = (("hubToken", spec["output"]["hub"].get("tokenEnv")),
             ("wandbApiKey", spec["tracking"]["wandb"].get("apiKeyEnv")))
    return {var: key for key, var in named if key in secrets and var}


def own_env(doc: dict, stage: str) -> list[dict[str, Any]]:
    """The variables the runner sets on the trainer container itself (spec.kubernetes.env comes
    after them: podoptions.merge_env)."""
    spec, job = doc["spec"], doc["metadata"]["name"]
    cache_mount = spec.get("kubernetes", {}).get("volumes", {}).get("cache", {}).get("mountPath", "/cache")
    env: list[dict[str, Any]] = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HOME", "value": "/tmp"},  # any non-root UID can write there
        {"name": "HF_HOME", "value": f"{cache_mount.rstrip('/')}/huggingface"},  # models downloaded once, for both stages
        {"name": COMPLETION_INDEX_ENV, "valueFrom": {"fieldRef": {
            "fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        # One id per Job run: names the torchrun rendezvous and the cache nodes' markers.
        {"name": "TRAININGJOB_RUN_ID", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.labels['batch.kubernetes.io/controller-uid']"}}},
    ]
    if stage == "train" and spec["hardware"]["nodes"] > 1:
        n = names(job)
        env += [{"name": "MASTER_ADDR", "value": f"{n['train']}-0.{n['service']}"},
                {"name": "MASTER_PORT", "value": str(RENDEZVOUS_PORT)}]
    secrets = spec.get("kubernetes", {}).get("secrets", {})
    for var, key in secret_env(spec).items():
        ref = {"name": secrets[key]["name"], "key": secrets[key]["key"]}
        env.append({"name": var, "valueFrom": {"secretKeyRef": ref}})
    return env


def _resources(spec: dict) -> dict[str, Any]:
    wanted = spec.get("kubernetes", {}).get("resources", {})
    requests, limits = dict(wanted.get("requests", {})), dict(wanted.get("limits", {}))
    flavour = images.FLAVOURS.get(spec["hardware"]["accelerator"])
    gpu = flavour.gpu_resource if flavour else None
    if gpu:  # one process per GPU: the pod gets exactly gpusPerNode of them
        limits[gpu] = requests[gpu] = spec["hardware"]["gpusPerNode"]
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


# Kubernetes quantities as the schema allows them (bytes: no exponent forms).
_QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")
_SCALE = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
SHM_DEFAULT = "16Gi"


def quantity(value: Any) -> float | None:
    """A Kubernetes quantity (`16Gi`, `64G`, `1024`) as a number; None when it is not one."""
    m = _QUANTITY.fullmatch(str(value))
    return float(m.group(1)) * _SCALE.get(m.group(2) or "", 1) if m else None


def pod_memory(spec: dict, side: str) -> tuple[Any, float | None]:
    """(as written, in bytes) of spec.kubernetes.resources.<side>.memory; (None, None) when unset."""
    value = spec.get("kubernetes", {}).get("resources", {}).get(side, {}).get("memory")
    return value, None if value is None else quantity(value)


def shm_size(spec: dict) -> Any:
    """spec.kubernetes.shmSize, or when unset 16Gi, capped at half the pod's memory request or
    limit, whichever is smaller: /dev/shm counts against the pod's memory, so a default must fit
    a small pod as well as an 8-GPU node's decode workers."""
    given = spec.get("kubernetes", {}).get("shmSize")
    if given is not None:
        return given
    bound = min((b for b in (pod_memory(spec, "limits")[1], pod_memory(spec, "requests")[1]) if b), default=None)
    if bound is None or bound / 2 >= quantity(SHM_DEFAULT):
        return SHM_DEFAULT
    return f"{max(1, int(bound / 2 / 2**20))}Mi"


def _shm(spec: dict) -> dict[str, Any]:
    """Data loaders and NCCL share memory through /dev/shm (the runtime's own is 64 MiB): a
    tmpfs, bounded by shm_size; unbounded it could take all of the pod's memory limit, or of the
    node's memory without one."""
    return {"medium": "Memory", "sizeLimit": shm_size(spec)}


def joins_device_groups(spec: dict) -> bool:
    """Whether the pods join the node's groups that own the GPU device nodes (spec.kubernetes.
    deviceGroups): hardware whose devices only their members may open (AMD: /dev/kfd and
    /dev/dri/renderD* are 0660; the pods run as non-root)."""
    flavour = images.FLAVOURS.get(spec["hardware"]["accelerator"])
    return flavour is not None and flavour.device_groups


def _supplemental_groups(spec: dict) -> list[int]:
    """The node's groups that own the GPU device nodes, when the pods join them."""
    if not joins_device_groups(spec):
        return []
    groups = spec.get("kubernetes", {}).get("deviceGroups", {})
    return sorted({gid for gid in (groups.get("video"), groups.get("render")) if gid is not None})


def _volumes(spec: dict, config_map: str) -> tuple[list[dict], list[dict]]:
    # Only the pods' own key: the operator's copy (STARTED_SPEC_FILE) is not the trainer's to read.
    spec_file = {"name": config_map, "items": [{"key": SPEC_FILE, "path": SPEC_FILE}]}
    volumes = [{"name": "spec", "configMap": spec_file},
               {"name": "dshm", "emptyDir": _shm(spec)},
               {"name": "tmp", "emptyDir": {}}]
    mounts = [{"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
              {"name": "dshm", "mountPath": "/dev/shm"}, {"name": "tmp", "mountPath": "/tmp"}]
    claims = spec.get("kubernetes", {}).get("volumes", {})
    for name, path in mount_paths(claims):
        volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claims[name]["claimName"]}})
        mounts.append({"name": name, "mountPath": path, "readOnly": bool(claims[name].get("readOnly", False))})
    return volumes, mounts


def every_pod_serves_metrics(doc: dict, stage: str) -> bool:
    """Whether each pod of the stage's Job serves /metrics (runner/launch/run.py). Cache: yes,
    each pod's launching process serves while its pod runs (the counts of the workers on the
    shared volume, or with one GPU per node its own shard's). Train: only rank 0 serves, so
    with several nodes only pod 0 does; the other pods' `metrics` port has nothing behind it,
    and annotation-based scraping (prometheus.io/scrape) would see them down all run long."""
    return stage == "cache" or doc["spec"]["hardware"]["nodes"] == 1


def _prometheus_meta(kind: str, key: str) -> str:
    """Prometheus's Kubernetes discovery label for a pod label or annotation `key`."""
    return f"__meta_kubernetes_pod_{kind}_" + "".join(c if c.isalnum() or c == "_" else "_" for c in key)


def build_pod_template(doc: dict, stage: str, opts: Options) -> dict[str, Any]:
    spec, job = doc["spec"], doc["metadata"]["name"]
    k8s, n = spec.get("kubernetes", {}), names(job)
    port = spec["metrics"]["port"]
    volumes, mounts = _volumes(spec, config_map_name(doc, opts))
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": k8s.get("image") or images.image_ref(spec["hardware"]["accelerator"], registry=opts.registry,
                                                       name=opts.image_name, version=opts.version),
        "imagePullPolicy": k8s.get("imagePullPolicy", "IfNotPresent"),
        "command": ["trainingjob"],
        "args": ["run", f"{SPEC_DIR}/{SPEC_FILE}", "--stage", stage],
        "env": podoptions.merge_env(own_env(doc, stage), spec),
        **podoptions.container_fields(spec),
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                            "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
    }
    resources = _resources(spec)
    if resources:
        container["resources"] = resources
    ports = [{"name": "metrics", "containerPort": port, "protocol": "TCP"}] if port else []
    if stage == "train" and spec["hardware"]["nodes"] > 1:
        ports.append({"name": "rendezvous", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"})
    if ports:
        container["ports"] = ports
    pod: dict[str, Any] = {
        "restartPolicy": "Never",  # the Job retries whole pods (and podFailurePolicy needs Never)
        "terminationGracePeriodSeconds": GRACE_PERIOD_S,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": images.IMAGE_UID, "runAsGroup": images.IMAGE_UID,
                            "fsGroup": images.IMAGE_UID,
                            # Without it (Always) the kubelet chowns every file of the cache and
                            # output claims at each pod start: minutes on a big cache, at every retry.
                            "fsGroupChangePolicy": "OnRootMismatch",
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": volumes,
    }
    if groups := _supplemental_groups(spec):
        pod["securityContext"]["supplementalGroups"] = groups
    if stage == "train":
        pod["subdomain"] = n["service"]  # stable `<job>-<index>.<service>` hostnames for the rendezvous
    if k8s.get("serviceAccountName"):
        pod["serviceAccountName"] = k8s["serviceAccountName"]
    else:  # the trainer never calls the API (the operator scrapes its /metrics): no token to steal
        pod["automountServiceAccountToken"] = False
    if k8s.get("nodeSelector"):
        pod["nodeSelector"] = dict(k8s["nodeSelector"])
    if k8s.get("tolerations"):
        pod["tolerations"] = [dict(t) for t in k8s["tolerations"]]
    pod.update(podoptions.pod_fields(spec))
    meta: dict[str, Any] = {"labels": labels(job, stage, opts.managed_by, stage)}
    # With a PodMonitor the Prometheus Operator scrapes; the annotations too would have a
    # cluster's annotation-based scrape job take every series a second time, under another `job`.
    if port and every_pod_serves_metrics(doc, stage) and not opts.pod_monitor:
        meta["annotations"] = {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                               "prometheus.io/path": "/metrics"}
    return {"metadata": podoptions.pod_metadata(meta, spec), "spec": pod}


def build_job(doc: dict, stage: str, opts: Options, owner: Owner | None = None,
              suspend: bool = False) -> dict[str, Any]:
    nodes = doc["spec"]["hardware"]["nodes"]
    # Kueue manages batch/v1 Jobs that carry its queue label: pass its labels on.
    kueue = {k: v for k, v in doc["metadata"].get("labels", {}).items() if k.startswith(KUEUE_PREFIX)}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": _meta(doc, names(doc["metadata"]["name"])[stage], stage, opts, owner, stage, kueue),
        "spec": {
            "completionMode": "Indexed",
            "completions": nodes,
            "parallelism": nodes,
            "backoffLimitPerIndex": BACKOFF_LIMIT_PER_INDEX,
            # One node out of retries fails the Job at once: the others cannot finish without it
            # (the train pods wait for it at the rendezvous, the cache manifest for its shards).
            "maxFailedIndexes": 0,
            # The same bound where per-index limits are off (before 1.29, or the feature gate off):
            # more failures than this mean some index had more than its own limit.
            "backoffLimit": BACKOFF_LIMIT_PER_INDEX * nodes,
            "podFailurePolicy": {"rules": [
                # Evicted or preempted: retried without counting; training resumes from the checkpoint.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                                      "values": list(FAIL_JOB_EXIT_CODES)}},
            ]},
            "suspend": suspend,
            "template": build_pod_template(doc, stage, opts),
        },
    }


def build_service(doc: dict, opts: Options, owner: Owner | None = None) -> dict[str, Any]:
    job = doc["metadata"]["name"]
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _meta(doc, names(job)["service"], "train", opts, owner, "train"),
        "spec": {
            "clusterIP": "None",
            # Pods resolve before they are ready: the rendezvous starts before any readiness.
            "publishNotReadyAddresses": True,
            "selector": {label_job(): job, label_stage(): "train"},
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT,
                       "protocol": "TCP"}],
        },
    }


def build_pod_monitor(doc: dict, opts: Options, owner: Owner | None = None) -> dict[str, Any]:
    """For the Prometheus Operator: scrape the pods that serve /metrics on their named port:
    every cache pod, and of the train pods only completion index 0 (rank 0 serves; the
    others would be targets down all run, and kube-prometheus's TargetDown would fire)."""
    job = doc["metadata"]["name"]
    not_served = {"action": "drop",
                  "sourceLabels": [_prometheus_meta("label", label_stage()),
                                   _prometheus_meta("annotation", COMPLETION_INDEX_ANNOTATION)],
                  "separator": ";", "regex": "train;[1-9][0-9]*"}
    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
        # opts.pod_monitor_labels: what the cluster's Prometheus selects PodMonitors by (release: ...)
        "metadata": _meta(doc, names(job)["monitor"], "monitoring", opts, owner,
                          extra_labels=dict(opts.pod_monitor_labels)),
        "spec": {"selector": {"matchLabels": {label_job(): job}},
                 # No honorLabels: the runner's labels (`trainingjob`, ...) are none of the target
                 # labels Prometheus attaches (`job`, `namespace`, `pod`), so nothing is renamed.
                 "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s",
                                         "relabelings": [not_served]}]},
    }


def build_children(doc: dict, opts: Options, owner: Owner | None = None, stages=STAGES,
                   suspend: bool = False) -> list[dict[str, Any]]:
    """The child objects of the given stages, in apply order."""
    out = [build_config_map(doc, opts, owner)]
    if opts.pod_monitor and doc["spec"]["metrics"]["port"]:
        out.append(build_pod_monitor(doc, opts, owner))
    if "cache" in stages:
        out.append(build_job(doc, "cache", opts, owner, suspend))
    if "train" in stages:
        out += [build_service(doc, opts, owner), build_job(doc, "train", opts, owner, suspend)]
    return out
