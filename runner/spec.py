"""Load and validate a TrainingJob at the edge; hand out a frozen, defaulted object.

Nothing past this module sees raw YAML: every stage takes a `TrainingJob`.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Sequence

import yaml

from runner import schema as schema_mod

MAX_SPEC_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 100_000


class SpecError(Exception):
    """A spec that cannot be used. `problems` holds one line per problem."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# ----------------------------------------------------------------------------- YAML

class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be plain scalars", key_node.start_mark)
        if key in seen:
            first = seen[key].start_mark
            raise yaml.constructor.ConstructorError(
                f"while reading a mapping (first '{key}' at line {first.line + 1}, column {first.column + 1})",
                node.start_mark, f"duplicate key '{key}'", key_node.start_mark)
        seen[key] = key_node
    return loader.construct_mapping_orig(node, deep=deep)  # type: ignore[attr-defined]


_StrictLoader.construct_mapping_orig = yaml.SafeLoader.construct_mapping  # type: ignore[attr-defined]
_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _check_node_tree(node: yaml.Node) -> str | None:
    """Refuse alias bombs and absurd nesting before constructing Python objects.

    Aliases are followed (that is where the expansion happens), with a budget on the total
    number of nodes visited, so a billion-laughs document fails fast in bounded memory."""
    budget = MAX_NODES
    stack: list[tuple[yaml.Node, int]] = [(node, 1)]
    while stack:
        current, depth = stack.pop()
        budget -= 1
        if budget < 0:
            return f"the document expands to more than {MAX_NODES} nodes (YAML aliases?); write it out plainly"
        if depth > MAX_DEPTH:
            m = current.start_mark
            return f"nesting deeper than {MAX_DEPTH} levels at line {m.line + 1}, column {m.column + 1}"
        if isinstance(current, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in current.value)
        elif isinstance(current, yaml.MappingNode):
            for k, v in current.value:
                stack.append((k, depth + 1))
                stack.append((v, depth + 1))
    return None


def parse_document(text: bytes | str, source: str = "<spec>") -> dict[str, Any]:
    """Parse one YAML (or JSON) TrainingJob document into plain Python data, safely."""
    if isinstance(text, bytes):
        if len(text) > MAX_SPEC_BYTES:
            raise SpecError([f"{source}: file is {len(text)} bytes; specs are limited to {MAX_SPEC_BYTES} bytes (1 MiB)"])
        if b"\x00" in text:
            raise SpecError([f"{source}: not a text file (contains NUL bytes); expected a YAML TrainingJob"])
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SpecError([f"{source}: not UTF-8 text (byte {e.start}); expected a YAML TrainingJob"]) from None
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError([f"{source}: spec is larger than 1 MiB"])
    try:
        nodes = list(yaml.compose_all(text, Loader=_StrictLoader))
    except yaml.YAMLError as e:
        raise SpecError([f"{source}: {_yaml_message(e)}"]) from None
    except RecursionError:
        raise SpecError([f"{source}: nesting too deep to parse"]) from None
    nodes = [n for n in nodes if n is not None]
    if not nodes:
        raise SpecError([f"{source}: the file is empty; expected a TrainingJob (run `trainingjob init` for a starter)"])
    if len(nodes) > 1:
        raise SpecError([f"{source}: holds {len(nodes)} YAML documents; put one TrainingJob per file"])
    problem = _check_node_tree(nodes[0])
    if problem:
        raise SpecError([f"{source}: {problem}"])
    try:
        loader = _StrictLoader(text)
        try:
            doc = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise SpecError([f"{source}: {_yaml_message(e)}"]) from None
    except RecursionError:
        raise SpecError([f"{source}: nesting too deep to parse"]) from None
    if not isinstance(doc, dict):
        kind = type(doc).__name__ if doc is not None else "nothing"
        raise SpecError([f"{source}: expected a mapping with apiVersion, kind, metadata and spec; got a {_yaml_type(doc)} ({kind})"])
    return doc


def _yaml_type(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value), "scalar")


def _yaml_message(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    text = f"YAML syntax error at {where}{problem}"
    if context and "duplicate" in str(problem):
        text += f" ({context})"
    return text


# ----------------------------------------------------------------------------- overrides

def apply_overrides(doc: dict[str, Any], overrides: Iterable[str], source: str = "--set") -> dict[str, Any]:
    """Apply `path=value` overrides (values parsed as YAML scalars/flow collections)."""
    doc = copy.deepcopy(doc)
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"{source} {item!r}: expected PATH=VALUE, e.g. spec.training.maxSteps=10")
            continue
        path, raw = item.split("=", 1)
        parts = [p for p in path.strip().split(".")]
        if not all(parts):
            problems.append(f"{source} {item!r}: empty segment in field path {path!r}")
            continue
        try:
            value = parse_value(raw)
        except SpecError as e:
            problems.append(f"{source} {path}: {e.problems[0]}")
            continue
        node: Any = doc
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    problems.append(f"{source} {path}: {'.'.join(parts[:i])} has no item {part} (it has {len(node)})")
                    break
                node = node[int(part)]
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            else:
                problems.append(f"{source} {path}: {'.'.join(parts[:i]) or 'document'} is not a mapping")
                break
        else:
            last = parts[-1]
            if isinstance(node, list) and last.isdigit() and int(last) < len(node):
                node[int(last)] = value
            elif isinstance(node, dict):
                node[last] = value
            else:
                problems.append(f"{source} {path}: cannot set {last!r} here")
    if problems:
        raise SpecError(problems)
    return doc


