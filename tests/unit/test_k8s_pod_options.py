"""What spec.kubernetes adds to every pod (env, envFrom, pull Secrets, affinity, priority and
runtime classes, pod labels and annotations), what it may not override, the trainer pods' API
token, and the cluster-level flags of `render` and `operator` (--name, --pod-monitor-label).
Tables on the pure builders and checks, then kubernetes-validate --strict on what render prints."""
from __future__ import annotations

import argparse

import kubernetes_validate
import pytest
import yaml

from runner.k8s import build, checks, options
from runner.k8s.build import Options
from runner.k8s.render import RenderError, render_objects, render_text
from tests.unit.test_k8s_build import EXAMPLE, VERSIONS, env, make_doc, pod

HF_TOKEN = "hf_" + "aBcDeFgHiJkLmNoPqRsTuVwXyZ012345"  # shaped like a Hub token; no real one

# Every option at once, in the Kubernetes API's own shapes.
POD_OPTIONS = yaml.safe_load("""
env:
  - {name: HF_ENDPOINT, value: "https://hub-mirror.internal"}
  - {name: HF_HUB_OFFLINE, value: "1"}
  - {name: HTTPS_PROXY, valueFrom: {secretKeyRef: {name: proxy, key: url}}}
  - {name: NCCL_SOCKET_IFNAME, valueFrom: {configMapKeyRef: {name: nccl, key: ifname, optional: true}}}
  - {name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
  - {name: OMP_NUM_THREADS, valueFrom: {resourceFieldRef: {resource: limits.cpu, divisor: 1}}}
  - {name: GLOO_SOCKET_IFNAME, value: "$(POD_IP)"}
envFrom:
  - {configMapRef: {name: cluster-net}}
  - {secretRef: {name: extra, optional: true}, prefix: X_}
imagePullSecrets: [{name: regcred}]
priorityClassName: training-high
runtimeClassName: nvidia
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms: [{matchExpressions: [{key: gpu.product, operator: In, values: [H200]}]}]
    preferredDuringSchedulingIgnoredDuringExecution:
      - {weight: 10, preference: {matchFields: [{key: metadata.name, operator: NotIn, values: [bad-node]}]}}
  podAntiAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      - {topologyKey: kubernetes.io/hostname, labelSelector: {matchLabels: {diffusion.runner.dev/stage: train}}}
  podAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 5
        podAffinityTerm: {topologyKey: topology.kubernetes.io/zone, namespaces: [ml],
                          namespaceSelector: {matchExpressions: [{key: team, operator: Exists}]}}
podMetadata:
  labels: {sidecar.istio.io/inject: "false", team: vision}
  annotations: {cluster-autoscaler.kubernetes.io/safe-to-evict: "false"}
""")


def with_options(accelerator="cuda12", nodes=2, **changes) -> dict:
    return make_doc(accelerator, nodes=nodes, gpus=8, secrets=True, **{**POD_OPTIONS, **changes})


# --------------------------------------------------------------------------- rendered into every pod

@pytest.mark.parametrize("accelerator, nodes", [("cpu", 1), ("cuda12", 4), ("rocm", 2)])
def test_every_pod_option_passes_kubernetes_validate_strict(accelerator, nodes):
    doc = with_options(accelerator, nodes=nodes)
    text = render_text(doc, Options(pod_monitor=True, pod_monitor_labels=(("release", "kube-prometheus-stack"),),
                                    content_named_config=True))
    kinds = []
    for obj in yaml.safe_load_all(text):
        if obj["kind"] == "PodMonitor":
            continue
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        kinds.append(obj["kind"])
    assert kinds == ["ConfigMap", "Job", "Service", "Job"]


@pytest.mark.parametrize("stage", ["cache", "train"])
@pytest.mark.parametrize("field, where, expected", [
    ("imagePullSecrets", "pod", [{"name": "regcred"}]),
    ("priorityClassName", "pod", "training-high"),
    ("runtimeClassName", "pod", "nvidia"),
    ("affinity", "pod", POD_OPTIONS["affinity"]),
    ("envFrom", "container", POD_OPTIONS["envFrom"]),
])
def test_pod_options_reach_both_stages_in_their_own_shape(stage, field, where, expected):
    spec = pod(with_options(), stage)
    assert (spec if where == "pod" else spec["containers"][0])[field] == expected


