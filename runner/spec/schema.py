"""The TrainingJob JSON Schema: the single source of truth for options, defaults and docs.

Everything else (CLI validation, defaults, `explain`, the CRD) derives from this file.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

# Inside the package, so a wheel install (and every image) carries it.
SCHEMA_PATH = Path(__file__).resolve().parent / "trainingjob.schema.json"


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return json.load(f)


def api_version() -> str:
    return load_schema()["properties"]["apiVersion"]["enum"][0]


def api_group() -> str:
    return api_version().split("/", 1)[0]


KIND = "TrainingJob"


def apply_defaults(doc: Any, schema: dict[str, Any] | None = None) -> Any:
    """Return a copy of `doc` with every schema default filled in (objects are created when
    any of their children has a default, so `spec.training.batchSize` always exists), and
    integral floats in integer fields turned into ints."""
    schema = load_schema() if schema is None else schema
    if schema.get("type") == "object" and "properties" in schema:
        out = dict(doc) if isinstance(doc, dict) else {}
        for key, sub in schema["properties"].items():
            if key in out:
                out[key] = apply_defaults(out[key], sub)
            elif "default" in sub:
                out[key] = json.loads(json.dumps(sub["default"]))
            elif sub.get("type") == "object" and "properties" in sub and not sub.get("required"):
                # An absent object with required fields stays absent: creating it from
                # defaults alone would make a valid spec invalid.
                filled = apply_defaults({}, sub)
                if filled:
                    out[key] = filled
        return out
    if schema.get("type") == "array" and isinstance(doc, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(item, schema["items"]) for item in doc]
    if schema.get("type") == "integer" and isinstance(doc, float) and doc.is_integer():
        return int(doc)  # JSON Schema counts 1000.0 (YAML `1e3`) as an integer; code wants an int
    return doc


def subschema(path: str) -> dict[str, Any] | None:
    """Schema node of a dotted field path (`spec.datasets.crop`; list items are transparent)."""
    node = load_schema()
    for part in [p for p in path.split(".") if p]:
        while node.get("type") == "array":
            node = node.get("items", {})
        props = node.get("properties", {})
        if part not in props:
            return None
        node = props[part]
    return node


def iter_fields(node: dict[str, Any] | None = None, path: str = ""):
    """Every field of the schema as (dotted path, schema node), depth first; list items are
    transparent (`spec.datasets.crop`)."""
    node = load_schema() if node is None else node
    for name, child in node.get("properties", {}).items():
        child_path = f"{path}.{name}" if path else name
        yield child_path, child
        yield from iter_fields(child, child_path)
    if isinstance(node.get("items"), dict):
        yield from iter_fields(node["items"], path)