def parse_value(raw: str) -> Any:
    try:
        return yaml.load(raw, Loader=_StrictLoader) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise SpecError([_yaml_message(e)]) from None


# ----------------------------------------------------------------------------- validation

def _path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(document)"


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _schema_error_message(err) -> list[str]:
    """One readable line per jsonschema error: field path, bad value, what is allowed."""
    path = _path(err.absolute_path)
    v = err.validator
    val = err.instance
    sch = err.schema
    if v == "additionalProperties":
        props = sch.get("properties", {})
        extra = sorted(set(val) - set(props)) if isinstance(val, dict) else []
        lines = []
        for key in extra:
            hint = difflib.get_close_matches(str(key), list(props), n=1, cutoff=0.6)
            where = f"{path}.{key}" if err.absolute_path else str(key)
            msg = f"{where}: unknown field"
            msg += f"; did you mean {hint[0]!r}?" if hint else f"; allowed fields: {', '.join(sorted(props))}"
            lines.append(msg)
        return lines
    if v == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        where = f"{path}.{missing}" if err.absolute_path else missing
        return [f"{where}: required field is missing"]
    if v == "enum":
        return [f"{path}: {_short(val)} is not one of {', '.join(map(str, sch['enum']))}"]
    if v == "type":
        want = sch["type"] if isinstance(sch["type"], str) else " or ".join(sch["type"])
        return [f"{path}: {_short(val)} is a {_json_type(val)}, expected {want}"]
    if v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        words = {"minimum": "less than the minimum of", "exclusiveMinimum": "not greater than",
                 "maximum": "greater than the maximum of", "exclusiveMaximum": "not less than"}[v]
        return [f"{path}: {_short(val)} is {words} {sch[v]}"]
    if v == "pattern":
        return [f"{path}: {_short(val)} does not match the required pattern {sch['pattern']}"]
    if v in ("minLength", "maxLength"):
        return [f"{path}: {_short(val)} is too {'short' if v == 'minLength' else 'long'} ({v} {sch[v]})"]
    if v in ("minItems", "maxItems"):
        return [f"{path}: needs {'at least' if v == 'minItems' else 'at most'} {sch[v]} item(s), got {len(val)}"]
    return [f"{path}: {err.message}"]


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number" if isinstance(value, float) else "integer"
    return {str: "string", list: "array", dict: "object", type(None): "null"}.get(type(value), type(value).__name__)


def schema_problems(doc: Any) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema_mod.load_schema())
    # Report kind/apiVersion first: when those are wrong nothing else is worth reading.
    errors = sorted(validator.iter_errors(doc), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    lines: list[str] = []
    for err in errors:
        for line in _schema_error_message(err):
            if line not in lines:
                lines.append(line)
    return lines


# ----------------------------------------------------------------------------- frozen result

def freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return Node({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value


class Node:
    """Read-only attribute view of a validated mapping: `job.spec.training.batchSize`.
    Absent optional fields read as None."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any]):
        object.__setattr__(self, "_data", MappingProxyType(data))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            if name.startswith("__"):
                raise AttributeError(name) from None
            return None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("TrainingJob specs are frozen; use --set or edit the file")

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def keys(self):
        return self._data.keys()

    def to_dict(self) -> dict[str, Any]:
        return {k: _thaw(v) for k, v in self._data.items()}

    def __repr__(self) -> str:
        return f"Node({self.to_dict()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Node) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True, default=str))


def _thaw(value: Any) -> Any:
    if isinstance(value, Node):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class TrainingJob:
    """A validated spec with every default filled in."""

    name: str
    spec: Node
    document: Node
    source: str
    warnings: tuple[str, ...] = field(default=())

    @property
    def hash(self) -> str:
        """Content hash of the effective spec (defaults included): recorded in checkpoints."""
        text = json.dumps(self.document.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def validate_document(doc: Any, source: str = "<spec>") -> tuple[dict[str, Any], list[str], list[str]]:
    """Return (defaulted document, problems, warnings). Problems are `source: path: message` lines."""
    from runner import semantics

    problems = [f"{source}: {p}" for p in schema_problems(doc)]
    if problems:
        return doc, problems, []
    full = schema_mod.apply_defaults(doc)
    errors, warnings = semantics.check(full)
    return full, [f"{source}: {p}" for p in errors], [f"{source}: {w}" for w in warnings]


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> TrainingJob:
    """Read, parse, override, validate and freeze a TrainingJob file. Raises SpecError."""
    source = str(path)
    try:
        p = Path(path)
        size = p.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError([f"{source}: file is {size} bytes; specs are limited to {MAX_SPEC_BYTES} bytes (1 MiB)"])
        with open(p, "rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise SpecError([f"{source}: no such file"]) from None
    except IsADirectoryError:
        raise SpecError([f"{source}: is a directory; pass a TrainingJob YAML file"]) from None
    except PermissionError:
        raise SpecError([f"{source}: permission denied"]) from None
    except OSError as e:
        raise SpecError([f"{source}: cannot read ({e.strerror})"]) from None
    return job_from_document(parse_document(data, source), source, overrides)


def job_from_document(doc: dict[str, Any], source: str = "<spec>", overrides: Sequence[str] = ()) -> TrainingJob:
    if overrides:
        doc = apply_overrides(doc, overrides)
    full, problems, warnings = validate_document(doc, source)
    if problems:
        raise SpecError(problems)
    full.pop("status", None)
    return TrainingJob(name=full["metadata"]["name"], spec=freeze(full["spec"]), document=freeze(full),
                       source=source, warnings=tuple(warnings))
