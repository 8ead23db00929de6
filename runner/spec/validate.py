"""Validation of a parsed TrainingJob: the JSON Schema (each error worded as one line that
names the field, the value and what is allowed) and then the semantic rules.

Problems are lines, `field.path: message` (a warning says `warning: field.path: message`);
`validate_document` prefixes each with its source file. Values that may be secrets are
never quoted (runner.spec.redact)."""
from __future__ import annotations

import difflib
import json
import math
from functools import lru_cache
from typing import Any

from runner.spec import fieldpath, redact
from runner.spec import schema as schema_mod
from runner.spec.errors import an, clip, did_you_mean, json_type
from runner.spec.fieldpath import DOCUMENT

_YAML11_BOOLS = {"yes", "no", "on", "off", "y", "n", "true", "false"}


def show(value: Any, path: str = "") -> str:
    """A value for a problem line, or redact.HIDDEN when the field or the value looks secret: a
    token pasted into the wrong field must not end up in a terminal, a CI log or an event."""
    if redact.is_hidden(path, value):
        return redact.HIDDEN
    return clip(json.dumps(value, default=str) if not isinstance(value, str) else repr(value), 60)


def _bool_hint(val: bool) -> str:
    return (f"; YAML reads bare yes/no/on/off/true/false as booleans, so quote the word you meant "
            f"(e.g. \"{'yes' if val else 'no'}\")")


def schema_error_lines(err) -> list[str]:
    """One readable line per jsonschema error: field path, bad value, what is allowed."""
    path = fieldpath.join(err.absolute_path)
    v = err.validator
    val = err.instance
    sch = err.schema
    if v == "additionalProperties":
        props = sch.get("properties", {})
        extra = sorted((k for k in val if k not in props), key=str) if isinstance(val, dict) else []
        lines = []
        for key in extra:
            where = f"{path}.{key}" if err.absolute_path else str(key)
            hint = did_you_mean(str(key), props) if props else ""
            lines.append(f"{where}: unknown field{hint}")
        return lines
    if v == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        where = f"{path}.{missing}" if err.absolute_path else missing
        described = (sch.get("properties", {}).get(missing, {}).get("description", "") or "").split(". ")[0]
        return [f"{where}: required field is missing" + (f" ({described.rstrip('.')})" if described else "")]
    if v == "enum":
        line = f"{path}: {show(val, path)} is not one of {', '.join(map(str, sch['enum']))}"
        if isinstance(val, str):
            hint = difflib.get_close_matches(val, [str(e) for e in sch["enum"]], n=1, cutoff=0.6)
            line += f"; did you mean {hint[0]!r}?" if hint else ""
        elif isinstance(val, bool) and any(str(e).lower() in _YAML11_BOOLS for e in sch["enum"]):
            line += _bool_hint(val)
        return [line]
    if v == "type":
        want = sch["type"] if isinstance(sch["type"], str) else " or ".join(sch["type"])
        line = f"{path}: {show(val, path)} is {an(json_type(val))}, expected {want}"
        if isinstance(val, bool) and "string" in want:
            line += _bool_hint(val)
        return [line]
    if v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        words = {"minimum": "less than the minimum of", "exclusiveMinimum": "not greater than",
                 "maximum": "greater than the maximum of", "exclusiveMaximum": "not less than"}[v]
        return [f"{path}: {show(val, path)} is {words} {sch[v]}"]
    if v == "pattern":
        hint = redact.reference_hint(path)
        if hint:  # a name field (of an env var or a Secret) holding something else: likely the secret
            return [f"{path}: {show(val, path)} is not a valid name here; {hint}"]
        what = {"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$": " (lowercase letters, digits and '-', starting and ending "
                "with a letter or digit)", "^/": " (an absolute path)"}.get(sch["pattern"], "")
        return [f"{path}: {show(val, path)} does not match the required pattern {sch['pattern']}{what}"]
    if v in ("minLength", "maxLength"):
        return [f"{path}: {show(val, path)} is too {'short' if v == 'minLength' else 'long'} ({v} {sch[v]})"]
    if v in ("minProperties", "maxProperties"):
        names = ", ".join(sch.get("properties", {}))
        if sch.get("minProperties") == sch.get("maxProperties") == 1:
            return [f"{path}: give exactly one of {names}"]
        return [f"{path}: give {'at least' if v == 'minProperties' else 'at most'} {sch[v]} of {names}"]
    if v in ("minItems", "maxItems"):
        return [f"{path}: needs {'at least' if v == 'minItems' else 'at most'} {sch[v]} item(s), got {len(val)}"]
    if redact.is_hidden(path, val):  # jsonschema's own message quotes the value
        return [f"{path}: {redact.HIDDEN} fails the schema's {v!r} rule"]
    return [f"{path}: {err.message}"]


