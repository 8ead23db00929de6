"""`trainingjob import-simpletuner`: convert a SimpleTuner config.json + multidatabackend.json.

Every SimpleTuner option ends up in exactly one place: mapped onto a TrainingJob field,
consumed (it only selects what this converter already assumes, e.g. `model_family:
pixart_sigma`), or listed as having no equivalent. Nothing is dropped silently. Options without
an equivalent are listed by name only, never with their values: SimpleTuner configs carry S3
keys, Hub tokens and webhook URLs, and any value printed here is shown via runner.spec.redact.

The parts: options.py (reading values, the option tables), config.py (config.json),
backends.py (multidatabackend.json); here the entry points.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from runner.importers.simpletuner.backends import convert_backends
from runner.importers.simpletuner.config import convert_config
from runner.importers.simpletuner.options import PIXART_FAMILY, Conversion
from runner.spec import redact
from runner.spec import schema as schema_mod
from runner.spec.errors import SpecError, kind_of
from runner.spec.load import job_from_document
from runner.spec.parse import MAX_SPEC_BYTES


def convert(config: Any, backends: Any, config_label: str = "config.json",
            backends_label: str = "multidatabackend.json") -> Conversion:
    out = Conversion()
    out.set("apiVersion", schema_mod.api_version())
    out.set("kind", schema_mod.KIND)
    if not isinstance(config, dict):
        out.problems.append(f"{config_label}: expected a JSON object of SimpleTuner options, got {kind_of(config)}")
        return out
    if isinstance(backends, dict):  # a single backend written without the surrounding list
        backends = [backends]
    if not isinstance(backends, list):
        out.problems.append(f"{backends_label}: expected a JSON list of data backends, got {kind_of(backends)}")
        return out
    out.set("spec.model.family", PIXART_FAMILY)
    defaults = convert_config(config, config_label, out)
    convert_backends(backends, backends_label, defaults, out)
    out.document = ordered(out.document, schema_mod.load_schema())
    # The last net: no credential-shaped value reaches the spec or a message.
    out.problems += [f"{path}: the value converted into it looks like a credential ({redact.HIDDEN}), so it is not "
                     "written; set this field by hand after converting" for path in _credential_fields(out.document)]
    out.notes, out.unmapped, out.problems = ([redact.scrub(t) for t in texts]
                                             for texts in (out.notes, out.unmapped, out.problems))
    return out


def _credential_fields(value: Any, path: str = "") -> list[str]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _credential_fields(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _credential_fields(v, f"{path}[{i}]")]
    return [path] if redact.looks_like_secret_value(value) else []


def ordered(value: Any, schema: dict[str, Any]) -> Any:
    """Keys in schema order, so the YAML reads like the docs (`explain`) do."""
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        keys = [k for k in props if k in value] + [k for k in value if k not in props]
        return {k: ordered(value[k], props.get(k, {})) for k in keys}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [ordered(v, schema["items"]) for v in value]
    return value


def read_json(path: str) -> Any:
    """A JSON file, read within the same limits as specs; SpecError on any problem."""
    p = Path(path)
    try:
        if not p.is_file():
            raise SpecError([f"{path}: {'is a directory' if p.is_dir() else 'no such file'}"])
        if p.stat().st_size > MAX_SPEC_BYTES:
            raise SpecError([f"{path}: larger than 1 MiB; not a SimpleTuner config"])
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SpecError([f"{path}: not UTF-8 text"]) from None
    except OSError as e:
        raise SpecError([f"{path}: cannot read ({e.strerror or e})"]) from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise SpecError([f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"]) from None
    except (ValueError, RecursionError) as e:
        raise SpecError([f"{path}: unreadable JSON ({str(e).split(':')[0] or 'nested too deeply'})"]) from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def render(conv: Conversion, config_label: str, backends_label: str) -> str:
    lines = [f"# Converted from SimpleTuner by `trainingjob import-simpletuner {config_label} {backends_label}`."]
    if conv.unmapped:
        lines.append("# Options with no TrainingJob equivalent (NOT converted; review them):")
        lines += [f"#   {_comment(u)}" for u in conv.unmapped]
    else:
        lines.append("# Every option had an equivalent.")
    if conv.notes:
        lines.append("# Adjustments:")
        lines += [f"#   {_comment(n)}" for n in conv.notes]
    body = yaml.safe_dump(conv.document, sort_keys=False, allow_unicode=True, width=100)
    return "\n".join(lines) + "\n" + body


def _comment(text: str) -> str:
    return " ".join(text.split())  # a newline inside a value must not end the comment


def import_files(config_path: str, backends_path: str) -> tuple[Conversion, str, tuple[str, ...]]:
    """Convert two files; returns the conversion, its YAML and the warnings `validate` gives it.
    Raises SpecError when the inputs cannot be read or converted, or the result does not validate."""
    config, backends = read_json(config_path), read_json(backends_path)
    conv = convert(config, backends, Path(config_path).name, Path(backends_path).name)
    if conv.problems:
        raise SpecError(conv.problems)
    text = render(conv, config_path, backends_path)
    try:
        job = job_from_document(conv.document, "converted spec")
    except SpecError as e:
        raise SpecError(e.problems + ["the converted spec does not validate; fix the SimpleTuner option behind "
                                      "each field above, or convert and then edit the output"]) from None
    return conv, text, job.warnings