@pytest.mark.parametrize("stage", ["cache", "train"])
def test_env_comes_after_the_runners_own(stage):
    """After them, so `$(POD_IP)` resolves; the runner's own variables stay as they were."""
    container = pod(with_options(), stage)["containers"][0]
    names = [e["name"] for e in container["env"]]
    own = [e["name"] for e in build.own_env(with_options(), stage)]
    assert names == own + [e["name"] for e in POD_OPTIONS["env"]]
    assert env(pod(with_options(), stage))["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}


@pytest.mark.parametrize("name, value", [("HF_HOME", "/data/hf"), ("HOME", "/cache/home"), ("PYTHONUNBUFFERED", "0")])
def test_the_runners_defaults_may_be_replaced_in_place(name, value):
    """E.g. HF_HOME on a read-only volume that holds the models, with HF_HUB_OFFLINE."""
    doc = with_options(env=[{"name": name, "value": value}])
    assert checks.kubernetes_problems(doc) == []
    variables = pod(doc)["containers"][0]["env"]
    assert [e["name"] for e in variables].count(name) == 1
    assert [e["name"] for e in variables].index(name) == [e["name"] for e in build.own_env(doc, "train")].index(name)
    assert env(pod(doc))[name] == {"name": name, "value": value}


def test_pod_labels_and_annotations_join_the_runners():
    template = build.build_job(with_options(nodes=1), "train", Options())["spec"]["template"]
    labels, annotations = template["metadata"]["labels"], template["metadata"]["annotations"]
    assert labels["sidecar.istio.io/inject"] == "false" and labels["team"] == "vision"
    assert labels["diffusion.runner.dev/job"] == "smoke" and labels["diffusion.runner.dev/stage"] == "train"
    assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert annotations["prometheus.io/scrape"] == "true"  # the runner's, where every pod serves
    job = build.build_job(with_options(nodes=1), "train", Options())
    assert "team" not in job["metadata"]["labels"]  # the pods', not the Job's
    opted_out = with_options(nodes=1, podMetadata={"annotations": {"prometheus.io/scrape": "false"}})
    meta = build.build_job(opted_out, "train", Options())["spec"]["template"]["metadata"]
    assert meta["annotations"]["prometheus.io/scrape"] == "false"  # yours win over the runner's


def test_without_options_the_pods_are_as_before():
    spec = pod(make_doc())
    assert not {"imagePullSecrets", "affinity", "priorityClassName", "runtimeClassName"} & set(spec)
    assert "envFrom" not in spec["containers"][0]
    assert [e["name"] for e in spec["containers"][0]["env"]] == [e["name"] for e in build.own_env(make_doc(), "train")]


# --------------------------------------------------------------------------- what the runner keeps

@pytest.mark.parametrize("env_name, refused", [
    ("MASTER_ADDR", "the runner sets it on every pod"), ("MASTER_PORT", "the runner sets it on every pod"),
    ("JOB_COMPLETION_INDEX", "the runner sets it on every pod"), ("POD_IP", "the runner sets it on every pod"),
    ("TRAININGJOB_RUN_ID", "the runner sets it on every pod"), ("TRAININGJOB_CACHE", "TRAININGJOB_* variables"),
    ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_* variables"),
    ("LOCAL_RANK", "torchrun sets it for each worker"), ("RANK", "torchrun"), ("WORLD_SIZE", "torchrun"),
    # torchrun reads PET_<OPTION> for an option not on its command line: a one-node job waited for two
    ("PET_NNODES", "torchrun reads PET_<OPTION>"), ("PET_MAX_RESTARTS", "torchrun reads PET_<OPTION>"),
    # the GPUs the device plugin gave the pod
    ("CUDA_VISIBLE_DEVICES", "the GPU device plugin sets it"), ("NVIDIA_VISIBLE_DEVICES", "the GPU device plugin"),
    ("HIP_VISIBLE_DEVICES", "the GPU device plugin"), ("ROCR_VISIBLE_DEVICES", "the GPU device plugin"),
    ("HF_TOKEN", "spec.kubernetes.secrets.hubToken fills it"),
    ("WANDB_API_KEY", "spec.kubernetes.secrets.wandbApiKey fills it"),
    ("TRAININGJOB_DEBUG", None), ("HF_HOME", None), ("NCCL_DEBUG", None),
    ("TRAININGJOB_METRICS_HOLD_S", None),  # the divergence hold, which matters in a pod (README: Alerts)
    ("PETS", None), ("CUDA_MODULE_LOADING", None),
])
def test_env_may_not_set_the_runners_variables(env_name, refused):
    doc = with_options(env=[{"name": "HF_ENDPOINT", "value": "http://m"},
                            {"name": env_name, "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}])
    problems = checks.kubernetes_problems(doc)
    if refused is None:
        assert problems == []
        return
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"spec.kubernetes.env[1].name: {env_name} is not yours to set: ")
    assert refused in problems[0]
    with pytest.raises(RenderError):
        render_objects(doc, Options())


@pytest.mark.parametrize("source, warned", [
    ({"configMapRef": {"name": "cluster-net"}}, True),  # any key: PET_NNODES, CUDA_VISIBLE_DEVICES...
    ({"secretRef": {"name": "extra"}, "prefix": "X_"}, False),  # X_<KEY> is no variable env may not set
    ({"configMapRef": {"name": "c"}, "prefix": "CFG_"}, False),
    ({"configMapRef": {"name": "c"}, "prefix": "PET_"}, True),
    ({"configMapRef": {"name": "c"}, "prefix": "P"}, True),  # P + ET_NNODES
    ({"configMapRef": {"name": "c"}, "prefix": "CUDA_"}, True),  # CUDA_ + VISIBLE_DEVICES
    ({"configMapRef": {"name": "c"}, "prefix": "TRAININGJOB_X"}, True),
])
def test_an_env_from_source_that_could_set_a_reserved_variable_is_warned_about(source, warned):
    """Its keys come from a ConfigMap or Secret when a pod starts, so they cannot be refused as env's
    are; Kubernetes' precedence of `env` protects only what the runner sets on the pod itself."""
    doc = make_doc(envFrom=[source])
    assert checks.kubernetes_problems(doc) == []
    found = [w for reason, w in checks.warning_events(doc) if reason == "EnvFromUnchecked"]
    assert len(found) == warned, found
    if warned:
        kind = next(iter(k for k in source if k.endswith("Ref")))
        assert found[0].startswith(f"spec.kubernetes.envFrom[0]: the keys of {kind} {source[kind]['name']} are read "
                                   "only when a pod starts, so they are not checked here")
        for name in ("PET_*", "TRAININGJOB_*", "LOCAL_RANK", "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",
                     "`prefix`"):
            assert name in found[0]


def test_render_warns_about_an_env_from_source(cli):
    result = cli("render", EXAMPLE, "--set", "spec.kubernetes.envFrom=[{configMapRef: {name: cluster-net}}]")
    assert result.code == 0, result.err
    assert "warning: spec.kubernetes.envFrom[0]: the keys of configMapRef cluster-net are read only when" in result.err


def test_a_token_variable_is_yours_when_no_secret_fills_it():
    """E.g. HF_TOKEN from your own Secret to download a gated model, without a push."""
    doc = make_doc(env=[{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "mine", "key": "t"}}}])
    assert checks.kubernetes_problems(doc) == []
    assert env(pod(doc))["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "mine"


@pytest.mark.parametrize("kind, key, refused", [
    ("labels", "app.kubernetes.io/instance", "the runner sets it"),
    ("labels", "app.kubernetes.io/managed-by", "the runner sets it"),
    ("labels", "diffusion.runner.dev/job", "the runner sets it"),
    ("labels", "diffusion.runner.dev/stage", "the runner sets it"),
    ("labels", "job-name", "the Job controller sets it"),
    ("labels", "batch.kubernetes.io/controller-uid", "the Job controller sets it"),
    ("annotations", "batch.kubernetes.io/job-completion-index", "the Job controller sets it"),
    ("labels", "diffusion.runner.dev/team", "the runner sets it"),  # the runner's API group is its own
    ("labels", "app.kubernetes.io/version", None), ("labels", "team", None), ("annotations", "job-name", None),
])
def test_pod_metadata_may_not_take_the_labels_the_pods_are_found_by(kind, key, refused):
    doc = make_doc(podMetadata={kind: {key: "x"}})
    problems = checks.kubernetes_problems(doc)
    if refused is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].startswith(f"spec.kubernetes.podMetadata.{kind}: {key} is not yours "
                                                             "to set: ") and refused in problems[0], problems


# --------------------------------------------------------------------------- validate: shapes and secrets

def spec_file(tmp_path, **k8s) -> str:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["kubernetes"].update(k8s)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.mark.parametrize("var, refused", [
    ({"name": "HF_TOKEN", "value": HF_TOKEN}, "HF_TOKEN names a secret"),
    ({"name": "MY_SETTING", "value": HF_TOKEN}, "MY_SETTING has a value shaped like a credential"),
    ({"name": "HTTPS_PROXY", "value": "http://user:pa55word@proxy.internal:3128"}, "shaped like a credential"),
    ({"name": "AWS_SECRET_ACCESS_KEY", "value": "short"}, "names a secret"),
    ({"name": "HF_HUB_DISABLE_IMPLICIT_TOKEN", "value": "1"}, None),  # a flag, though its name says token
    ({"name": "HTTPS_PROXY", "value": "http://proxy.internal:3128"}, None),
    ({"name": "HF_ENDPOINT", "value": "https://hub-mirror.internal"}, None),
])
def test_a_secret_in_an_env_value_is_refused_without_echo(tmp_path, cli, var, refused):
    result = cli("validate", spec_file(tmp_path, env=[var]))
    if refused is None:
        assert result.code == 0, result.err
        return
    assert result.code == 2
    assert "spec.kubernetes.env[0].value: " in result.err and refused in result.err
    assert "valueFrom.secretKeyRef" in result.err
    assert var["value"] not in result.text and "pa55word" not in result.text


@pytest.mark.parametrize("k8s, expect", [
    ({"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]},
     "spec.kubernetes.env[1].name: A is given twice (also env[0])"),
    ({"env": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]},
     "spec.kubernetes.env[0]: give a variable value or valueFrom, not both"),
    ({"env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "a"}, "secretKeyRef": {"name": "s", "key": "k"}}}]},
     "spec.kubernetes.env[0].valueFrom: give exactly one of secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef"),
    ({"env": [{"name": "A", "value": 1}]}, "spec.kubernetes.env[0].value: 1 is an integer, expected string"),
    ({"env": [{"name": "1A", "value": "x"}]}, "spec.kubernetes.env[0].name: '1A' does not match"),
    ({"envFrom": [{"prefix": "X_"}]}, "spec.kubernetes.envFrom[0]: give one of configMapRef or secretRef"),
    ({"imagePullSecrets": [{"name": "r"}, {"name": "r"}]}, "spec.kubernetes.imagePullSecrets[1].name: r is given twice"),
    # A Secret's name is no secret: shown, though the field's path says "Secrets" (a value shaped
    # like a credential is still hidden: test_a_secret_reference_shows_its_name_never_a_credential)
    ({"imagePullSecrets": [{"name": "Reg_Cred"}]},
     "spec.kubernetes.imagePullSecrets[0].name: 'Reg_Cred' does not match the required pattern"),
    ({"envFrom": [{"secretRef": {"name": "Proxy_Settings"}}]},
     "spec.kubernetes.envFrom[0].secretRef.name: 'Proxy_Settings' does not match the required pattern"),
    ({"podMetadata": {"labels": {"team": "a b"}}}, "spec.kubernetes.podMetadata.labels.team: 'a b' does not match"),
    ({"podMetadata": {"labels": {"bad key!": "x"}}}, "spec.kubernetes.podMetadata.labels: 'bad key!' is not a Kubernetes"),
    ({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}},
     "nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms: required field is missing"),
    ({"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 0, "podAffinityTerm": {"topologyKey": "k"}}]}}}, "weight: 0 is less than the minimum of 1"),
    ({"priorityClassName": "High"}, "spec.kubernetes.priorityClassName: 'High' does not match"),
])
def test_pod_options_are_checked_with_the_field_named(tmp_path, cli, k8s, expect):
    result = cli("validate", spec_file(tmp_path, **k8s))
    assert result.code == 2 and expect in result.err, result.err


@pytest.mark.parametrize("k8s, field", [
    ({"imagePullSecrets": [{"name": HF_TOKEN}]}, "spec.kubernetes.imagePullSecrets[0].name"),
    ({"envFrom": [{"secretRef": {"name": HF_TOKEN}}]}, "spec.kubernetes.envFrom[0].secretRef.name"),
    ({"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": HF_TOKEN + "/x"}}}]},
     "spec.kubernetes.env[0].valueFrom.secretKeyRef.key"),
])
def test_a_secret_reference_shows_its_name_never_a_credential(tmp_path, cli, k8s, field):
    result = cli("validate", spec_file(tmp_path, **k8s))
    assert result.code == 2 and f"{field}: <hidden: may be a secret>" in result.err, result.err
    assert HF_TOKEN not in result.text


