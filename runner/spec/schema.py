"""The TrainingJob JSON Schema: the single source of truth for options, defaults and docs.

Everything else (CLI validation, defaults, `explain`, the CRD) derives from this file. Torch-free.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from runner.spec import fieldpath
from runner.spec.errors import an, did_you_mean

# Inside the package, so a wheel install (and every image) carries it.
SCHEMA_PATH = Path(__file__).resolve().parent / "trainingjob.schema.json"
KIND = "TrainingJob"


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return json.load(f)


def api_version() -> str:
    return load_schema()["properties"]["apiVersion"]["enum"][0]


def api_group() -> str:
    return api_version().split("/", 1)[0]


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


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values: 1, 1.0 and true are three different values."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def strip_defaults(doc: Any, schema: dict[str, Any] | None = None) -> Any:
    """Return a copy of `doc` without the values equal to their schema default, and without the
    objects that held nothing else (an object given empty stays). What apply_defaults fills in
    comes back: apply_defaults(strip_defaults(d)) == d for a defaulted d. List items are kept,
    each stripped."""
    schema = load_schema() if schema is None else schema
    if schema.get("type") == "object" and "properties" in schema and isinstance(doc, dict):
        out = {}
        for key, value in doc.items():
            sub = schema["properties"].get(key)
            if sub is None:
                out[key] = value
            elif not ("default" in sub and _same(value, sub["default"])):
                stripped = strip_defaults(value, sub)
                # emptied by stripping: left out where apply_defaults makes it again
                remade = "properties" in sub and not sub.get("required") and key not in schema.get("required", ())
                if not (isinstance(value, dict) and value and not stripped and remade):
                    out[key] = stripped
        return out
    if schema.get("type") == "array" and isinstance(doc, list) and isinstance(schema.get("items"), dict):
        return [strip_defaults(item, schema["items"]) for item in doc]
    return doc


# ----------------------------------------------------------------------------- field paths

class FieldNotFound(LookupError):
    """A field path that names no schema node. `index` is the first part that does not
    resolve and `fields` the fields that exist there; the message says why, in the words of
    `--set` (`explain` words it its own way from the same facts)."""

    def __init__(self, parts: list[str], index: int, fields: tuple[str, ...], message: str):
        super().__init__(message)
        self.parts, self.index, self.fields = parts, index, fields


def element(node: dict[str, Any]) -> dict[str, Any]:
    """The schema of one item, for a list (of lists); any other node as it is."""
    while node.get("type") == "array" and isinstance(node.get("items"), dict):
        node = node["items"]
    return node


def node_at(parts: list[str], *, indexed: bool) -> dict[str, Any]:
    """The schema node a field path names; FieldNotFound when there is none.

    `indexed` (a path into a document, as `--set` writes one): a list must be indexed
    (`spec.datasets.0.crop`), and free-form maps (labels, nodeSelector) and `status` take any
    key. Otherwise (a path into the docs, as `explain` and the importers write one): list items
    are transparent (`spec.datasets.crop`) and only the schema's named fields exist."""
    node = load_schema()
    for i, part in enumerate(parts):
        here = ".".join(parts[:i])
        if not indexed:
            node = element(node)
        elif node.get("type") == "array":
            if not part.isdigit():
                # `spec.datasets.crop` lacks the index; in `spec.datasets.x.crop` the index is wrong
                named = part in node.get("items", {}).get("properties", {})
                example = fieldpath.join([*parts[:i], 0, *parts[i if named else i + 1:]])
                raise FieldNotFound(parts, i, (), f"{here} is a list; index it with a number from 0, e.g. {example}")
            node = node.get("items", {})
            continue
        elif node.get("x-kubernetes-preserve-unknown-fields"):
            return {}
        props = node.get("properties", {})
        if part in props:
            node = props[part]
        elif indexed and "properties" not in node and isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]  # a free-form map: any key goes
        elif props:
            raise FieldNotFound(parts, i, tuple(props), f"unknown field {here}.{part}" + did_you_mean(part, props))
        else:
            raise FieldNotFound(parts, i, (), f"{here} is {an(str(node.get('type', 'value')))}; it has no field {part!r}")
    return node


def subschema(path: str) -> dict[str, Any] | None:
    """Schema node of a dotted docs path (`spec.datasets.crop`; list items are transparent), or None."""
    try:
        return node_at([p for p in path.split(".") if p], indexed=False)
    except FieldNotFound:
        return None


def iter_fields(node: dict[str, Any] | None = None, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every field of the schema as (dotted path, schema node), depth first; list items are
    transparent (`spec.datasets.crop`)."""
    node = load_schema() if node is None else node
    for name, child in node.get("properties", {}).items():
        child_path = f"{path}.{name}" if path else name
        yield child_path, child
        yield from iter_fields(child, child_path)
    if isinstance(node.get("items"), dict):
        yield from iter_fields(node["items"], path)
