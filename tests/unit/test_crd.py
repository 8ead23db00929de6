"""k8s/crd.yaml: generated from the schema, structural, and accepted by kubernetes-validate."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runner.k8s import crd
from runner.spec import schema as schema_mod

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "k8s" / "crd.yaml"
# What a structural schema node may contain (apiextensions.k8s.io/v1 JSONSchemaProps, minus
# what structural schemas forbid or what we never emit).
ALLOWED = set(crd.KEEP) | {"exclusiveMinimum", "exclusiveMaximum", "additionalProperties"}
FORBIDDEN = {"$ref", "$schema", "$id", "title", "const", "if", "then", "else", "$defs", "definitions"}


def committed() -> dict:
    return yaml.safe_load(CRD_FILE.read_text())


def test_committed_crd_matches_the_generator():
    assert CRD_FILE.read_text() == crd.render(), (
        "k8s/crd.yaml is stale: run `make crd` (python -m runner.k8s.crd > k8s/crd.yaml) and commit it")


def test_generator_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "runner.k8s.crd"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == CRD_FILE.read_text()


@pytest.mark.parametrize("version", ["1.30.0", "latest"])
def test_kubernetes_validate_accepts_the_crd(version):
    import kubernetes_validate

    version = kubernetes_validate.latest_version() if version == "latest" else version
    assert kubernetes_validate.validate(committed(), version, strict=True)


def test_kubernetes_validate_catches_a_draft_2020_exclusive_minimum():
    import kubernetes_validate

    bad = committed()
    training = bad["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["training"]
    training["properties"]["learningRate"]["exclusiveMinimum"] = 0
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kubernetes_validate.latest_version(), strict=True)


def test_names_scope_versions_and_columns_come_from_the_schema():
    doc = committed()
    spec = doc["spec"]
    assert doc["apiVersion"] == "apiextensions.k8s.io/v1" and doc["kind"] == "CustomResourceDefinition"
    assert spec["group"] == schema_mod.api_group()
    assert spec["names"]["kind"] == "TrainingJob" and spec["names"]["plural"] == "trainingjobs"
    assert doc["metadata"]["name"] == f"trainingjobs.{schema_mod.api_group()}"
    assert spec["scope"] == "Namespaced"
    [version] = spec["versions"]
    assert f"{spec['group']}/{version['name']}" == schema_mod.api_version()
    assert version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    default_view = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert default_view == ["State", "Stage", "Step/Total", "Loss", "ETA", "Age"]
    assert columns["Age"]["jsonPath"] == ".metadata.creationTimestamp" and columns["Age"]["type"] == "date"
    assert spec["names"]["shortNames"] == ["tj"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    for column in version["additionalPrinterColumns"]:  # every column points at a field the schema has
        path = column["jsonPath"].lstrip(".").split(".")
        if path[0] == "status":
            node = {"properties": status}
            for part in path[1:]:
                node = node["properties"][part]
            assert node["type"] == column["type"], column


def test_cel_rules_reach_the_crd_and_dataset_names_are_map_keys():
    spec = committed()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert any("maxSteps" in r["rule"] and "epochs" in r["rule"] for r in spec["x-kubernetes-validations"])
    datasets = spec["properties"]["datasets"]
    assert datasets["x-kubernetes-list-type"] == "map" and datasets["x-kubernetes-list-map-keys"] == ["name"]
    assert "name" in datasets["items"]["required"]  # the API server needs map keys to be required


def _walk(node: dict, path: str = "openAPIV3Schema"):
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from _walk(node[key], f"{path}[{key}]")
    for key in ("anyOf", "allOf", "oneOf"):
        for i, child in enumerate(node.get(key, [])):
            yield f"{path}.{key}[{i}]", child


def test_openapi_schema_is_structural():
    root = committed()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert root["properties"]["metadata"] == {"type": "object"}
    status = root["properties"]["status"]
    assert status["type"] == "object" and status["x-kubernetes-preserve-unknown-fields"] is True
    for path, node in _walk(root):
        assert not FORBIDDEN & set(node), f"{path}: {FORBIDDEN & set(node)}"
        assert set(node) <= ALLOWED, f"{path}: {set(node) - ALLOWED}"
        if ".anyOf[" in path:
            continue
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path
        elif "type" not in node:  # a quantity as a number or a string: no type, unknown fields kept
            assert node.get("x-kubernetes-preserve-unknown-fields") is True, f"{path}: every node needs a type"
            assert not {"properties", "items", "additionalProperties", "anyOf"} & set(node), path
        else:
            assert isinstance(node.get("type"), str), f"{path}: every node needs a single type"
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("additionalProperties") is not False, path
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            if key in node:
                assert node[key] is True and ("minimum" if key == "exclusiveMinimum" else "maximum") in node, path


def test_every_schema_field_reaches_the_crd():
    root = committed()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec_fields = schema_mod.load_schema()["properties"]["spec"]["properties"]
    assert set(root["properties"]["spec"]["properties"]) == set(spec_fields)
    training = root["properties"]["spec"]["properties"]["training"]["properties"]
    assert training["learningRate"] == {**training["learningRate"], "minimum": 0, "exclusiveMinimum": True}
    assert training["batchSize"]["default"] == 1


def test_translation_rules():
    schema = {
        "$schema": "x", "$id": "y", "title": "T", "type": "object", "additionalProperties": False,
        "$defs": {"name": {"type": "string", "minLength": 1}},
        "properties": {
            "a": {"const": "fixed"},
            "b": {"$ref": "#/$defs/name", "description": "inlined"},
            "c": {"type": ["string", "integer"]},
            "d": {"type": ["string", "null"]},
            "e": {"type": "number", "exclusiveMaximum": 1},
            "f": {"type": "object", "additionalProperties": {"type": "string"}},
            "g": {"type": ["string", "number"], "pattern": "^[0-9]+m?$", "minimum": 0},
        },
        "if": {"properties": {"a": {"const": "x"}}}, "then": {"required": ["b"]},
    }
    out = crd.structural(copy.deepcopy(schema), schema["$defs"])
    assert set(out) == {"type", "properties"}
    props = out["properties"]
    assert props["a"] == {"enum": ["fixed"]}
    assert props["b"] == {"type": "string", "minLength": 1, "description": "inlined"}
    assert props["c"]["x-kubernetes-int-or-string"] is True and "type" not in props["c"]
    assert props["d"] == {"type": "string", "nullable": True}
    assert props["e"] == {"type": "number", "maximum": 1, "exclusiveMaximum": True}
    assert props["f"]["additionalProperties"] == {"type": "string"}
    assert props["g"] == {"x-kubernetes-preserve-unknown-fields": True, "pattern": "^[0-9]+m?$", "minimum": 0}


def test_unknown_keywords_are_refused_not_copied():
    with pytest.raises(ValueError, match="dependentRequired"):
        crd.structural({"type": "object", "dependentRequired": {"a": ["b"]}}, {})
    with pytest.raises(ValueError, match="cannot inline"):
        crd.structural({"$ref": "https://example.com/x.json"}, {})


# ------------------------------------------------------------------ CEL and the examples

def cel_rules(node: dict, path: str = "spec"):
    """Every x-kubernetes-validations rule of the committed CRD, with the field path it sits on."""
    for rule in node.get("x-kubernetes-validations", []):
        yield path, rule
    for name, child in node.get("properties", {}).items():
        yield from cel_rules(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from cel_rules(node["items"], f"{path}[]")


def spec_root() -> dict:
    return committed()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def as_typed(value, node: dict):
    """The value as the API server hands it to CEL: a `number` field is always a double."""
    if node.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        return {k: as_typed(v, node.get("properties", {}).get(k, {})) for k, v in value.items()}
    if isinstance(value, list):
        return [as_typed(v, node.get("items", {})) for v in value]
    return value


def failing_cel(doc: dict) -> list[str]:
    """Messages of the CEL rules a (defaulted) spec breaks, evaluated by cel-python as the API
    server would after applying the CRD's defaults."""
    import celpy

    env = celpy.Environment()
    failed = []
    for path, rule in cel_rules(spec_root()):
        parts = path.split(".")[1:]
        targets = [as_typed(doc["spec"], spec_root())]
        for part in parts:
            many = part.endswith("[]")
            part = part.rstrip("[]")
            targets = [t[part] for t in targets if isinstance(t, dict) and part in t]
            if many:
                targets = [item for t in targets for item in t]
        for target in targets:
            if not env.program(env.compile(rule["rule"])).evaluate({"self": celpy.json_to_cel(target)}):
                failed.append(rule["message"])
    return failed