def test_the_options_are_documented_where_users_look(cli):
    out = cli("explain", "spec.kubernetes.env").out
    assert "valueFrom.secretKeyRef" in out and "HF_ENDPOINT" in out
    assert "<[]Object>" in out
    assert "nodeSelectorTerms" in cli("explain", "spec.kubernetes.affinity.nodeAffinity."
                                             "requiredDuringSchedulingIgnoredDuringExecution").out


# --------------------------------------------------------------------------- the API token

@pytest.mark.parametrize("account, mounted", [(None, False), ("trainer", None)])
def test_trainer_pods_get_no_api_token_unless_given_an_account(account, mounted):
    """The trainer never calls the Kubernetes API (the operator reads rank 0's /metrics), so the
    default account's token is not mounted; a named account may be there for the user's reasons."""
    doc = make_doc(**({"serviceAccountName": account} if account else {}))
    for stage in build.STAGES:
        spec = pod(doc, stage)
        assert spec.get("automountServiceAccountToken") is mounted
        assert spec.get("serviceAccountName") == account


# --------------------------------------------------------------------------- render and operator flags

def parse(command: str, *argv: str) -> argparse.Namespace:
    from runner.cli import build_parser

    return build_parser().parse_args([command, *([str(EXAMPLE)] if command == "render" else []), *argv])