@lru_cache(maxsize=1)
def _validator():
    import jsonschema

    return jsonschema.Draft202012Validator(schema_mod.load_schema())


def schema_problems(doc: Any) -> list[str]:
    """`path: message` lines for everything the JSON Schema rejects, shallowest first
    (a wrong kind or apiVersion shows at the top)."""
    errors = sorted(_validator().iter_errors(doc),
                    key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    # A value of the wrong type also fails its enum/pattern/range; the type is the one to fix.
    mistyped = {tuple(e.absolute_path) for e in errors if e.validator == "type"}
    lines: list[str] = []
    for err in errors:
        if err.validator != "type" and tuple(err.absolute_path) in mistyped:
            continue
        for line in schema_error_lines(err):
            if line not in lines:
                lines.append(line)
    reported = [line_path(line) for line in lines]
    lines += [line for line in _non_finite(doc, []) if line_path(line) not in reported]
    return lines


def field_problems(path: str, value: Any) -> list[str]:
    """`path: message` lines for one field's value checked against its own schema (for prompts
    and converters that build a spec field by field). Unknown paths are a problem too."""
    import jsonschema

    try:
        node = schema_mod.node_at(fieldpath.split(path), indexed=True)
    except schema_mod.FieldNotFound as e:
        return [f"{path}: {e}"]
    lines = []
    for err in jsonschema.Draft202012Validator(node).iter_errors(value):
        for line in schema_error_lines(err):
            line = line.removeprefix(DOCUMENT)
            lines.append(path + line if line.startswith(("[", ":")) else f"{path}.{line}")
    return lines + [path + line.removeprefix(DOCUMENT) for line in _non_finite(value, [])]


def _non_finite(value: Any, parts: list[Any]) -> list[str]:
    """JSON has no NaN or infinity; YAML's `.nan`/`.inf` would pass `minimum` checks unnoticed."""
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{fieldpath.join(parts)}: {value} is not a finite number"]
    if isinstance(value, dict):
        return [line for k, v in value.items() if k != "status" or parts for line in _non_finite(v, parts + [k])]
    if isinstance(value, list):
        return [line for i, v in enumerate(value) for line in _non_finite(v, parts + [i])]
    return []


def line_path(line: str) -> str:
    """The field a problem line is about."""
    return line.removeprefix("warning: ").split(": ", 1)[0]


def validate_document(doc: Any, source: str = "<spec>") -> tuple[dict[str, Any], list[str], list[str]]:
    """Return (defaulted document, problems, warnings). Problems are `source: path: message` lines.

    The semantic checks run even when the schema rejects something, so one pass reports every
    problem; their findings inside fields the schema already rejected are dropped as noise."""
    from runner.spec import semantics

    schema_lines = schema_problems(doc)
    full = schema_mod.apply_defaults(doc)
    errors, warnings = semantics.check(full, tolerant=bool(schema_lines))
    if schema_lines:
        bad = [line_path(line) for line in schema_lines]
        errors = [e for e in errors if not any(fieldpath.within(line_path(e), b) for b in bad)]
        warnings = [w for w in warnings if not any(fieldpath.within(line_path(w), b) for b in bad)]
    problems = [f"{source}: {p}" for p in schema_lines + [e for e in errors if e not in schema_lines]]
    return full, problems, [f"{source}: {w}" for w in warnings]
