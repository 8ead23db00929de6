"""Load and validate a TrainingJob at the edge; hand out a frozen, defaulted object.

Nothing past this module sees raw YAML: every stage takes a `TrainingJob`. The steps, each in
its own module: read and parse (parse.py), apply `--set` (overrides.py), check against the
schema and the semantic rules (validate.py), freeze (node.py).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, BinaryIO, Sequence

from runner.spec import schema as schema_mod
from runner.spec.errors import SpecError
from runner.spec.node import TrainingJob, freeze
from runner.spec.overrides import apply_what_applies
from runner.spec.parse import MAX_SPEC_BYTES, parse_document, read_spec_file
from runner.spec.validate import validate_document


STDIN = "-"  # a spec read from standard input, as `kubectl apply -f -`
STDIN_SOURCE = "<stdin>"


def read_spec(path: str | Path, stdin: BinaryIO | None = None) -> tuple[bytes, str]:
    """(the bytes of a spec, the name its messages use): a file, or `-` standard input."""
    if str(path) == STDIN:
        return (stdin or sys.stdin.buffer).read(MAX_SPEC_BYTES + 1), STDIN_SOURCE
    return read_spec_file(path), str(path)


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> TrainingJob:
    """Read, parse, override, validate and freeze a TrainingJob file (`-`: standard input).
    Raises SpecError."""
    data, source = read_spec(path)
    return job_from_document(parse_document(data, source), source, overrides)


def job_from_document(doc: dict[str, Any], source: str = "<spec>", overrides: Sequence[str] = ()) -> TrainingJob:
    """Override, validate and freeze an already parsed document. Raises SpecError."""
    override_problems: list[str] = []
    if overrides:
        doc, override_problems = apply_what_applies(doc, overrides, "--set")
    full, problems, warnings = validate_document(doc, source)
    problems = [f"{source}: {p}" for p in override_problems] + problems
    if problems:
        raise SpecError(problems, warnings)
    full.pop("status", None)
    schema = schema_mod.load_schema()
    return TrainingJob(name=full["metadata"]["name"], spec=freeze(full["spec"], "spec", schema["properties"]["spec"]),
                       document=freeze(full, "", schema), source=source, warnings=tuple(warnings))