def _doc(**spec_changes) -> dict:
    from runner.spec.schema import apply_defaults
    from runner.spec.parse import parse_document

    doc = parse_document((REPO / "examples" / "smoke.yaml").read_text())
    for dotted, value in spec_changes.items():
        node = doc["spec"]
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return apply_defaults(doc)


# Each case breaks one rule that both CEL (at `kubectl apply`) and runner.spec.semantics (at
# `trainingjob validate` and in the operator) enforce; the messages name the same field.
CEL_CASES = {
    "valid smoke": ({}, None),
    "no maxSteps nor epochs": ({"training__maxSteps": None}, "maxSteps or epochs"),
    "local dataset without path": ({"datasets__0__type": "local"}, "path"),
    "huggingface dataset without repo": ({"datasets__0__type": "huggingface"}, "repo"),
    "instanceprompt without prompt": ({"datasets__0__captionStrategy": "instanceprompt"}, "instancePrompt"),
    "maximum without downsample": ({"datasets__0__maximumImageSize": 4096}, "targetDownsampleSize"),
    "minimum above maximum": ({"datasets__0__minimumImageSize": 3000, "datasets__0__maximumImageSize": 2000,
                               "datasets__0__targetDownsampleSize": 1000}, "minimumImageSize"),
    "hub push without repo": ({"output__hub": {"push": True}}, "repoId"),
    "wandb without project": ({"tracking__wandb": {"enabled": True}}, "project"),
    "mps with bf16": ({"hardware__accelerator": "mps", "training__mixedPrecision": "bf16"}, "mixedPrecision"),
    "staticGraph with accumulation": ({"training__ddp": {"staticGraph": True}, "training__gradientAccumulationSteps": 2},
                                      "staticGraph"),
    "staticGraph without accumulation": ({"training__ddp": {"staticGraph": True}}, None),
    "env with value and valueFrom": ({"kubernetes__env": [{"name": "A", "value": "1", "valueFrom": {
        "fieldRef": {"fieldPath": "spec.nodeName"}}}]}, "valueFrom"),
    "env with a value": ({"kubernetes__env": [{"name": "A", "value": "1"}, {"name": "B"}]}, None),
    "envFrom with two sources": ({"kubernetes__envFrom": [{"configMapRef": {"name": "a"}, "secretRef": {"name": "b"}}]},
                                 "configMapRef"),
    "envFrom with no source": ({"kubernetes__envFrom": [{"prefix": "X_"}]}, "configMapRef"),
    "envFrom with a Secret": ({"kubernetes__envFrom": [{"secretRef": {"name": "proxy"}, "prefix": "X_"}]}, None),
}


