"""`trainingjob validate` over many files, with each problem as a record (file, field, message, severity).

The loader and the semantic rules report problems as lines, `SOURCE: FIELD: message` (a warning
says `SOURCE: warning: FIELD: message`), which is what the text output prints. `--output json`
needs the parts: `record` splits a line back into them. The source is known, so only the field
has to be recognised, and a line without one (a YAML syntax error, "the file is empty") keeps
`field: null` rather than a wrong guess.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO, Sequence

from runner.spec import schema as schema_mod
from runner.spec.errors import ERROR, WARNING, SpecError
from runner.spec.load import STDIN, STDIN_SOURCE, job_from_document, read_spec
from runner.spec.localpaths import local_path_problems
from runner.spec.overrides import apply_what_applies
from runner.spec.parse import parse_document


# A field path as the spec module writes it: spec.datasets[0].crop, metadata.name, (document),
# and a `--set spec.x` override.
_FIELD = re.compile(r"^(?:--set )?(?:\(document\)|(?:apiVersion|kind|metadata|spec|status)(?:\.[^\s.:\[\]]+|\[\d+\])*)$")


@dataclass(frozen=True)
class Problem:
    file: str
    field: str | None
    message: str
    severity: str
    text: str  # the line as the text output prints it

    def record(self) -> dict[str, str | None]:
        out = asdict(self)
        del out["text"]
        return out


@dataclass(frozen=True)
class FileResult:
    file: str
    name: str | None  # metadata.name whenever it is a valid name, even in an invalid spec
    problems: tuple[Problem, ...]
    datasets: tuple[str, ...] = ()  # a line per local dataset that passed: usable images per bucket

    @property
    def valid(self) -> bool:
        return not any(p.severity == ERROR for p in self.problems)


def record(line: str, source: str, severity: str = ERROR) -> Problem:
    """A problem line (`SOURCE: [warning: ]FIELD: message`) as a record."""
    rest = line.removeprefix(f"{source}: ") if line.startswith(f"{source}: ") else line
    if rest.startswith("warning: "):
        severity, rest = WARNING, rest.removeprefix("warning: ")
    head, sep, tail = rest.partition(": ")
    if sep and _FIELD.match(head):
        return Problem(source, head, tail, severity, line)
    return Problem(source, None, rest, severity, line)


def valid_name(doc: Any) -> str | None:
    """metadata.name of a parsed document when it is a valid name (the schema's pattern and
    length), whatever else is wrong with the document; else None."""
    metadata = doc.get("metadata") if isinstance(doc, dict) else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str):
        return None
    rule = schema_mod.load_schema()["properties"]["metadata"]["properties"]["name"]
    return name if len(name) <= rule["maxLength"] and re.fullmatch(rule["pattern"], name) else None


def check_file(path: str, overrides: Sequence[str] = (), stdin: BinaryIO | None = None) -> FileResult:
    """Validate one spec (`-` reads standard input) and, when the spec is sound, the paths `run`
    would refuse at once on this machine and its local datasets."""
    from runner.data.preflight import check_local_datasets  # reads image headers; never torch

    source = STDIN_SOURCE if path == STDIN else path
    doc = None
    try:
        data, source = read_spec(path, stdin)
        doc = parse_document(data, source)
        job = job_from_document(doc, source, overrides)
    except SpecError as e:
        found = [record(w, source, WARNING) for w in e.warnings]
        if overrides and isinstance(doc, dict):  # `--set metadata.name=...` names it too
            doc = apply_what_applies(doc, overrides, "--set")[0]
        name = valid_name(doc)
        return FileResult(source, name, tuple(found + [record(p, source) for p in e.problems]))
    found = [record(w, source, WARNING) for w in job.warnings]
    # Checks against this machine's files only make sense once the spec itself is sound: the
    # paths `run` refuses at once, then the local datasets.
    document = job.document.to_dict()
    problems, datasets = check_local_datasets(document)
    found += [record(f"{source}: {line}", source) for line in local_path_problems(document["spec"]) + problems]
    return FileResult(source, job.name, tuple(found), tuple(datasets))


def check_files(paths: Sequence[str], overrides: Sequence[str] = (), stdin: BinaryIO | None = None) -> list[FileResult]:
    return [check_file(p, overrides, stdin) for p in paths]


def as_json(results: Sequence[FileResult]) -> dict:
    """{"valid": bool, "files": [{file, name, valid, datasets}], "problems": [{file, field, message, severity}]};
    `datasets`: the line on each local dataset that passed, as the text output prints under the file."""
    return {"valid": all(r.valid for r in results),
            "files": [{"file": r.file, "name": r.name, "valid": r.valid, "datasets": list(r.datasets)}
                      for r in results],
            "problems": [p.record() for r in results for p in r.problems]}
