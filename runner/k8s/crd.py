"""Generate the TrainingJob CustomResourceDefinition from runner/spec/trainingjob.schema.json.

`make crd` (python -m runner.k8s.crd > k8s/crd.yaml) writes it; a unit test fails when the
committed file drifts from this output. The API server only accepts *structural* OpenAPI v3
schemas, so the JSON Schema (draft 2020-12) is translated rather than copied:

- `$schema`, `$id`, `title`, `$comment`, `examples` go (not part of the CRD dialect);
- `$ref` into `$defs` is inlined, `const` becomes a one-value `enum`;
- `if`/`then`/`else` go: conditional rules are enforced by `trainingjob validate` and the
  operator (runner/spec/semantics.py), since structural schemas cannot express them;
- numeric `exclusiveMinimum: N` becomes `minimum: N` + `exclusiveMinimum: true` (OpenAPI v3.0);
- `additionalProperties: false` goes (the API server prunes unknown fields instead; structural
  schemas forbid it next to `properties`);
- `type: [string, integer]` becomes `x-kubernetes-int-or-string: true` (+ anyOf, as
  controller-gen writes for resource quantities); `null` in a type list becomes `nullable`;
- `type: [string, number]` (a resource quantity written as `0.5` or `"500m"`, as pods take them)
  becomes a node without a type and `x-kubernetes-preserve-unknown-fields: true`, the one
  structural form that admits a fractional number beside a string: the API server still checks
  a string's `pattern` and a number's `minimum`, and the operator refuses what else gets
  through (a boolean, a list) as InvalidSpec;
- root `metadata` is reduced to `{type: object}` (the API server owns its schema); a root CEL
  rule checks `metadata.name` against the schema's own pattern and maxLength (name_rule);
- the root gets one CEL transition rule per spec field but `suspend` (frozen_spec_rules): once
  the operator has started a job (status.specHash set), the API server refuses an edit of it.

Anything else unknown raises, so a new schema keyword cannot slip into the CRD untranslated.
"""
from __future__ import annotations

import sys
from typing import Any

import yaml

from runner.spec import schema as schema_mod

DROP = {"$schema", "$id", "title", "$comment", "examples", "$defs", "definitions", "if", "then", "else"}
KEEP = {"type", "description", "properties", "items", "required", "enum", "default", "minimum", "maximum",
        "minLength", "maxLength", "minItems", "maxItems", "pattern", "format", "multipleOf", "uniqueItems",
        "minProperties", "maxProperties", "nullable", "anyOf", "allOf", "oneOf", "not",
        "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string", "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys", "x-kubernetes-map-type", "x-kubernetes-embedded-resource",
        "x-kubernetes-validations"}
SHORT_NAMES = ["tj"]
CATEGORIES = ["ml"]

