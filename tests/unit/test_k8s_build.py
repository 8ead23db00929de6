"""The child objects `render` prints and the operator creates: valid Kubernetes for 1.30 and the
newest version kubernetes-validate ships, and carrying what each pod needs."""
from __future__ import annotations

import itertools
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from runner.k8s import build, checks
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
    # the default (Always) chowns every file of the cache and output claims at each pod start
    assert spec["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                            "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}  # spec.kubernetes.shmSize
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/dev/shm"]["name"] == "dshm" and mounts["/etc/trainingjob"]["readOnly"]
    assert mounts["/data"]["readOnly"] and not mounts["/cache"]["readOnly"]
    assert volumes["cache"]["persistentVolumeClaim"] == {"claimName": "trainingjob-cache"}
    # torchrun's deadline for the workers' checkpoint ends before the kubelet's SIGKILL.
    assert spec["terminationGracePeriodSeconds"] > torchrun.SHUTDOWN_TIMEOUT_S
    assert spec["nodeSelector"] == {"pool": "h200"} and spec["tolerations"] == tolerations
    assert spec["restartPolicy"] == "Never"


@pytest.mark.parametrize("stage, nodes, annotated", [
    ("cache", 1, True), ("cache", 4, True),  # every cache pod's launching process serves
    ("train", 1, True),
    ("train", 4, False),  # only rank 0 (pod 0) serves: pods 1-3 would be scrape targets down all run
])
def test_metrics_port_is_named_and_annotated_where_every_pod_serves(stage, nodes, annotated):
    template = build.build_job(make_doc(nodes=nodes), stage, Options())["spec"]["template"]
    port = template["spec"]["containers"][0]["ports"][0]
    assert port == {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}
    annotations = template["metadata"].get("annotations", {})
    if annotated:
        assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": "9090",
                               "prometheus.io/path": "/metrics"}
    else:
        assert not any(k.startswith("prometheus.io/") for k in annotations)


def test_with_a_pod_monitor_the_pods_carry_no_scrape_annotations():
    """Both would have a cluster's annotation-based scrape job and the Prometheus Operator take
    every series, under two `job` labels: sums over the cache counters would count twice."""
    for stage in ("cache", "train"):
        template = build.build_job(make_doc(nodes=1), stage, Options(pod_monitor=True))["spec"]["template"]
        assert not any(k.startswith("prometheus.io/") for k in template["metadata"].get("annotations", {}))
        assert template["spec"]["containers"][0]["ports"][0]["name"] == "metrics"  # what the PodMonitor scrapes


def _prometheus_meta(pod_meta: dict) -> dict[str, str]:
    """Prometheus's Kubernetes discovery labels of a pod (names: other characters become `_`)."""
    sane = lambda k: re.sub(r"[^a-zA-Z0-9_]", "_", k)
    out = {f"__meta_kubernetes_pod_label_{sane(k)}": v for k, v in pod_meta["labels"].items()}
    out.update({f"__meta_kubernetes_pod_annotation_{sane(k)}": v for k, v in pod_meta["annotations"].items()})
    return out


def _kept(endpoint: dict, meta: dict[str, str]) -> bool:
    """Prometheus's keep/drop relabeling: source values joined by the separator, regex anchored."""
    for rule in endpoint.get("relabelings", []):
        value = rule.get("separator", ";").join(meta.get(label, "") for label in rule["sourceLabels"])
        matched = re.fullmatch(rule.get("regex", "(.*)"), value) is not None
        if rule["action"].lower() == ("drop" if matched else "keep"):
            return False
    return True


@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_pod_monitor_scrapes_only_the_pods_that_serve(nodes):
    """Train: only completion index 0 (rank 0) serves /metrics; cache: every pod does."""
    doc = make_doc(nodes=nodes)
    monitor = build.build_pod_monitor(doc, Options())
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    scraped = set()
    for stage in build.STAGES:
        template = build.build_job(doc, stage, Options())["spec"]["template"]
        for index in range(nodes):
            # what the Job controller adds to each pod of an Indexed Job
            pod_meta = {"labels": {**template["metadata"]["labels"], "batch.kubernetes.io/job-completion-index": str(index)},
                        "annotations": {**template["metadata"].get("annotations", {}),
                                        "batch.kubernetes.io/job-completion-index": str(index)}}
            if monitor["spec"]["selector"]["matchLabels"].items() <= pod_meta["labels"].items() and \
                    _kept(endpoint, _prometheus_meta(pod_meta)):
                scraped.add((stage, index))
    assert scraped == {("cache", i) for i in range(nodes)} | {("train", 0)}


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
        # Bad input (2), and a divergence or running out of GPU memory (3): a retry would repeat them.
        assert rules[1] == {"action": "FailJob", "onExitCodes": {"containerName": build.CONTAINER, "operator": "In",
                                                                 "values": [2, 3]}}
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