@pytest.mark.parametrize("command", ["render", "operator"])
@pytest.mark.parametrize("argv, problem", [
    (["--name", "other"], None),
    (["--name", "team/trainer", "--registry", "reg.example:5000/ml"], None),
    (["--name", "Other"], "--name: 'Other' is not an image name"),
    (["--name", ""], "--name: '' is not an image name"),
    (["--pod-monitor", "--pod-monitor-label", "release=kube-prometheus-stack"], None),
    (["--pod-monitor", "--pod-monitor-label", "release"], "--pod-monitor-label: 'release': it is not KEY=VALUE"),
    (["--pod-monitor", "--pod-monitor-label", "release=a b"], "a label value is at most 63"),
    (["--pod-monitor", "--pod-monitor-label", "app.kubernetes.io/instance=x"], "the runner sets that label itself"),
    (["--pod-monitor-label", "release=x"], "--pod-monitor-label: labels PodMonitors, so it needs --pod-monitor"),
])
def test_render_and_the_operator_take_the_same_flags(command, argv, problem):
    opts, problems = options.from_args(parse(command, *argv))
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0], problems


@pytest.mark.parametrize("key, runners", [
    ("app.kubernetes.io/instance", True), ("app.kubernetes.io/component", True),
    ("diffusion.runner.dev/job", True), ("diffusion.runner.dev/anything", True),
    ("app.kubernetes.io/version", False), ("release", False), ("team", False),
])
def test_pods_and_pod_monitors_agree_on_which_labels_are_the_runners(key, runners):
    """Two definitions disagreed: app.kubernetes.io/version was refused on a PodMonitor (a prefix
    rule) and taken on the pods (the keys the builder sets)."""
    on_pods = checks.kubernetes_problems(make_doc(podMetadata={"labels": {key: "x"}}))
    on_monitors = options.monitor_labels([f"{key}=x"])[1]
    assert (bool(on_pods), bool(on_monitors)) == (runners, runners), (on_pods, on_monitors)


