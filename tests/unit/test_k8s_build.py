"""The child objects `render` prints and the operator creates: valid Kubernetes for 1.30 and the
newest version kubernetes-validate ships, and carrying what each pod needs."""
from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from runner.k8s import build
from runner.k8s.build import Options, Owner
from runner.k8s.render import RenderError, render_objects, render_text
from runner.launch import images, torchrun
from runner.spec.load import job_from_document
from runner.spec.parse import parse_document

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "k8s" / "example-trainingjob.yaml"
VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
SECRETS = {"hubToken": {"name": "hf", "key": "token"}, "wandbApiKey": {"name": "wandb", "key": "key"}}


def make_doc(accelerator: str = "cpu", nodes: int = 1, gpus: int = 1, secrets: bool = False, **k8s) -> dict:
    doc = parse_document(EXAMPLE.read_text())
    doc["metadata"]["namespace"] = "ml"
    doc["spec"]["hardware"] = {"accelerator": accelerator, "nodes": nodes, "gpusPerNode": gpus}
    doc["spec"]["datasets"].append({"name": "mine", "type": "local", "path": "photos/set-1"})
    doc["spec"]["kubernetes"]["volumes"]["data"] = {"claimName": "datasets", "readOnly": True}
    doc["spec"]["kubernetes"].update(k8s)
    if secrets:
        doc["spec"]["kubernetes"]["secrets"] = SECRETS
        doc["spec"]["output"]["hub"] = {"push": True, "repoId": "me/model"}
        doc["spec"]["tracking"] = {"wandb": {"enabled": True, "project": "p"}}
    return job_from_document(doc).document.to_dict()


TABLE = list(itertools.product(["cpu", "cuda12", "cuda13", "rocm"], [1, 4], [False, True]))


@pytest.mark.parametrize("accelerator, nodes, secrets", TABLE)
def test_rendered_manifests_pass_kubernetes_validate_strict(accelerator, nodes, secrets):
    doc = make_doc(accelerator, nodes, gpus=1 if accelerator == "cpu" else 8, secrets=secrets)
    objects = yaml.safe_load_all(render_text(doc, Options(pod_monitor=True)))
    checked = []
    for obj in objects:
        if obj["kind"] == "PodMonitor":  # a CRD kind kubernetes-validate has no schema for
            assert set(obj["spec"]) == {"selector", "podMetricsEndpoints"}
            # The runner's labels clash with no target label, so the PodMonitor needs no
            # honorLabels (which would also let a pod overwrite `namespace` or `pod`).
            assert [e.get("honorLabels", False) for e in obj["spec"]["podMetricsEndpoints"]] == [False]
            continue
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        checked.append(obj["kind"])
    assert checked == ["ConfigMap", "Job", "Service", "Job"]


def test_kubernetes_validate_catches_a_broken_pod():
    job = build.build_job(make_doc(), "train", Options())
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["imagePullPolcy"] = "Always"  # a misspelt field: strict mode refuses unknown fields
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, VERSIONS[-1], strict=True)
    del container["imagePullPolcy"]
    container["ports"][0]["containerPort"] = "metrics"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, VERSIONS[0], strict=True)


def pod(doc: dict, stage: str = "train", opts: Options = Options()) -> dict:
    return build.build_job(doc, stage, opts)["spec"]["template"]["spec"]


def env(pod_spec: dict) -> dict:
    return {e["name"]: e for e in pod_spec["containers"][0]["env"]}


@pytest.mark.parametrize("accelerator, resource", [("cpu", None), ("cuda12", "nvidia.com/gpu"),
                                                   ("cuda13", "nvidia.com/gpu"), ("rocm", "amd.com/gpu")])
def test_gpu_requests_and_image_follow_the_hardware(accelerator, resource):
    spec = pod(make_doc(accelerator, gpus=4), opts=Options(registry="reg.example/ml", version="9.9"))
    container = spec["containers"][0]
    assert container["image"] == images.image_ref(accelerator, registry="reg.example/ml", version="9.9")
    assert container["image"].endswith(f":9.9-{accelerator}")
    resources = container.get("resources", {})
    if resource is None:
        assert not any("gpu" in k for part in resources.values() for k in part)
    else:
        assert resources["limits"][resource] == resources["requests"][resource] == 4
    assert resources["requests"]["memory"] == "4Gi"  # from spec.kubernetes.resources


