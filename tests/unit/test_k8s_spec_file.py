"""The spec the pods read (runner/k8s/specfile.py): a checkpoint to resume from and a local model
folder placed on the volumes like the other paths (or warned about), the defaults left to the
trainer (an older trainer image reads it), and with `render` a ConfigMap named by its content, so
an edited spec applied mid-run never reaches the pods of the run already going."""
from __future__ import annotations

import copy
import json
from datetime import timedelta

import jsonschema
import pytest
import yaml

from runner.k8s import build, checks, specfile
from runner.k8s.build import Options, Owner
from runner.k8s.reconcile import started_document, validated
from runner.spec import schema as schema_mod
from runner.spec.load import job_from_document
from tests.unit.test_k8s_build import EXAMPLE, make_doc
from tests.unit.test_k8s_reconcile import T0, Cluster, trainingjob


def placed(doc: dict) -> dict:
    return build.pod_document(doc)["spec"]


# --------------------------------------------------------------------------- resume and pretrained

@pytest.mark.parametrize("resume, seen, warned", [
    ("checkpoints/step-8", "/output/checkpoints/step-8", False),  # the working directory is the volume's root
    ("smoke/checkpoints/step-8", "/output/smoke/checkpoints/step-8", False),  # under output.dir (smoke)
    ("./smoke/checkpoints/step-8", "/output/smoke/checkpoints/step-8", False),
    ("/output/old-run/checkpoints/step-4", "/output/old-run/checkpoints/step-4", False),  # absolute, on a volume
    ("/srv/checkpoints/step-8", "/srv/checkpoints/step-8", True),  # absolute, on no volume
    ("../elsewhere/step-8", "../elsewhere/step-8", True),  # climbs out of the working directory
    ("auto", "auto", False), ("none", "none", False),
])
def test_a_checkpoint_to_resume_from_is_placed_on_the_output_volume(resume, seen, warned):
    """`--set spec.training.resume=checkpoints/step-8` stayed relative: in the pod, under /workspace."""
    doc = make_doc()
    doc["spec"]["training"]["resume"] = resume
    assert placed(doc)["training"]["resume"] == seen
    events = [(reason, w) for reason, w in checks.warning_events(doc) if reason == "ResumeNotOnVolume"]
    assert len(events) == warned, events
    if warned:
        assert events[0][1].startswith(f"spec.training.resume: {seen} is on no volume in the pod")
    assert checks.kubernetes_problems(doc) == []  # warned, like a dataset: never refused
    assert build.pod_document(build.pod_document(doc)) == build.pod_document(doc)  # idempotent


@pytest.mark.parametrize("pretrained, data_volume, seen, warned", [
    ("./models/pixart", True, "/data/models/pixart", False),  # inputs go on the data volume, as datasets do
    ("./models/pixart", False, "./models/pixart", True),  # no volume to put it on
    ("./smoke/model", False, "/output/smoke/model", False),  # a model exported under output.dir
    ("./photos/set-1/model", True, "/data/photos/set-1/model", False),
    ("/data/models/pixart", True, "/data/models/pixart", False),
    ("/models/pixart", True, "/models/pixart", True),
    ("~/models/pixart", True, "~/models/pixart", True),  # HOME is /tmp in the pods
    ("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", False, "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", False),  # a Hub id
    ("builtin:tiny-pixart-sigma", False, "builtin:tiny-pixart-sigma", False),
])
def test_a_local_model_folder_is_placed_on_a_volume_or_warned_about(pretrained, data_volume, seen, warned):
    doc = make_doc()
    doc["spec"]["model"]["pretrained"] = pretrained
    if not data_volume:
        doc["spec"]["kubernetes"]["volumes"].pop("data")
        doc["spec"]["datasets"].pop()  # the local dataset that needs it
    assert placed(doc)["model"]["pretrained"] == seen
    events = [w for reason, w in checks.warning_events(doc) if reason == "ModelNotOnVolume"]
    assert len(events) == warned, events
    if warned:
        assert events[0].startswith(f"spec.model.pretrained: {seen} is on no volume in the pod")


