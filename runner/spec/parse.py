"""Read a spec file and parse its YAML into plain data, safely: bounded in size, depth and
alias expansion, duplicate keys refused, `1e-5` read as a number, and every failure worded as
one line with the line and column."""
from __future__ import annotations

import re
import stat
from pathlib import Path
from typing import Any

import yaml

from runner.spec.errors import SpecError, clip, kind_of

MAX_SPEC_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 100_000


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
            None, None, f"unreadable value {clip(getattr(node, 'value', ''), 40)!r} ({str(e).split(':')[0]}); "
            "quote it if it is meant as text", node.start_mark) from None


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
                         f"got {kind_of(doc)}"])
    return doc


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