def _job_fails(job_spec: dict, failed: dict[int, int]) -> bool:
    """The Job controller's verdict on counted pod failures per completion index (pods that
    podFailurePolicy ignores are not in `failed`): an index with more than backoffLimitPerIndex
    fails, more failed indexes than maxFailedIndexes fail the Job (unset: once all indexes ran,
    if any failed), and so do more than backoffLimit failures in all."""
    if "backoffLimitPerIndex" in job_spec:
        failed_indexes = sum(n > job_spec["backoffLimitPerIndex"] for n in failed.values())
        if failed_indexes > job_spec.get("maxFailedIndexes", 0):
            return True
    return sum(failed.values()) > job_spec["backoffLimit"]


RESTARTS = torchrun.POD_MAX_RESTARTS


@pytest.mark.parametrize("nodes, failed, fails", [
    # One pod evicted (ignored: DisruptionTarget) after its peers had used their torchrun restarts:
    # each survivor exits once. A fixed backoffLimit of 3 failed 8 nodes at once (7 > 3).
    (8, {i: 1 for i in range(8) if i != 3}, False),
    (64, {i: 1 for i in range(1, 64)}, False),
    (8, {i: 2 for i in range(8)}, False),  # two such rounds
    (4, {i: 3 for i in range(4)}, False),  # every node at its limit
    (1, {0: 4}, True),  # a crash loop on one node
    (8, {5: 4}, True),  # one node out of retries fails the Job at once (the others need it)
    (8, {5: 4, 6: 1}, True),
])
def test_retries_hold_per_node(nodes, failed, fails):
    for stage in build.STAGES:
        spec = build.build_job(make_doc(nodes=nodes), stage, Options())["spec"]
        assert _job_fails(spec, failed) == fails, (stage, failed)
        assert spec["maxFailedIndexes"] == 0
        if not fails:  # where per-index limits are off, backoffLimit alone still lets this run on
            legacy = {k: v for k, v in spec.items() if k not in ("backoffLimitPerIndex", "maxFailedIndexes")}
            assert not _job_fails(legacy, failed)


def test_the_global_limit_is_never_reached_before_a_per_index_one():
    """More than backoffLimit failures in all means some index had more than its own limit, so
    backoffLimit only matters where the per-index limits are off."""
    for nodes in (1, 2, 8):
        spec = build.build_job(make_doc(nodes=nodes), "train", Options())["spec"]
        at_limit = {i: spec["backoffLimitPerIndex"] for i in range(nodes)}
        assert sum(at_limit.values()) == spec["backoffLimit"] and not _job_fails(spec, at_limit)


def test_readme_states_the_grace_period_the_checkpoint_deadline_and_the_retries():
    text = " ".join((REPO / "README.md").read_text().split())
    assert f"a {build.GRACE_PERIOD_S} s termination grace period of which the workers get " \
           f"{torchrun.SHUTDOWN_TIMEOUT_S} s after SIGTERM to write their checkpoint" in text
    assert "600 s to checkpoint" not in text
    assert f"may fail {build.BACKOFF_LIMIT_PER_INDEX} times (`backoffLimitPerIndex: " \
           f"{build.BACKOFF_LIMIT_PER_INDEX}`)" in text
    assert f"up to {RESTARTS} times per pod" in text


FAKE_KUBECTL = r"""#!/bin/sh
# kubectl for the wait recipes: `get` evaluates the jsonpath with the real kubectl on $JOB_FILE
# (the Job as the API server would return it); `wait` checks $JOB_FILE's conditions; a wait
# that would block (anything but --timeout=0 on an unmet condition) is logged as a hang.
echo "kubectl $*" >> "$LOG"
case "$1" in
  get) for a in "$@"; do [ "$prev" = "-o" ] && out="$a"; prev="$a"; done
       exec "$REAL_KUBECTL" annotate --local -f "$JOB_FILE" x=y -o "$out" ;;
  wait) if grep -q "type: Complete" "$JOB_FILE"; then exit 0; fi
        case "$*" in *--timeout=0\ *|*--timeout=0) ;; *) echo HANG >> "$LOG" ;; esac
        echo "error: timed out waiting for the condition on jobs/x" >&2; exit 1 ;;
  apply) echo "applied: $(cat)" >> "$LOG" ;;
esac
"""


