"""`trainingjob explain PATH`: the docs of one field and its children, like `kubectl explain`.

Driven purely by the JSON Schema, so the docs cannot drift from what `validate` enforces.
"""
from __future__ import annotations

import json
import re
import textwrap
from typing import Any

from runner.spec import fieldpath
from runner.spec import schema as schema_mod
from runner.spec.errors import did_you_mean
from runner.spec.schema import element

WIDTH = 80


class ExplainError(Exception):
    """An unknown field path; the message names it and suggests the closest field."""


def field_path(path: str) -> list[str]:
    """`trainingjob.spec.datasets[0].crop` -> ['spec', 'datasets', 'crop'] (list items are transparent)."""
    parts = [p for p in fieldpath.split(path.replace("[]", "")) if p and not p.isdigit()]
    if parts and parts[0].lower() in ("trainingjob", "trainingjobs", "tj"):
        parts = parts[1:]
    return parts


def resolve(parts: list[str]) -> dict[str, Any]:
    """Schema node of a field path; ExplainError with a did-you-mean when a segment is unknown."""
    try:
        return schema_mod.node_at(parts, indexed=False)
    except schema_mod.FieldNotFound as e:
        where = ".".join(parts[:e.index]) or "TrainingJob"
        hint = did_you_mean(parts[e.index], e.fields) if e.fields else f"; {where} has no fields"
        raise ExplainError(f"field {'.'.join(parts[:e.index + 1])!r} does not exist in {where}{hint}") from None


def type_name(node: dict[str, Any]) -> str:
    t = node.get("type")
    if isinstance(t, list):
        # kubectl explain's names: Quantity is what it calls a pod's resources.limits values
        return {frozenset({"string", "integer"}): "IntOrString",
                frozenset({"string", "number"}): "Quantity"}.get(frozenset(t), "|".join(t))
    if t == "array":
        return "[]" + type_name(node.get("items", {}))
    if t == "object":
        extra = node.get("additionalProperties")
        if "properties" not in node and isinstance(extra, dict):
            return f"map[string]{type_name(extra)}"
        return "Object"
    return t or "any"


def _constraints(node: dict[str, Any]) -> list[str]:
    out = []
    for key, word in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if key in node:
            out.append(f"{word} {node[key]}")
    for key, word in (("minLength", "length >="), ("maxLength", "length <="),
                      ("minItems", "items >="), ("maxItems", "items <=")):
        if key in node:
            out.append(f"{word} {node[key]}")
    if "pattern" in node:
        out.append(f"pattern {node['pattern']}")
    return out


def _value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else (value or '""')


def _wrap(text: str, indent: int) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=" " * indent, subsequent_indent=" " * indent,
                         break_on_hyphens=False) or [""]


# Abbreviations whose dot never ends a sentence, whatever follows ("e.g. Kubernetes ...").
_ABBREVIATIONS = ("e.g.", "i.e.", "vs.", "cf.")
_DOT_THEN_SPACE = re.compile(r"\.(?=\s|$)")  # not `spec.cacheDir`, `model_index.json` or 1.5


def first_sentence(text: str) -> str:
    """The summary of a description: up to the first dot that ends a sentence. A dot inside a
    word never does; nor one of _ABBREVIATIONS, nor one followed by a lowercase word (the
    sentence goes on), nor `etc.` unless a capital follows it (`etc. (jpg)` goes on)."""
    for match in _DOT_THEN_SPACE.finditer(text):
        word = text[:match.end()].split()[-1].lstrip("(\"'`").lower()
        after = text[match.end():].lstrip()[:1]
        if word in _ABBREVIATIONS or after.islower() or (word == "etc." and after and not after.isupper()):
            continue
        return text[:match.end()]
    return text


def _child_line(name: str, node: dict[str, Any], required: bool) -> list[str]:
    head = f"  {name}\t<{type_name(node)}>" + (" -required-" if required else "")
    summary = first_sentence(node.get("description", ""))
    extras = []
    if "enum" in node or "enum" in element(node):
        extras.append("One of: " + ", ".join(map(str, node.get("enum") or element(node)["enum"])) + ".")
    if "default" in node:
        extras.append(f"Default: {_value(node['default'])}.")
    return [head] + _wrap(" ".join([summary] + extras).strip(), 4)


def _tree(node: dict[str, Any], indent: int) -> list[str]:
    node = element(node)
    required = set(node.get("required", []))
    lines = []
    for name, child in node.get("properties", {}).items():
        lines.append(" " * indent + f"{name}\t<{type_name(child)}>" + (" -required-" if name in required else ""))
        lines.extend(_tree(child, indent + 2))
    return lines


def explain(path: str = "", recursive: bool = False) -> str:
    parts = field_path(path)
    node = resolve(parts)
    parent_required = set(element(resolve(parts[:-1])).get("required", [])) if parts else set()
    lines = [f"KIND:       {schema_mod.KIND}", f"VERSION:    {schema_mod.api_version()}", ""]
    lines.append(f"FIELD:      {'.'.join(parts) or '<TrainingJob>'}")
    lines.append(f"TYPE:       <{type_name(node)}>" + (" -required-" if parts and parts[-1] in parent_required else ""))
    if "default" in node:
        lines.append(f"DEFAULT:    {_value(node['default'])}")
    enum = node.get("enum") or element(node).get("enum")
    if enum:
        lines.append(f"ENUM:       {', '.join(map(str, enum))}")
    limits = _constraints(node) + (_constraints(element(node)) if node.get("type") == "array" else [])
    if limits:
        lines.append(f"ALLOWED:    {'; '.join(limits)}")
    lines += ["", "DESCRIPTION:"] + _wrap(node.get("description", "(no description)"), 4)
    item = element(node)
    if item.get("properties"):
        lines += ["", "FIELDS:"]
        if recursive:
            lines += _tree(item, 2)
        else:
            required = set(item.get("required", []))
            for name, child in item["properties"].items():
                lines += _child_line(name, child, name in required) + [""]
            lines.pop()
    return "\n".join(lines) + "\n"
