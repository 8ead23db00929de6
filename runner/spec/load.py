"""Load and validate a TrainingJob at the edge; hand out a frozen, defaulted object.

Nothing past this module sees raw YAML: every stage takes a `TrainingJob`.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import re
import stat
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Sequence

import yaml

from runner.spec import redact
from runner.spec import schema as schema_mod

MAX_SPEC_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 100_000


class SpecError(Exception):
    """A spec that cannot be used. `problems` holds one line per problem; `warnings` holds
    the warnings found along the way (still worth printing when the spec is rejected)."""

    def __init__(self, problems: Sequence[str], warnings: Sequence[str] = ()):
        self.problems = list(problems)
        self.warnings = list(warnings)
        super().__init__("\n".join(self.problems))


# ----------------------------------------------------------------------------- YAML

class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and reads `1e-5` as a number.

    PyYAML follows YAML 1.1, where a float needs a dot; kubectl (go-yaml) and YAML 1.2 read
    `1e-5` as a float, and a learning rate silently becoming a string is a classic trap."""


def _construct_object(self: _StrictLoader, node: yaml.Node, deep: bool = False) -> Any:
    # PyYAML's scalar constructors raise bare ValueError for e.g. `2024-13-45` or a 5000-digit
    # number; turn that into a YAML error that carries the line and column.
    try:
        return yaml.SafeLoader.construct_object(self, node, deep=deep)
    except (ValueError, OverflowError) as e:
        raise yaml.constructor.ConstructorError(
            None, None, f"unreadable value {_clip(getattr(node, 'value', ''))!r} ({str(e).split(':')[0]}); "
            "quote it if it is meant as text", node.start_mark) from None