def _wait_recipes() -> dict[str, str]:
    header = render_text(make_doc(), Options()).split("\n---\n")[0].splitlines()
    start = header.index("# below do that; with plain kubectl:") + 1
    rendered = "\n".join(line.removeprefix("#   ") for line in header[start:] if line.startswith("#   "))
    readme = (REPO / "README.md").read_text().split("**Without the operator (GitOps).**")[1]
    return {"render header": rendered, "README": readme.split("```sh\n")[1].split("```")[0]}


@pytest.mark.parametrize("where", ["render header", "README"])
@pytest.mark.parametrize("condition, trained", [("Complete", True), ("Failed", False)])
def test_the_kubectl_wait_recipe_ends_when_the_cache_job_fails(tmp_path, where, condition, trained):
    """`kubectl wait --for=condition=complete --timeout=24h` sat out 24 h on a failed cache Job."""
    real = shutil.which("kubectl")
    if real is None:
        pytest.skip("kubectl is not installed (apt-get install kubectl)")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("kubectl", FAKE_KUBECTL), ("trainingjob", '#!/bin/sh\necho "render $*"\n')):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    job_file = tmp_path / "job.yaml"
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "smoke-cache"},
           "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "b"}], "restartPolicy": "Never"}}},
           "status": {"conditions": [{"type": "FailureTarget" if condition == "Failed" else "SuccessCriteriaMet",
                                      "status": "True"}, {"type": condition, "status": "True"},
                                     {"type": "Suspended", "status": "False"}]}}
    job_file.write_text(yaml.safe_dump(job))
    log = tmp_path / "log"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LOG": str(log), "JOB_FILE": str(job_file), "REAL_KUBECTL": real}
    proc = subprocess.run(["sh", "-c", _wait_recipes()[where]], env=env, capture_output=True, text=True, timeout=60)
    calls = log.read_text()
    assert "HANG" not in calls, calls
    assert "kubectl get" in calls and "applied: render" in calls  # the cache stage was applied, then watched
    assert ("--stage train" in calls) == trained, calls
    assert (proc.returncode == 0) == trained, proc.stderr


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
    problems = checks.kubernetes_problems(doc)
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
    warnings = checks.kubernetes_warnings(doc)
    assert len(warnings) == warned
    if warned:
        assert warnings[0].startswith("spec.datasets[1].path: ") and "is on no volume in the pod" in warnings[0]
    assert checks.kubernetes_problems(doc) == []  # an image may hold the photos: never a refusal


def test_render_cli_prints_objects_in_apply_order_with_sync_waves(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "runner", "render", str(EXAMPLE), "--set", "spec.hardware.nodes=2"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "kubectl wait --for=condition=complete --timeout=0 job/smoke-cache &&" in proc.stdout
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


@pytest.mark.parametrize("accelerator, resources, refused", [
    ("cuda12", {"limits": {"nvidia.com/gpu": 8, "memory": "1Ti"}}, ["limits.nvidia.com/gpu: 8 is not spec.hardware.gpusPerNode (2)"]),
    ("cuda12", {"requests": {"nvidia.com/gpu": "4"}, "limits": {"nvidia.com/gpu": 2}},
     ["requests.nvidia.com/gpu: 4 is not spec.hardware.gpusPerNode (2)"]),
    ("cuda12", {"limits": {"nvidia.com/gpu": 2, "memory": "1Ti"}}, []),    # the same number: as rendered anyway
    ("rocm", {"limits": {"amd.com/gpu": 1}}, ["limits.amd.com/gpu: 1 is not"]),
    ("rocm", {"limits": {"nvidia.com/gpu": 8}}, []),    # not the resource this hardware's pods ask for
    ("cpu", {"limits": {"nvidia.com/gpu": 8}}, []),
])
def test_a_gpu_count_in_resources_that_is_not_gpus_per_node_is_refused(accelerator, resources, refused):
    """The pods get exactly gpusPerNode GPUs (one process each); another count in resources was
    dropped without a word."""
    doc = make_doc(accelerator=accelerator, gpus=2, resources=resources)
    problems = checks.kubernetes_problems(doc)
    assert len(problems) == len(refused) and all(want in got for want, got in zip(refused, problems)), problems
    if not refused:
        render_objects(doc, Options())