def test_image_override_wins():
    assert pod(make_doc(image="my/own:1"))["containers"][0]["image"] == "my/own:1"


def test_tokens_only_through_secret_key_refs():
    doc = make_doc(secrets=True)
    variables = env(pod(doc))
    assert variables["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert variables["WANDB_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "wandb", "key": "key"}}
    assert all("value" not in e or e["name"] not in ("HF_TOKEN", "WANDB_API_KEY") for e in variables.values())
    assert "HF_TOKEN" not in env(pod(make_doc()))


def test_restricted_security_shm_grace_and_placement():
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    spec = pod(make_doc("cuda12", nodeSelector={"pool": "h200"}, tolerations=tolerations))
    container = spec["containers"][0]
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                            "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory"}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/dev/shm"]["name"] == "dshm" and mounts["/etc/trainingjob"]["readOnly"]
    assert mounts["/data"]["readOnly"] and not mounts["/cache"]["readOnly"]
    assert volumes["cache"]["persistentVolumeClaim"] == {"claimName": "trainingjob-cache"}
    # torchrun's deadline for the workers' checkpoint ends before the kubelet's SIGKILL.
    assert spec["terminationGracePeriodSeconds"] > torchrun.SHUTDOWN_TIMEOUT_S
    assert spec["nodeSelector"] == {"pool": "h200"} and spec["tolerations"] == tolerations
    assert spec["restartPolicy"] == "Never"