def test_render_names_the_image_it_was_told(cli):
    """`make push NAME=other` images were reachable only through spec.kubernetes.image."""
    result = cli("render", EXAMPLE, "--registry", "reg.example/ml", "--name", "other", "--version", "1.2")
    assert result.code == 0, result.err
    images = {c["image"] for o in yaml.safe_load_all(result.out) if o and o["kind"] == "Job"
              for c in o["spec"]["template"]["spec"]["containers"]}
    assert images == {"reg.example/ml/other:1.2-cpu"}
    bad = cli("render", EXAMPLE, "--name", "Other")
    assert bad.code == 2 and "--name: 'Other' is not an image name" in bad.err and bad.out == ""


def test_render_labels_the_pod_monitor_for_kube_prometheus_stack(cli):
    """Its default podMonitorSelector is `release: <Helm release>`: an unlabelled one is never scraped."""
    result = cli("render", EXAMPLE, "--pod-monitor", "--pod-monitor-label", "release=kube-prometheus-stack")
    assert result.code == 0, result.err
    [monitor] = [o for o in yaml.safe_load_all(result.out) if o and o["kind"] == "PodMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["metadata"]["labels"]["diffusion.runner.dev/job"] == "smoke"  # the runner's own stay


def test_the_operator_builds_its_pod_monitors_from_the_same_options():
    opts, problems = options.from_args(parse("operator", "--pod-monitor", "--pod-monitor-label", "release=kps",
                                             "--name", "other"))
    assert problems == []
    monitor = build.build_pod_monitor(make_doc(), opts)
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert pod(make_doc(), opts=opts)["containers"][0]["image"].startswith(f"{opts.registry}/other:")