def _clip(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


_StrictLoader.construct_object = _construct_object  # type: ignore[method-assign]
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789"))

_MERGE_TAG = "tag:yaml.org,2002:merge"


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:  # `<<: *base` may legitimately repeat keys it merges
            continue
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be plain scalars", key_node.start_mark)
        if key in seen:
            first = seen[key].start_mark
            raise yaml.constructor.ConstructorError(
                None, None,
                f"duplicate key '{key}' (first at line {first.line + 1}, column {first.column + 1}); keep one",
                key_node.start_mark)
        seen[key] = key_node
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


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
            return f"the document expands to more than {MAX_NODES} values (YAML aliases?); write it out plainly"
        if depth > MAX_DEPTH:
            m = current.start_mark
            return (f"line {m.line + 1}, column {m.column + 1}: nesting deeper than {MAX_DEPTH} levels "
                    "(or a YAML alias that contains itself)")
        if isinstance(current, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in current.value)
        elif isinstance(current, yaml.MappingNode):
            for k, v in current.value:
                stack.append((k, depth + 1))
                stack.append((v, depth + 1))
    return None


def _check_events(text: str) -> str | None:
    """Refuse deep nesting from the flat event stream, before the (recursive, and slow to fail)
    composer sees it: `[[[[...` 20,000 deep would otherwise cost seconds of stack unwinding."""
    depth = 0
    for event in yaml.parse(text, Loader=_StrictLoader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                m = event.start_mark
                return f"line {m.line + 1}, column {m.column + 1}: nesting deeper than {MAX_DEPTH} levels"
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1
    return None


def _decode(data: bytes, source: str) -> str:
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError([f"{source}: file is {len(data)} bytes; specs are limited to {MAX_SPEC_BYTES} bytes (1 MiB)"])
    if b"\x00" in data:
        raise SpecError([f"{source}: not a text file (contains NUL bytes); expected a UTF-8 YAML TrainingJob"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError([f"{source}: not UTF-8 text (bad byte at offset {e.start}); save it as UTF-8"]) from None


def load_yaml(text: str, source: str = "<spec>") -> Any:
    """Parse one YAML document into plain data, bounded in time and memory. None when empty."""
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError([f"{source}: larger than 1 MiB; specs are limited to {MAX_SPEC_BYTES} bytes"])
    try:
        problem = _check_events(text)
        if problem:
            raise SpecError([f"{source}: {problem}"])
        nodes = [n for n in yaml.compose_all(text, Loader=_StrictLoader) if n is not None]
        if len(nodes) > 1:
            raise SpecError([f"{source}: holds {len(nodes)} YAML documents; put one TrainingJob per file"])
        if not nodes:
            return None
        problem = _check_node_tree(nodes[0])
        if problem:
            raise SpecError([f"{source}: {problem}"])
        loader = _StrictLoader(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise SpecError([f"{source}: {_yaml_message(e, text)}"]) from None
    except RecursionError:
        raise SpecError([f"{source}: nesting too deep to parse; specs nest a few levels at most"]) from None
    except (ValueError, OverflowError) as e:  # a constructor error _construct_object did not wrap
        raise SpecError([f"{source}: unreadable value ({e}); quote it if it is meant as text"]) from None


def parse_document(text: bytes | str, source: str = "<spec>") -> dict[str, Any]:
    """Parse one YAML (or JSON) TrainingJob document into plain Python data, safely."""
    if isinstance(text, bytes):
        text = _decode(text, source)
    doc = load_yaml(text, source)
    if doc is None:
        raise SpecError([f"{source}: the file is empty; expected a TrainingJob (run `trainingjob init` for a starter)"])
    if not isinstance(doc, dict):
        raise SpecError([f"{source}: expected a mapping with apiVersion, kind, metadata and spec; "
                         f"got {_a(_yaml_type(doc))}"])
    return doc


def _yaml_type(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value), "scalar")


def _yaml_message(e: yaml.YAMLError, text: str = "") -> str:
    if isinstance(e, yaml.reader.ReaderError):
        before = text[:e.position]
        line, column = before.count("\n") + 1, e.position - (before.rfind("\n") + 1) + 1
        char = e.character if isinstance(e.character, int) else ord(e.character[:1] or "\0")
        return (f"line {line}, column {column}: character U+{char:04X} is not allowed in YAML "
                "(control character or binary data)")
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    if isinstance(e, yaml.constructor.ConstructorError):
        if "could not determine a constructor" in str(problem):
            problem += " (custom and Python tags are not allowed)"
        return f"{where}{problem}"
    context = getattr(e, "context", None)
    return f"{where}YAML syntax error: {problem}" + (f" ({context})" if context else "")


# ----------------------------------------------------------------------------- overrides

_INDEX = re.compile(r"\[(\d+)\]")


def _split_path(path: str) -> list[str]:
    """`spec.datasets[0].crop` and `spec.datasets.0.crop` -> ['spec', 'datasets', '0', 'crop']."""
    return _INDEX.sub(r".\1", path.strip()).split(".")


def apply_overrides(doc: dict[str, Any], overrides: Iterable[str], source: str = "--set") -> dict[str, Any]:
    """Apply `path=value` overrides; values are YAML (`null` removes the field, so its default
    applies). Paths are checked against the schema here so a typo names the flag, not the file.
    Raises SpecError listing every override that could not be applied."""
    doc, problems = _apply_overrides(doc, overrides, source)
    if problems:
        raise SpecError(problems)
    return doc


def _apply_overrides(doc: dict[str, Any], overrides: Iterable[str], source: str) -> tuple[dict[str, Any], list[str]]:
    """Apply what can be applied and report the rest, so the caller can still validate the
    result and list every problem in one go."""
    doc = copy.deepcopy(doc)
    problems = []
    for item in overrides:
        path, sep, raw = item.partition("=")
        if not sep or not path.strip():
            problems.append(f"{source} {item!r}: expected PATH=VALUE, e.g. --set spec.training.maxSteps=10")
            continue
        parts = _split_path(path)
        if not all(parts):
            problems.append(f"{source} {path}: empty segment in the field path")
            continue
        target, unknown = _schema_at(parts)
        if unknown:
            problems.append(f"{source} {path}: {unknown}")
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


def _schema_at(parts: list[str]) -> tuple[dict[str, Any], str | None]:
    """Schema node of a field path, or the reason there is none (with a did-you-mean)."""
    node = schema_mod.load_schema()
    for i, part in enumerate(parts):
        here = ".".join(parts[:i])
        if node.get("type") == "array":
            if not part.isdigit():
                return {}, f"{here} is a list; index it, e.g. {here}[0].{part}"
            node = node.get("items", {})
        elif node.get("x-kubernetes-preserve-unknown-fields"):
            return {}, None
        elif "properties" in node:
            if part not in node["properties"]:
                return {}, f"unknown field {here}.{part}" + did_you_mean(part, node["properties"])
            node = node["properties"][part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]  # a free-form map (labels, nodeSelector): any key goes
        else:
            return {}, f"{here} is {_a(str(node.get('type', 'value')))}; it has no field {part!r}"
    return node, None


def did_you_mean(word: str, choices: Iterable[Any]) -> str:
    choices = [str(c) for c in choices]
    folded = {c.lower(): c for c in choices}
    hint = [folded[word.lower()]] if word.lower() in folded else difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {hint[0]!r}?" if hint else f"; allowed: {', '.join(choices)}"


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
    if not raw.strip():
        return ""
    return load_yaml(raw, "value")


# ----------------------------------------------------------------------------- validation

def _path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(document)"


def _short(value: Any, path: str = "") -> str:
    """A value for an error line, or redact.HIDDEN when the field or the value looks secret: a
    token pasted into the wrong field must not end up in a terminal, a CI log or an event."""
    if redact.is_hidden(path, value):
        return redact.HIDDEN
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_YAML11_BOOLS = {"yes", "no", "on", "off", "y", "n", "true", "false"}


def _schema_error_message(err) -> list[str]:
    """One readable line per jsonschema error: field path, bad value, what is allowed."""
    path = _path(err.absolute_path)
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
        line = f"{path}: {_short(val, path)} is not one of {', '.join(map(str, sch['enum']))}"
        if isinstance(val, str):
            hint = difflib.get_close_matches(val, [str(e) for e in sch["enum"]], n=1, cutoff=0.6)
            line += f"; did you mean {hint[0]!r}?" if hint else ""
        elif isinstance(val, bool) and any(str(e).lower() in _YAML11_BOOLS for e in sch["enum"]):
            line += _bool_hint(val)
        return [line]
    if v == "type":
        want = sch["type"] if isinstance(sch["type"], str) else " or ".join(sch["type"])
        line = f"{path}: {_short(val, path)} is {_a(_json_type(val))}, expected {want}"
        if isinstance(val, bool) and "string" in want:
            line += _bool_hint(val)
        return [line]
    if v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        words = {"minimum": "less than the minimum of", "exclusiveMinimum": "not greater than",
                 "maximum": "greater than the maximum of", "exclusiveMaximum": "not less than"}[v]
        return [f"{path}: {_short(val, path)} is {words} {sch[v]}"]
    if v == "pattern":
        hint = redact.reference_hint(path)
        if hint:  # a name field (of an env var or a Secret) holding something else: likely the secret
            return [f"{path}: {_short(val, path)} is not a valid name here; {hint}"]
        what = {"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$": " (lowercase letters, digits and '-', starting and ending "
                "with a letter or digit)", "^/": " (an absolute path)"}.get(sch["pattern"], "")
        return [f"{path}: {_short(val, path)} does not match the required pattern {sch['pattern']}{what}"]
    if v in ("minLength", "maxLength"):
        return [f"{path}: {_short(val, path)} is too {'short' if v == 'minLength' else 'long'} ({v} {sch[v]})"]
    if v in ("minItems", "maxItems"):
        return [f"{path}: needs {'at least' if v == 'minItems' else 'at most'} {sch[v]} item(s), got {len(val)}"]
    if redact.is_hidden(path, val):  # jsonschema's own message quotes the value
        return [f"{path}: {redact.HIDDEN} fails the schema's {v!r} rule"]
    return [f"{path}: {err.message}"]


def _bool_hint(val: bool) -> str:
    return (f"; YAML reads bare yes/no/on/off/true/false as booleans, so quote the word you meant "
            f"(e.g. \"{'yes' if val else 'no'}\")")


def _a(word: str) -> str:
    return ("an " if word[:1] and word[0] in "aeiou" else "a ") + word


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number" if isinstance(value, float) else "integer"
    return {str: "string", list: "array", dict: "object", type(None): "null"}.get(type(value), type(value).__name__)


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
        for line in _schema_error_message(err):
            if line not in lines:
                lines.append(line)
    reported = [_line_path(line) for line in lines]
    lines += [line for line in _non_finite(doc, []) if _line_path(line) not in reported]
    return lines


def field_problems(path: str, value: Any) -> list[str]:
    """`path: message` lines for one field's value checked against its own schema (for prompts
    and converters that build a spec field by field). Unknown paths are a problem too."""
    import jsonschema

    parts = _split_path(path)
    node, unknown = _schema_at(parts)
    if unknown:
        return [f"{path}: {unknown}"]
    lines = []
    for err in jsonschema.Draft202012Validator(node).iter_errors(value):
        for line in _schema_error_message(err):
            line = line.removeprefix("(document)")
            lines.append(path + line if line.startswith(("[", ":")) else f"{path}.{line}")
    return lines + [path + line.removeprefix("(document)") for line in _non_finite(value, [])]


def _non_finite(value: Any, parts: list[Any]) -> list[str]:
    """JSON has no NaN or infinity; YAML's `.nan`/`.inf` would pass `minimum` checks unnoticed."""
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{_path(parts)}: {value} is not a finite number"]
    if isinstance(value, dict):
        return [line for k, v in value.items() if k != "status" or parts for line in _non_finite(v, parts + [k])]
    if isinstance(value, list):
        return [line for i, v in enumerate(value) for line in _non_finite(v, parts + [i])]
    return []


def _line_path(line: str) -> str:
    return line.removeprefix("warning: ").split(": ", 1)[0]


def _within(path: str, other: str) -> bool:
    """`path` is `other` or one of its descendants."""
    return other == "(document)" or path == other or path.startswith((other + ".", other + "["))


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
    """Return (defaulted document, problems, warnings). Problems are `source: path: message` lines.

    The semantic checks run even when the schema rejects something, so one pass reports every
    problem; their findings inside fields the schema already rejected are dropped as noise."""
    from runner.spec import semantics

    schema_lines = schema_problems(doc)
    full = schema_mod.apply_defaults(doc)
    errors, warnings = semantics.check(full, tolerant=bool(schema_lines))
    if schema_lines:
        bad = [_line_path(line) for line in schema_lines]
        errors = [e for e in errors if not any(_within(_line_path(e), b) for b in bad)]
        warnings = [w for w in warnings if not any(_within(_line_path(w), b) for b in bad)]
    problems = [f"{source}: {p}" for p in schema_lines + [e for e in errors if e not in schema_lines]]
    return full, problems, [f"{source}: {w}" for w in warnings]


def read_spec_file(path: str | Path) -> bytes:
    """The bytes of a spec file, refusing anything over 1 MiB before reading it."""
    source = str(path)
    try:
        p = Path(path)
        st = p.stat()
        if stat.S_ISDIR(st.st_mode):
            raise SpecError([f"{source}: is a directory; pass a TrainingJob YAML file"])
        if not stat.S_ISREG(st.st_mode):
            # A FIFO or device would block or never end; specs are ordinary files.
            raise SpecError([f"{source}: not a regular file; pass a TrainingJob YAML file"])
        size = st.st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError([f"{source}: file is {size} bytes; specs are limited to {MAX_SPEC_BYTES} bytes (1 MiB)"])
        with open(p, "rb") as f:
            # Read one byte past the limit in case the file grew since stat().
            return f.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise SpecError([f"{source}: no such file"]) from None
    except PermissionError:
        raise SpecError([f"{source}: permission denied"]) from None
    except OSError as e:
        raise SpecError([f"{source}: cannot read ({e.strerror or e})"]) from None


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> TrainingJob:
    """Read, parse, override, validate and freeze a TrainingJob file. Raises SpecError."""
    source = str(path)
    return job_from_document(parse_document(read_spec_file(path), source), source, overrides)


def job_from_document(doc: dict[str, Any], source: str = "<spec>", overrides: Sequence[str] = ()) -> TrainingJob:
    override_problems: list[str] = []
    if overrides:
        doc, override_problems = _apply_overrides(doc, overrides, "--set")
    full, problems, warnings = validate_document(doc, source)
    problems = [f"{source}: {p}" for p in override_problems] + problems
    if problems:
        raise SpecError(problems, warnings)
    full.pop("status", None)
    return TrainingJob(name=full["metadata"]["name"], spec=freeze(full["spec"]), document=freeze(full),
                       source=source, warnings=tuple(warnings))
