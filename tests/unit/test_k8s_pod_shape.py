"""The pods' memory and devices: /dev/shm bounded by spec.kubernetes.shmSize and inside the memory
limit, a warning for GPU pods that request no memory, and the AMD nodes' device groups for the
non-root ROCm pods. Tables on the pure builders and checks, then kubernetes-validate --strict."""
from __future__ import annotations

import kubernetes_validate
import pytest

from runner.k8s import build, checks
from runner.k8s.build import Options
from runner.k8s.reconcile import Observed, reconcile
from runner.k8s.render import render_objects
from tests.unit.test_k8s_build import VERSIONS, make_doc, pod
from tests.unit.test_k8s_reconcile import T0, trainingjob


def shm_volume(pod_spec: dict) -> dict:
    return next(v["emptyDir"] for v in pod_spec["volumes"] if v["name"] == "dshm")


# --------------------------------------------------------------------------- /dev/shm

@pytest.mark.parametrize("shm, size_limit", [
    ("1Gi", "1Gi"),
    ("64G", "64G"),
    (8589934592, 8589934592),  # a plain byte count is a quantity too
])
def test_dev_shm_is_a_memory_volume_bounded_by_shm_size(shm, size_limit):
    """Unbounded, /dev/shm could take all of the pod's memory limit, or of the node's without one."""
    doc = make_doc("cuda12", gpus=8, shmSize=shm)
    for stage in build.STAGES:
        assert shm_volume(pod(doc, stage)) == {"medium": "Memory", "sizeLimit": size_limit}


@pytest.mark.parametrize("resources, size_limit", [
    ({}, "16Gi"),
    ({"limits": {"memory": "256Gi"}}, "16Gi"),
    ({"limits": {"memory": "16Gi"}}, "8192Mi"),  # half a limit below 32Gi: the processes keep the rest
    ({"requests": {"memory": "4Gi"}}, "2048Mi"),  # no limit: half the request
    ({"requests": {"memory": "4Gi"}, "limits": {"memory": "64Gi"}}, "2048Mi"),  # the smaller of the two
    ({"limits": {"memory": "1000M"}}, "476Mi"),
])
def test_unset_shm_size_is_16gi_or_half_a_smaller_pod(resources, size_limit):
    """The documented default fits small pods: a CPU job with a 16Gi limit renders, with room left."""
    from runner.spec.load import job_from_document
    from runner.spec.parse import parse_document

    doc = parse_document(
        "apiVersion: diffusion.runner.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: s}\n"
        "spec:\n  datasets: [{name: p, type: samples}]\n  training: {maxSteps: 1}\n"
        "  kubernetes: {volumes: {cache: {claimName: c}, output: {claimName: o}}}\n")
    full = job_from_document(doc).document.to_dict()
    assert "shmSize" not in full["spec"]["kubernetes"]  # no schema default: it follows the pod's memory
    full["spec"]["kubernetes"]["resources"] = resources
    assert shm_volume(pod(full))["sizeLimit"] == size_limit
    assert checks.kubernetes_problems(full) == []
    assert not [w for reason, w in checks.warning_events(full) if "is more than the pods' memory request" in w]


def test_a_job_started_before_device_groups_existed_keeps_its_pods():
    """The operator builds a started job's train Job from the spec in its ConfigMap, which an
    older operator wrote without deviceGroups: its pods get no supplementalGroups."""
    doc = make_doc("rocm", gpus=8)
    doc["spec"]["kubernetes"].pop("deviceGroups")
    spec = pod(doc)
    assert "supplementalGroups" not in spec["securityContext"]
    assert checks.kubernetes_problems(doc) == []


# --------------------------------------------------------------------------- memory requests

@pytest.mark.parametrize("accelerator, resources, shm, warned", [
    ("cuda12", {}, "16Gi", "spec.kubernetes.resources.requests.memory: not set on a GPU job"),
    ("cuda13", {"requests": {"cpu": "8"}}, "16Gi", "(at least the /dev/shm size, 16Gi (spec.kubernetes.shmSize)"),
    ("rocm", {}, "16Gi", "QoS BestEffort"),
    ("cpu", {}, "16Gi", None),  # only GPU pods: the expensive ones to lose
    ("cuda12", {"limits": {"memory": "64Gi"}}, "16Gi", None),  # the API server takes the limit as the request
    ("cuda12", {"requests": {"memory": "64Gi"}}, "16Gi", None),
    ("cuda12", {"requests": {"memory": "8Gi"}}, "16Gi",
     "spec.kubernetes.shmSize: 16Gi is more than the pods' memory request (8Gi"),
    ("cpu", {"requests": {"memory": "4Gi"}}, "8Gi", "is more than the pods' memory request (4Gi"),
    ("cpu", {"requests": {"memory": "4Gi"}}, "1Gi", None),
])
def test_gpu_pods_without_a_memory_request_are_warned_about(accelerator, resources, shm, warned):
    """Without a memory request a GPU pod is BestEffort, the first evicted under memory pressure.
    What it needs is the user's to say, so this warns and renders no number of its own."""
    doc = make_doc(accelerator, gpus=1 if accelerator == "cpu" else 8, resources=resources, shmSize=shm)
    events = [w for reason, w in checks.warning_events(doc) if reason == "LowMemoryRequest"]
    if warned is None:
        assert events == []
    else:
        assert len(events) == 1 and warned in events[0], events
    assert checks.kubernetes_problems(doc) == []  # a warning, never a refusal
    rendered = pod(doc)["containers"][0].get("resources", {})
    assert "memory" not in rendered.get("requests", {}) or "memory" in resources.get("requests", {})


