"""k8s/crd.yaml: generated from the schema, structural, and accepted by kubernetes-validate."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runner import schema as schema_mod
from runner.k8s import crd

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


def test_kubernetes_validate_accepts_the_crd():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    version = kubernetes_validate.latest_version()  # the newest Kubernetes it ships schemas for
    assert kubernetes_validate.validate(committed(), version, strict=True)


def test_kubernetes_validate_catches_a_draft_2020_exclusive_minimum():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
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
    assert {"Stage", "Progress", "Age"} <= set(columns)
    assert columns["Age"]["jsonPath"] == ".metadata.creationTimestamp" and columns["Age"]["type"] == "date"


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


def test_unknown_keywords_are_refused_not_copied():
    with pytest.raises(ValueError, match="dependentRequired"):
        crd.structural({"type": "object", "dependentRequired": {"a": ["b"]}}, {})
    with pytest.raises(ValueError, match="cannot inline"):
        crd.structural({"$ref": "https://example.com/x.json"}, {})