def test_render_places_resume_and_warns_about_a_model_on_no_volume(cli):
    result = cli("render", EXAMPLE, "--set", "spec.training.resume=checkpoints/step-8",
                 "--set", "spec.model.pretrained=./models/pixart")
    assert result.code == 0, result.err
    config = next(o for o in yaml.safe_load_all(result.out) if o and o["kind"] == "ConfigMap")
    spec = yaml.safe_load(config["data"][build.SPEC_FILE])["spec"]
    assert spec["training"]["resume"] == "/output/checkpoints/step-8"
    assert "warning: spec.model.pretrained: ./models/pixart is on no volume in the pod" in result.err


# --------------------------------------------------------------------------- defaults left to the trainer

def spec_file_doc(doc: dict) -> dict:
    return yaml.safe_load(build.build_config_map(doc, Options())["data"][build.SPEC_FILE])


def test_the_pods_spec_leaves_defaults_to_the_trainer():
    doc = make_doc("cuda12", gpus=8)
    seen = spec_file_doc(doc)
    full = build.pod_document(doc)
    assert "optimizer" not in seen["spec"]["training"] and "attention" not in seen["spec"].get("model", {})
    assert seen["spec"]["training"]["maxSteps"] == 20  # what the user set stays
    assert seen["spec"]["cacheDir"] == "/cache/smoke"  # and what the paths became
    # What the pods are built from is kept whole, so the trainer reads what its pod was made for.
    assert seen["spec"]["hardware"] == full["spec"]["hardware"] == {"accelerator": "cuda12", "nodes": 1,
                                                                     "gpusPerNode": 8}
    assert seen["spec"]["metrics"] == {"port": 9090}
    # The trainer fills the defaults back: the same spec as before, field for field, but for the
    # parts of spec.kubernetes it never reads.
    back, whole = job_from_document(seen).document.to_dict(), job_from_document(full).document.to_dict()
    assert back["spec"].pop("kubernetes")["volumes"] == whole["spec"].pop("kubernetes")["volumes"]
    assert back == whole


def older_schema(drop: list[str]) -> dict:
    """This version's schema without some fields, as an older trainer image's would be."""
    schema = copy.deepcopy(schema_mod.load_schema())
    for dotted in drop:
        *parents, leaf = dotted.split(".")
        node = schema
        for part in parents:
            node = node["properties"][part]
        del node["properties"][leaf]
    return schema


def test_an_older_trainer_image_reads_the_pods_spec():
    """With every default filled in, a trainer whose schema lacks a newer field refused the spec
    (unknown field) and the pods exited 2."""
    newer = ["spec.model.feedForward", "spec.training.ddp", "spec.training.residualStream"]
    old = jsonschema.Draft202012Validator(older_schema(newer))
    doc = make_doc()
    assert [e.message for e in old.iter_errors(spec_file_doc(doc))] == []
    assert [e.message for e in old.iter_errors(json.loads(json.dumps(build.pod_document(doc))))] != []  # as it was


# Fields of spec.kubernetes newer than the lean spec file: only the pods are built from them.
POD_ONLY = {"env": [{"name": "HF_ENDPOINT", "value": "https://hub-mirror.internal"}],
            "envFrom": [{"configMapRef": {"name": "cluster-net"}, "prefix": "CFG_"}],
            "imagePullSecrets": [{"name": "regcred"}], "priorityClassName": "training-high",
            "runtimeClassName": "nvidia",
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "gpu.product", "operator": "In", "values": ["H200"]}]}]}}},
            "podMetadata": {"labels": {"team": "vision"}, "annotations": {"proxy": "http://proxy.internal:3128"}}}