@pytest.mark.parametrize("case", list(CEL_CASES))
def test_cel_rules_agree_with_the_semantic_checks(case):
    from runner.spec import semantics

    changes, field = CEL_CASES[case]
    doc = _doc(**changes)
    cel_failures = failing_cel(doc)
    errors, _ = semantics.check(doc, tolerant=True)
    if field is None:
        assert cel_failures == [] and errors == []
    else:
        assert len(cel_failures) == 1 and field in cel_failures[0], cel_failures
        assert any(field in e for e in errors), errors


# ------------------------------------------------------------------ a started job's spec is frozen

def root_schema() -> dict:
    return committed()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def failing_transition(old: dict, new: dict) -> list[str]:
    """Messages of the root transition rules an update from `old` to `new` breaks (cel-python)."""
    import celpy

    env, root = celpy.Environment(), root_schema()
    act = {"self": celpy.json_to_cel(as_typed(new, root)), "oldSelf": celpy.json_to_cel(as_typed(old, root))}
    return [rule["message"] for rule in root["x-kubernetes-validations"]
            if not env.program(env.compile(rule["rule"])).evaluate(act)]


def test_every_spec_field_but_suspend_is_frozen_once_started():
    rules = [r for r in root_schema()["x-kubernetes-validations"] if "oldSelf" in r["rule"]]
    assert all("oldSelf" in r["rule"] and r["reason"] == "FieldValueForbidden" for r in rules)
    frozen = {r["fieldPath"].removeprefix(".spec.") for r in rules}
    assert frozen == set(schema_mod.load_schema()["properties"]["spec"]["properties"]) - {"suspend"}