# --------------------------------------------------------------------------- AMD device groups

@pytest.mark.parametrize("accelerator, groups, supplemental", [
    ("rocm", None, [44]),  # video by default; render has no default (each host picks its GID)
    ("rocm", {"render": 993}, [44, 993]),
    ("rocm", {"video": 39, "render": 110}, [39, 110]),  # Fedora/RHEL's video GID
    ("rocm", {"video": 44, "render": 44}, [44]),
    ("cuda12", {"render": 993}, None),  # NVIDIA's device nodes need no group
    ("cpu", {"render": 993}, None),
])
def test_rocm_pods_join_the_nodes_device_groups(accelerator, groups, supplemental):
    """The pods run as the non-root user 10001; AMD's /dev/kfd and /dev/dri/renderD* are 0660
    root:render (or video) on the node, and keep that inside the container."""
    doc = make_doc(accelerator, gpus=1 if accelerator == "cpu" else 8, **({"deviceGroups": groups} if groups else {}))
    for stage in build.STAGES:
        context = pod(doc, stage)["securityContext"]
        assert context.get("supplementalGroups") == supplemental
        assert context["runAsNonRoot"] and context["runAsUser"] == 10001  # why the groups are needed


@pytest.mark.parametrize("accelerator, groups, warned", [
    ("rocm", None, True),
    ("rocm", {"video": 44}, True),
    ("rocm", {"render": 993}, False),
    ("cuda12", None, False),
])
def test_a_rocm_job_without_the_render_group_is_warned_about(accelerator, groups, warned):
    doc = make_doc(accelerator, gpus=8, resources={"requests": {"memory": "64Gi"}},
                   **({"deviceGroups": groups} if groups else {}))
    events = checks.warning_events(doc)
    assert [reason for reason, _ in events] == (["NoRenderGroup"] if warned else [])
    if warned:
        assert events[0][1].startswith("spec.kubernetes.deviceGroups.render: not set")
        assert "stat -c %g /dev/kfd" in events[0][1]
    assert checks.kubernetes_problems(doc) == []  # nodes with 0666 udev rules need no group


@pytest.mark.parametrize("accelerator, groups, named", [
    ("cuda12", {"render": 993}, "render: 993"),
    ("cuda12", {"video": 39}, "video: 39"),
    ("cuda13", {"video": 39, "render": 110}, "video: 39, render: 110"),
    ("cpu", {"render": 993}, "render: 993"),
    ("cuda12", {"video": 44}, None),  # the schema's default: nothing the user changed
    ("cuda12", None, None),
    ("rocm", {"video": 39, "render": 110}, None),  # used
])
def test_device_groups_on_a_job_that_is_not_rocm_are_warned_about(accelerator, groups, named):
    doc = make_doc(accelerator, gpus=1 if accelerator == "cpu" else 8, resources={"requests": {"memory": "64Gi"}},
                   **({"deviceGroups": groups} if groups else {}))
    unused = [w for reason, w in checks.warning_events(doc) if reason == "UnusedDeviceGroups"]
    if named is None:
        assert unused == []
    else:
        [warning] = unused
        assert warning.startswith("spec.kubernetes.deviceGroups: only used with hardware.accelerator: rocm; ")
        assert f"accelerator is {accelerator}" in warning and f"{named} has no effect" in warning
    assert checks.kubernetes_problems(doc) == []  # a warning, never a refusal


def test_the_operator_posts_each_warning_under_its_own_reason():
    tj = trainingjob(hardware={"accelerator": "rocm", "gpusPerNode": 8},
                     kubernetes={"volumes": {"cache": {"claimName": "c"}, "output": {"claimName": "o"}}})
    out = reconcile(tj, Observed(), T0)
    assert [o["kind"] for o in out.create] == ["ConfigMap", "Job"]
    warnings = {e.reason: e.message for e in out.events if e.type == "Warning"}
    assert sorted(warnings) == ["LowMemoryRequest", "NoRenderGroup"]
    assert warnings["LowMemoryRequest"].startswith("spec.kubernetes.resources.requests.memory: not set")
    assert warnings["NoRenderGroup"].startswith("spec.kubernetes.deviceGroups.render: not set")


# --------------------------------------------------------------------------- valid Kubernetes

@pytest.mark.parametrize("accelerator, k8s", [
    ("rocm", {"deviceGroups": {"video": 44, "render": 993}, "resources": {"requests": {"memory": "64Gi"}}}),
    ("rocm", {}),
    ("cuda12", {"shmSize": 8589934592, "resources": {"limits": {"memory": "256Gi"}}}),
    ("cuda13", {"shmSize": "64G", "resources": {"requests": {"memory": "128Gi"}, "limits": {"memory": "512Gi"}}}),
    ("cpu", {"shmSize": "512Mi"}),
])
def test_pod_shape_options_render_valid_kubernetes(accelerator, k8s):
    doc = make_doc(accelerator, nodes=2, gpus=1 if accelerator == "cpu" else 8, **k8s)
    for obj in render_objects(doc, Options()):
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