def test_the_pods_spec_holds_only_what_the_trainer_reads_of_spec_kubernetes():
    """The pod options stayed in the pods' file though the trainer never reads them, so an older
    trainer image (its schema without them) refused the spec and every pod exited 2; the test
    above dropped only fields left at their defaults, so it could not see that."""
    doc = make_doc(**POD_ONLY)
    seen = spec_file_doc(doc)
    assert list(seen["spec"]["kubernetes"]) == ["volumes"]  # what tells the trainer what lies only in the pod
    old = jsonschema.Draft202012Validator(older_schema([f"spec.kubernetes.{field}" for field in POD_ONLY]))
    assert [e.message for e in old.iter_errors(seen)] == []
    # The pods themselves still get every option, and the operator's copy keeps them.
    template = build.build_job(doc, "train", Options())["spec"]["template"]
    assert template["spec"]["affinity"] == POD_ONLY["affinity"] and template["metadata"]["labels"]["team"] == "vision"
    data = build.build_config_map(doc, Options())["data"]
    assert yaml.safe_load(data[build.STARTED_SPEC_FILE])["spec"]["kubernetes"]["env"] == POD_ONLY["env"]
    # ...which the pods do not mount: they read their own file only.
    [volume] = [v for v in template["spec"]["volumes"] if v["name"] == "spec"]
    assert volume["configMap"]["items"] == [{"key": build.SPEC_FILE, "path": build.SPEC_FILE}]


def _changed_defaults() -> dict:
    """This version's schema with other defaults, as a later operator's could have."""
    schema = copy.deepcopy(schema_mod.load_schema())
    spec = schema["properties"]["spec"]["properties"]
    spec["kubernetes"]["properties"]["imagePullPolicy"]["default"] = "Always"
    spec["output"]["properties"]["hub"]["properties"]["tokenEnv"]["default"] = "HUGGING_FACE_HUB_TOKEN"
    spec["model"]["properties"]["textEncoderMaxLength"]["default"] = 512
    return schema


def test_an_upgraded_operator_builds_the_train_job_from_the_values_the_job_started_with(monkeypatch):
    """started_document filled the defaults left out of the lean spec with the running operator's
    schema: after an upgrade between the stages, the train Job was built from other values than
    the cache Job (another pull policy, the Hub token under another variable)."""
    doc = make_doc(secrets=True)
    assert doc["spec"]["model"]["textEncoderMaxLength"] != 512
    owner = Owner("smoke", "uid-1")
    before = {o["kind"] + "/" + o["metadata"]["name"]: o for o in build.build_children(doc, Options(), owner)}
    config = before["ConfigMap/smoke-spec"]
    tj = trainingjob()
    later = _changed_defaults()
    monkeypatch.setattr(schema_mod, "load_schema", lambda: later)
    snapshot = started_document(tj, {"config": config})
    assert snapshot["spec"] == build.pod_document(doc)["spec"]  # the values it started with, every one
    after = build.build_children(snapshot, Options(), owner, stages=("train",))
    assert [o for o in after if o["kind"] == "Job"] == [before["Job/smoke-train"]]
    # A ConfigMap an older operator made holds the pods' file alone: its defaults are this version's.
    older = {**config, "data": {build.SPEC_FILE: config["data"][build.SPEC_FILE]}}
    assert started_document(tj, {"config": older})["spec"]["output"]["hub"]["tokenEnv"] == "HUGGING_FACE_HUB_TOKEN"


def test_a_field_the_user_set_to_its_default_is_left_to_the_trainer_too():
    doc = make_doc()
    doc["spec"]["training"]["optimizer"] = schema_mod.subschema("spec.training.optimizer")["default"]
    assert "optimizer" not in spec_file_doc(doc)["spec"]["training"]


def test_the_operator_runs_the_lean_spec_it_started_with():
    """started_document fills the defaults back, so the children, the status and the progress
    are built from the same spec as before, and an unchanged TrainingJob reports no edit."""
    tj = trainingjob()
    doc, problems = validated(tj)
    assert problems == []
    owner = Owner("smoke", "uid-1")
    fresh = build.build_children(doc, Options(), owner)
    snapshot = started_document(tj, {"config": fresh[0]})
    assert snapshot["spec"] == build.pod_document(doc)["spec"]
    assert build.build_children(snapshot, Options(), owner) == fresh
    c = Cluster(trainingjob())
    c.step()
    c.finish("cache")
    out = c.step(T0 + timedelta(minutes=1))
    assert [o["kind"] for o in out.create] == ["Service", "Job"]
    c.tj["metadata"]["generation"] = 2  # e.g. a label edit: the spec is unchanged
    assert not [e for e in c.step(T0 + timedelta(minutes=2)).events if e.reason == "SpecChangeIgnored"]