def _set(doc: dict, dotted: str, value) -> dict:
    doc = copy.deepcopy(doc)
    node = doc["spec"]
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    if value is None:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return doc


STARTED = {"specHash": "0123456789abcdef", "state": "Training"}


@pytest.mark.parametrize("field, value, status, refused", [
    ("training.maxSteps", 40, STARTED, "spec.training"),
    ("hardware.nodes", 2, STARTED, "spec.hardware"),
    ("cacheDir", "elsewhere", STARTED, "spec.cacheDir"),
    ("textEmbeds", {"cacheDir": "te"}, STARTED, "spec.textEmbeds"),  # added
    ("validation", None, STARTED, "spec.validation"),  # removed
    ("suspend", True, STARTED, None),  # the one field a started job still takes
    ("training.maxSteps", 40, {"state": "Failed"}, None),  # never started (InvalidSpec): fix it freely
    ("training.maxSteps", 40, None, None),  # before the operator's first status write
])
def test_cel_refuses_editing_a_started_jobs_spec(field, value, status, refused):
    old = {"apiVersion": schema_mod.api_version(), "kind": "TrainingJob", "metadata": {"name": "smoke"},
           **_doc()}
    old.pop("status", None)
    if status is not None:
        old["status"] = status
    new = _set(old, field, value)
    failures = failing_transition(old, new)
    if refused is None:
        assert failures == []
    else:
        assert len(failures) == 1 and failures[0].startswith(f"{refused} cannot change once the TrainingJob has "
                                                             "started"), failures
        assert "delete and re-create the TrainingJob" in failures[0]
    assert failing_transition(old, copy.deepcopy(old)) == []  # a status or metadata update


def openapi_validator():
    """The CRD's openAPIV3Schema as the API server reads it: OpenAPI 3.0 keywords (boolean
    exclusiveMinimum, nullable) are draft-4 JSON Schema plus `nullable`."""
    import jsonschema

    def nullable(node):
        if isinstance(node, dict):
            node = {k: nullable(v) for k, v in node.items()}
            if node.pop("nullable", False) and isinstance(node.get("type"), str):
                node["type"] = [node["type"], "null"]
            return node
        return [nullable(v) for v in node] if isinstance(node, list) else node

    root = committed()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft4Validator(nullable(root))


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "examples").glob("*.yaml"))
                         + sorted(f"k8s/{p.name}" for p in (REPO / "k8s").glob("example-trainingjob*.yaml")))
def test_every_example_validates_against_the_crd(example):
    from runner.spec.schema import apply_defaults

    path = REPO / example if example.startswith("k8s/") else REPO / "examples" / example
    doc = yaml.safe_load(path.read_text())
    problems = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in openapi_validator().iter_errors(doc)]
    assert problems == []
    assert failing_cel(apply_defaults(doc)) == []


def test_the_crd_schema_refuses_what_the_api_server_would():
    doc = yaml.safe_load((REPO / "examples" / "smoke.yaml").read_text())
    doc["spec"]["training"]["batchSize"] = 0
    doc["spec"]["hardware"]["accelerator"] = "tpu"
    messages = " ".join(e.message for e in openapi_validator().iter_errors(doc))
    assert "'tpu' is not one of" in messages and "less than the minimum of 1" in messages