def test_metrics_port_is_named_and_annotated():
    template = build.build_job(make_doc(), "cache", Options())["spec"]["template"]
    port = template["spec"]["containers"][0]["ports"][0]
    assert port == {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"


@pytest.mark.parametrize("nodes", [1, 4])
def test_indexed_jobs_and_the_rendezvous(nodes):
    doc = make_doc("cuda12", nodes=nodes, gpus=8)
    names = build.names("smoke")
    train, cache = build.build_job(doc, "train", Options()), build.build_job(doc, "cache", Options())
    for job in (train, cache):
        assert job["spec"]["completionMode"] == "Indexed"
        assert job["spec"]["completions"] == job["spec"]["parallelism"] == nodes
        rules = job["spec"]["podFailurePolicy"]["rules"]
        assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    train_pod = train["spec"]["template"]["spec"]
    variables = env(train_pod)
    assert "JOB_COMPLETION_INDEX" in variables and "TRAININGJOB_RUN_ID" in variables
    assert train_pod["subdomain"] == names["service"]
    service = build.build_service(doc, Options())
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    pod_labels = train["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    if nodes > 1:
        assert variables["MASTER_ADDR"]["value"] == f"{names['train']}-0.{names['service']}"
        assert variables["MASTER_PORT"]["value"] == str(torchrun.RENDEZVOUS_PORT)
    else:
        assert "MASTER_ADDR" not in variables
    assert "MASTER_ADDR" not in env(cache["spec"]["template"]["spec"])  # cache pods never rendezvous
    assert cache["spec"]["template"]["spec"]["containers"][0]["args"][-1] == "cache"


def test_owner_labels_and_deterministic_names():
    doc = make_doc()
    owner = Owner(name="smoke", uid="uid-1")
    first = build.build_children(doc, Options(pod_monitor=True), owner)
    assert first == build.build_children(doc, Options(pod_monitor=True), owner)
    assert [o["metadata"]["name"] for o in first] == ["smoke-spec", "smoke", "smoke-cache", "smoke-train", "smoke-train"]
    for obj in first:
        meta = obj["metadata"]
        assert meta["namespace"] == "ml"
        assert meta["ownerReferences"] == [{"apiVersion": "diffusion.runner.dev/v1alpha1", "kind": "TrainingJob",
                                            "name": "smoke", "uid": "uid-1", "controller": True,
                                            "blockOwnerDeletion": True}]
        assert meta["labels"]["app.kubernetes.io/instance"] == "smoke"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "trainingjob-operator"
        assert meta["labels"]["diffusion.runner.dev/job"] == "smoke"
    stages = [o["metadata"]["labels"].get("diffusion.runner.dev/stage") for o in first if o["kind"] == "Job"]
    assert stages == ["cache", "train"]


@pytest.mark.parametrize("job", ["a" * 63, "9lives", "x"])
def test_names_fit_kubernetes_limits(job):
    names = build.names(job)
    assert all(len(n) <= 63 and n[0].isalpha() for n in names.values())
    assert len(names["train"]) + len("-1023") <= 63  # the Indexed pods' hostnames
    distinct = [names[k] for k in ("config", "cache", "train", "monitor")]
    assert len(set(distinct)) == 4 and names["service"] not in (names["config"], names["cache"])


def test_kueue_labels_are_passed_to_the_jobs():
    doc = make_doc()
    doc["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "gpu-queue", "team": "a"}
    labels = build.build_job(doc, "train", Options())["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "gpu-queue" and "team" not in labels


def test_the_pods_spec_puts_relative_paths_on_the_volumes():
    doc = make_doc()
    doc["spec"]["datasets"][1]["vaeCacheDir"] = "latents/mine"
    seen = build.pod_document(doc)["spec"]
    assert seen["cacheDir"] == "/cache/smoke" and seen["output"]["dir"] == "/output/smoke"
    assert seen["datasets"][1]["path"] == "/data/photos/set-1"
    assert seen["datasets"][1]["vaeCacheDir"] == "/cache/latents/mine"
    doc["spec"]["cacheDir"] = "/scratch/c"
    assert build.pod_document(doc)["spec"]["cacheDir"] == "/scratch/c"  # absolute: kept
    # The spec the pods read is itself a valid TrainingJob.
    job_from_document(build.pod_document(doc))


@pytest.mark.parametrize("change, problem", [
    (lambda d: d["spec"]["kubernetes"]["volumes"].pop("cache"), "volumes.cache.claimName"),
    (lambda d: d["spec"]["kubernetes"]["volumes"].pop("output"), "volumes.output.claimName"),
    (lambda d: d["spec"]["hardware"].update(accelerator="mps"), "'mps' has no container image"),
    (lambda d: d["spec"]["output"]["hub"].update(push=True, repoId="a/b"), "secrets.hubToken"),
    # the API server refuses two mounts at one path; nothing mounts inside the read-only ConfigMap
    (lambda d: d["spec"]["kubernetes"]["volumes"]["cache"].update(mountPath="/etc/trainingjob"),
     "volumes.cache.mountPath: /etc/trainingjob is where the spec's ConfigMap (read-only) is mounted"),
    (lambda d: d["spec"]["kubernetes"]["volumes"]["cache"].update(mountPath="/etc/trainingjob/cache"),
     "volumes.cache.mountPath: /etc/trainingjob/cache is where the spec's ConfigMap"),
    (lambda d: d["spec"]["kubernetes"]["volumes"]["cache"].update(mountPath="/tmp/"), "/tmp is where scratch space"),
    (lambda d: d["spec"]["kubernetes"]["volumes"]["output"].update(mountPath="/cache"),
     "volumes.output.mountPath: /cache is where volume cache is mounted"),
    # written off every volume: lost with the pod, and the train stage's pod never sees the cache
    (lambda d: d["spec"].update(cacheDir="/scratch/c"), "spec.cacheDir: /scratch/c is on no volume in the pod"),
    (lambda d: d["spec"]["output"].update(dir="/cache-not/x"), "spec.output.dir: /cache-not/x is on no volume"),
])
def test_what_kubernetes_needs_beyond_a_valid_spec(change, problem):
    doc = make_doc()
    change(doc)
    problems = build.kubernetes_problems(doc)
    assert len(problems) == 1 and problem in problems[0]
    with pytest.raises(RenderError):
        render_objects(doc, Options())


@pytest.mark.parametrize("dataset, data_volume, warned", [
    ({"path": "photos/set-1"}, True, False),  # relative: on the data volume
    ({"path": "/data/photos"}, True, False),
    ({"path": "/cache/photos"}, False, False),  # under another volume's mountPath
    ({"path": "photos/set-1"}, False, True),  # relative to the image's working directory
    ({"path": "/srv/photos"}, True, True),
    ({"type": "huggingface", "repo": "me/photos", "path": "/srv/photos"}, False, False),  # path unused
])
def test_a_local_dataset_on_no_volume_is_warned_about(dataset, data_volume, warned):
    doc = make_doc()
    doc["spec"]["datasets"][1] = {"name": "mine", "type": "local", **dataset}
    if not data_volume:
        doc["spec"]["kubernetes"]["volumes"].pop("data")
    warnings = build.kubernetes_warnings(doc)
    assert len(warnings) == warned
    if warned:
        assert warnings[0].startswith("spec.datasets[1].path: ") and "is on no volume in the pod" in warnings[0]
    assert build.kubernetes_problems(doc) == []  # an image may hold the photos: never a refusal


def test_render_cli_prints_objects_in_apply_order_with_sync_waves(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "runner", "render", str(EXAMPLE), "--set", "spec.hardware.nodes=2"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "kubectl wait --for=condition=complete job/smoke-cache" in proc.stdout
    objects = [o for o in yaml.safe_load_all(proc.stdout) if o]
    assert [(o["kind"], o["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]) for o in objects] == [
        ("ConfigMap", "0"), ("Job", "0"), ("Service", "1"), ("Job", "1")]
    assert objects[-1]["spec"]["completions"] == 2
    assert "ownerReferences" not in objects[0]["metadata"]
    spec_seen = yaml.safe_load(objects[0]["data"]["trainingjob.yaml"])
    assert spec_seen["spec"]["hardware"]["nodes"] == 2  # --set reaches the pods' spec
    only_cache = subprocess.run([sys.executable, "-m", "runner", "render", str(EXAMPLE), "--stage", "cache"],
                                cwd=REPO, capture_output=True, text=True, timeout=60)
    assert [o["kind"] for o in yaml.safe_load_all(only_cache.stdout) if o] == ["ConfigMap", "Job"]


def test_render_cli_refuses_what_kubernetes_cannot_run():
    proc = subprocess.run([sys.executable, "-m", "runner", "render", str(REPO / "examples" / "smoke.yaml")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "spec.kubernetes.volumes.cache.claimName: required on Kubernetes" in proc.stderr


@pytest.mark.parametrize("args, expect", [
    (["--version", ""], "error: --version: '' does not make an image tag"),
    (["--version", "1.0 beta"], "error: --version: '1.0 beta' does not make an image tag"),
    (["--registry", "bad reg!/x"], "error: --registry: 'bad reg!/x' is not a registry and path"),
    (["--set", "spec.kubernetes.volumes.cache.claimName=Bad_Name"],
     "spec.kubernetes.volumes.cache.claimName: 'Bad_Name' does not match"),
])
def test_render_refuses_what_would_not_be_a_valid_object(cli, args, expect):
    """An empty --version rendered `image: ghcr.io/trainingjob/trainingjob:-cpu`; the rest went through too."""
    result = cli("render", EXAMPLE, *args)
    assert result.code == 2 and result.out == ""
    assert expect in result.err, result.err


def test_render_says_when_pod_monitor_has_no_port_to_watch(cli):
    result = cli("render", EXAMPLE, "--pod-monitor", "--set", "spec.metrics.port=0")
    assert result.code == 0
    assert "--pod-monitor: spec.metrics.port is 0 (no /metrics), so no PodMonitor is rendered" in result.err
    assert "PodMonitor" not in result.out.replace("--pod-monitor", "")
    with_port = cli("render", EXAMPLE, "--pod-monitor")
    assert "kind: PodMonitor" in with_port.out and "warning" not in with_port.err


@pytest.mark.parametrize("registry, version, ok", [
    ("ghcr.io/trainingjob", "0.4.0", True), ("localhost:5000/me/x", "dev_1", True), ("ghcr.io/a/", "1", True),
    ("GHCR.io/x", "1", False), ("ghcr.io//x", "1", False), ("ghcr.io/x", "-1", False), ("ghcr.io/x", "a" * 125, False),
])
def test_image_reference_problems(registry, version, ok):
    from runner.launch.images import reference_problems

    assert (reference_problems(registry, version) == []) == ok


def test_render_cli_warns_about_a_dataset_on_no_volume_and_still_renders():
    proc = subprocess.run([sys.executable, "-m", "runner", "render", str(EXAMPLE), "--set", "spec.datasets.0.type=local",
                           "--set", "spec.datasets.0.path=/srv/photos"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"{EXAMPLE}: warning: spec.datasets[0].path: /srv/photos is on no volume in the pod" in proc.stderr
    assert [o["kind"] for o in yaml.safe_load_all(proc.stdout) if o] == ["ConfigMap", "Job", "Service", "Job"]