# --------------------------------------------------------------------------- the ConfigMap pinned by content

def rendered(doc: dict, opts: Options) -> dict[str, dict]:
    return {f"{o['kind']}/{o['metadata'].get('labels', {}).get('app.kubernetes.io/component')}": o
            for o in build.build_children(doc, opts)}


def spec_volume(job: dict) -> str:
    return next(v["configMap"]["name"] for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "spec")


def test_render_names_the_configmap_by_its_content():
    """`NAME-spec` updated in place: with render/GitOps an edited spec applied mid-run was read by
    the next retried pod of the Job already running (two specs in one run)."""
    opts = Options(content_named_config=True)
    doc = make_doc()
    first = rendered(doc, opts)
    name = first["ConfigMap/spec"]["metadata"]["name"]
    assert name == f"smoke-spec-{specfile.digest(first['ConfigMap/spec']['data'])}"
    assert spec_volume(first["Job/cache"]) == spec_volume(first["Job/train"]) == name
    assert rendered(copy.deepcopy(doc), opts) == first  # the same spec, the same objects
    edited = copy.deepcopy(doc)
    edited["spec"]["training"]["maxSteps"] = 40
    again = rendered(edited, opts)
    assert again["ConfigMap/spec"]["metadata"]["name"] != name  # a new ConfigMap; the old one stays as it was
    # ...and a changed Job template, which the API server refuses to apply over the running Job.
    assert spec_volume(again["Job/train"]) != spec_volume(first["Job/train"])


def test_the_operator_keeps_its_configmap_name():
    """The operator creates its ConfigMap once and never rewrites it (the CRD refuses spec edits of a
    started job): `NAME-spec`, as jobs it started before this change have."""
    children = rendered(make_doc(), Options())
    assert children["ConfigMap/spec"]["metadata"]["name"] == "smoke-spec"
    assert spec_volume(children["Job/train"]) == "smoke-spec"


@pytest.mark.parametrize("job", ["a" * 63, "9" * 63, "0-smoke", "smoke"])
def test_a_content_named_configmap_fits_the_name_limit(job):
    """A job name may start with a digit and take all 63 characters; the ConfigMap's name must
    still be a DNS label that starts with a letter, as the Service's beside it must."""
    doc = make_doc()
    doc["metadata"]["name"] = job
    name = build.config_map_name(doc, Options(content_named_config=True))
    assert len(name) <= 63 and name[0].isalpha() and name.endswith(f"-spec-{specfile.digest(build.config_data(doc))}")


def test_render_cli_prints_the_content_named_configmap(cli):
    first = cli("render", EXAMPLE)
    edited = cli("render", EXAMPLE, "--set", "spec.training.maxSteps=40")
    names = []
    for result in (first, edited):
        objs = [o for o in yaml.safe_load_all(result.out) if o]
        config = objs[0]["metadata"]["name"]
        assert config.startswith("smoke-spec-") and all(
            spec_volume(o) == config for o in objs if o["kind"] == "Job")
        names.append(config)
    assert names[0] != names[1]


@pytest.mark.parametrize("example", ["examples/smoke.yaml", "examples/pixart-sigma-1024.yaml",
                                     "k8s/example-trainingjob.yaml"])
def test_stripped_defaults_come_back(example):
    """strip_defaults takes out only what apply_defaults puts back, so the operator's snapshot
    of a started job is the spec it started with."""
    from runner.spec.parse import parse_document

    full = schema_mod.apply_defaults(parse_document((EXAMPLE.parents[1] / example).read_text()))
    lean = schema_mod.strip_defaults(full)
    assert schema_mod.apply_defaults(lean) == full
    assert schema_mod.strip_defaults(lean) == lean
    given_empty = {**full, "spec": {**full["spec"], "kubernetes": {**full["spec"].get("kubernetes", {}),
                                                                   "nodeSelector": {}}}}
    assert schema_mod.strip_defaults(given_empty)["spec"]["kubernetes"]["nodeSelector"] == {}  # given empty: kept