# `kubectl get trainingjobs`: what users ask for most is a visible state, progress and ETA.
# The operator writes these status fields (runner/k8s/status.py).
PRINTER_COLUMNS = [
    {"name": "State", "type": "string", "jsonPath": ".status.state",
     "description": "Pending, Caching, Training, Succeeded, Failed or Suspended."},
    {"name": "Stage", "type": "string", "jsonPath": ".status.stage",
     "description": "The stage whose Job runs or ran last."},
    {"name": "Step/Total", "type": "string", "jsonPath": ".status.progress.steps",
     "description": "Optimizer steps done and planned."},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss",
     "description": "Latest training loss."},
    {"name": "ETA", "type": "string", "jsonPath": ".status.progress.eta",
     "description": "Estimated time to the last step."},
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.pretrained", "priority": 1,
     "description": "The pretrained pipeline being fine-tuned."},
    {"name": "Accelerator", "type": "string", "jsonPath": ".spec.hardware.accelerator", "priority": 1,
     "description": "Hardware flavour."},
    {"name": "Nodes", "type": "integer", "jsonPath": ".spec.hardware.nodes", "priority": 1,
     "description": "Pods in the training Job."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def structural(node: dict[str, Any], defs: dict[str, Any], where: str = "#") -> dict[str, Any]:
    """Translate one JSON Schema node (and its children) into a structural OpenAPI v3 schema."""
    if "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/$defs/") or ref.split("/")[-1] not in defs:
            raise ValueError(f"{where}: cannot inline $ref {ref!r}; only local #/$defs/ references are supported")
        merged = {**defs[ref.split("/")[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
        return structural(merged, defs, where)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in DROP:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "type" and isinstance(value, list):
            out.update(_type_list(value, where))
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "additionalProperties":
            if isinstance(value, dict) and "properties" not in node:
                out[key] = structural(value, defs, f"{where}/additionalProperties")
            elif value is True and "properties" not in node:
                out["x-kubernetes-preserve-unknown-fields"] = True
        elif key == "properties":
            out[key] = {name: structural(sub, defs, f"{where}/properties/{name}") for name, sub in value.items()}
        elif key == "items":
            out[key] = structural(value, defs, f"{where}/items")
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [structural(sub, defs, f"{where}/{key}/{i}") for i, sub in enumerate(value)]
        elif key == "not":
            out[key] = structural(value, defs, f"{where}/not")
        elif key in KEEP:
            out[key] = value
        else:
            raise ValueError(f"{where}: JSON Schema keyword {key!r} has no CRD translation; add one in {__name__}")
    return out


def _type_list(types: list[str], where: str) -> dict[str, Any]:
    rest = [t for t in types if t != "null"]
    extra: dict[str, Any] = {"nullable": True} if "null" in types else {}
    if sorted(rest) == ["integer", "string"]:
        return {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}], **extra}
    if sorted(rest) == ["number", "string"] and not extra:
        return {"x-kubernetes-preserve-unknown-fields": True}
    if len(rest) == 1:
        return {"type": rest[0], **extra}
    raise ValueError(f"{where}: type {types} has no structural equivalent (only string|integer, string|number "
                     "and X|null)")


def openapi_schema(schema: dict[str, Any]) -> dict[str, Any]:
    root = structural(schema, schema.get("$defs", {}))
    props = root["properties"]
    # The API server owns metadata's schema and sets apiVersion/kind itself.
    props["metadata"] = {"type": "object"}
    for key in ("apiVersion", "kind"):
        props[key] = {"type": "string", "description": props[key].get("description", "")}
    root["required"] = ["spec"]
    status = props.get("status")
    if status is not None:
        props["status"] = {**status, "type": "object", "x-kubernetes-preserve-unknown-fields": True}
    root["x-kubernetes-validations"] = [name_rule(schema["properties"]["metadata"]["properties"]["name"])] + \
        frozen_spec_rules(list(props["spec"]["properties"]))
    return root


def name_rule(name: dict[str, Any]) -> dict[str, Any]:
    """The schema's rule for metadata.name as a root CEL rule: the CRD cannot restrict metadata
    itself, and the API server's own rule (a DNS-1123 subdomain of up to 253) takes names that the
    Jobs, the Service and the pods' hostnames cannot carry, so the operator could only fail them.
    (No fieldPath: the CRD declares no metadata fields for one to point at.)"""
    pattern, limit = name["pattern"], name["maxLength"]
    if "'" in pattern or "\\" in pattern:
        raise ValueError(f"metadata.name: pattern {pattern!r} cannot be quoted in CEL; escape it in {__name__}")
    return {"rule": f"size(self.metadata.name) <= {limit} && self.metadata.name.matches('{pattern}')",
            "message": f"metadata.name must be a DNS-1123 label of at most {limit} characters (lowercase letters, digits "
                       "and '-', starting and ending with a letter or digit): it names the job's Jobs, Service and pods",
            "reason": "FieldValueInvalid"}


# Once started, a job runs the spec its ConfigMap got then (runner/k8s/reconcile.py); like a Job's
# spec.template, the rest of the spec is immutable from then on. status.specHash is set by the
# operator's first status write, right after it created the ConfigMap.
MUTABLE_WHEN_STARTED = ("suspend",)
CEL_RESERVED = {"in", "as", "break", "const", "continue", "else", "for", "function", "if", "import", "let", "loop",
                "package", "namespace", "null", "return", "var", "void", "while", "true", "false"}


def frozen_spec_rules(spec_fields: list[str]) -> list[dict[str, Any]]:
    """Transition rules (on the root: they read oldSelf.status) refusing a change, addition or
    removal of a spec field once the job has started; each names its field and what to do."""
    rules = []
    for name in spec_fields:
        if name in MUTABLE_WHEN_STARTED:
            continue
        if not name.isidentifier() or name in CEL_RESERVED:
            raise ValueError(f"spec.{name}: not a CEL identifier; escape it in {__name__}.frozen_spec_rules")
        new, old = f"self.spec.{name}", f"oldSelf.spec.{name}"
        rules.append({
            "rule": f"!has(oldSelf.status) || !has(oldSelf.status.specHash) || "
                    f"(has({new}) == has({old}) && (!has({new}) || {new} == {old}))",
            "message": f"spec.{name} cannot change once the TrainingJob has started (status.specHash is set): its "
                       f"Jobs run the spec they started with; delete and re-create the TrainingJob to run a changed "
                       f"spec (only spec.suspend may change)",
            "fieldPath": f".spec.{name}",
            "reason": "FieldValueForbidden",
        })
    return rules


def build_crd(schema: dict[str, Any] | None = None) -> dict[str, Any]:
    schema = schema or schema_mod.load_schema()
    api_versions = schema["properties"]["apiVersion"]["enum"]
    kind = schema["properties"]["kind"]["enum"][0]
    group = api_versions[0].split("/", 1)[0]
    plural, singular = kind.lower() + "s", kind.lower()
    body = openapi_schema(schema)
    versions = []
    for i, api_version in enumerate(api_versions):
        version_group, version = api_version.split("/", 1)
        if version_group != group:
            raise ValueError(f"apiVersion enum mixes groups: {group} and {version_group}")
        versions.append({
            "name": version,
            "served": True,
            "storage": i == len(api_versions) - 1,  # the newest version is stored
            "schema": {"openAPIV3Schema": body},
            "subresources": {"status": {}},
            "additionalPrinterColumns": PRINTER_COLUMNS,
        })
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}", "labels": {"app.kubernetes.io/part-of": "trainingjob-runner"}},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": singular,
                      "shortNames": SHORT_NAMES, "categories": CATEGORIES},
            "versions": versions,
        },
    }


class _Dumper(yaml.SafeDumper):
    """No anchors/aliases: every version repeats its schema in full, as kubectl shows it."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(schema: dict[str, Any] | None = None) -> str:
    header = ("# Generated by `make crd` (python -m runner.k8s.crd) from runner/spec/trainingjob.schema.json.\n"
              "# Do not edit: change the schema and regenerate; a unit test fails when this file drifts.\n")
    return header + yaml.dump(build_crd(schema), Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


if __name__ == "__main__":
    sys.stdout.write(render())
