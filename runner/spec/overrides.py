"""`--set PATH=VALUE`: change one field of a parsed document before it is validated.

Values are YAML (`null` removes the field, so its default applies), except in text fields,
which take the text as typed. Paths are checked against the schema here, so a typo names the
flag, not the file."""
from __future__ import annotations

import copy
from typing import Any, Iterable

from runner.spec import fieldpath
from runner.spec import schema as schema_mod
from runner.spec.errors import SpecError
from runner.spec.parse import load_yaml


def apply_overrides(doc: dict[str, Any], overrides: Iterable[str], source: str = "--set") -> dict[str, Any]:
    """Apply `path=value` overrides; raises SpecError listing every one that could not be applied."""
    doc, problems = apply_what_applies(doc, overrides, source)
    if problems:
        raise SpecError(problems)
    return doc


def apply_what_applies(doc: dict[str, Any], overrides: Iterable[str], source: str) -> tuple[dict[str, Any], list[str]]:
    """Apply what can be applied and report the rest, so the caller can still validate the
    result and list every problem in one go."""
    doc = copy.deepcopy(doc)
    problems = []
    for item in overrides:
        path, sep, raw = item.partition("=")
        if not sep or not path.strip():
            problems.append(f"{source} {item!r}: expected PATH=VALUE, e.g. --set spec.training.maxSteps=10")
            continue
        parts = fieldpath.split(path)
        if not all(parts):
            problems.append(f"{source} {path}: empty segment in the field path")
            continue
        try:
            target = schema_mod.node_at(parts, indexed=True)
        except schema_mod.FieldNotFound as e:
            problems.append(f"{source} {path}: {e}")
            continue
        try:
            value = _override_value(target, raw)
        except SpecError as e:
            problems.append(f"{source} {path}: {e.problems[0].split(': ', 1)[-1]}")
            continue
        problem = _set_path(doc, parts, value)
        if problem:
            problems.append(f"{source} {path}: {problem}")
    return doc, problems


def _override_value(target: dict[str, Any], raw: str) -> Any:
    text = raw.strip()
    # A text field takes the text as typed: `mixedPrecision=no` is "no" (not YAML 1.1's false)
    # and `path=/data/a #1` keeps its "#1". Quote it to get YAML parsing; `null` still removes.
    if target.get("type") == "string" and text not in ("null", "~") and not (
            len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""):
        return text
    return parse_value(raw)


def _set_path(doc: dict[str, Any], parts: list[str], value: Any) -> str | None:
    node: Any = doc
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[:i]) or "the document"
        if isinstance(node, list):
            index = int(part)
            if index > len(node):
                return f"{where} has {len(node)} item(s); use index {len(node)} at most (to append)"
            if index == len(node):
                node.append({})
            if last:
                if value is None:
                    del node[index]
                else:
                    node[index] = value
                return None
            node = node[index]
        elif isinstance(node, dict):
            if last:
                if value is None:
                    node.pop(part, None)
                else:
                    node[part] = value
                return None
            if not isinstance(node.get(part), (dict, list)):
                node[part] = [] if parts[i + 1].isdigit() else {}
            node = node[part]
        else:
            return f"{where} is not a mapping"
    return None


def parse_value(raw: str) -> Any:
    """One `--set` value as YAML (empty text is the empty string)."""
    if not raw.strip():
        return ""
    return load_yaml(raw, "value")
