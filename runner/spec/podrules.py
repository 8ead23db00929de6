"""The semantic rules of what spec.kubernetes adds to every pod (environment, pull Secrets, pod
labels and annotations): what the schema cannot say, checked wherever a spec is validated
(`validate`, `render`, the operator). The clashes with what the runner sets itself need the
builder and live in runner/k8s/checks.py. Pure functions over a defaulted spec; rules yield
(level, "field.path: message") as runner/spec/semantics.py collects them.

Secrets never go into a spec: an env `value` that looks like one (by its variable's name or by
its shape) is refused without being shown, pointing at valueFrom.secretKeyRef.
"""
from __future__ import annotations

import re
from typing import Any, Iterator

from runner.spec import redact
from runner.spec.errors import ERROR, Finding

# Values that are flags, never credentials: `HF_HUB_DISABLE_IMPLICIT_TOKEN: "1"` names a token
# and is none.
_FLAG = re.compile(r"(?i)(0|1|true|false|yes|no|on|off)?")
# Kubernetes' qualified names (label and annotation keys): an optional DNS-1123 subdomain prefix
# of up to 253 characters and '/', then a name of up to 63.
_PREFIX = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def pod_options(spec: dict[str, Any]) -> dict[str, Any]:
    """spec.kubernetes, {} when absent (the pod options read from it: these rules and
    runner/k8s/podoptions.py)."""
    return spec.get("kubernetes") or {}


def _env_values(spec: dict[str, Any]) -> Iterator[Finding]:
    """A secret pasted into env: by the variable's name (HF_TOKEN, AWS_SECRET_ACCESS_KEY), unless
    the value is a flag, or by the value's shape (an hf_ token, a URL with a password)."""
    for i, var in enumerate(pod_options(spec).get("env") or []):
        if "value" not in var:
            continue
        name, value = var.get("name", ""), var["value"]
        by_name = redact.looks_secret(name) and not _FLAG.fullmatch(str(value))
        if by_name or redact.looks_like_secret_value(value):
            why = "names a secret" if by_name else "has a value shaped like a credential"
            yield ERROR, (f"spec.kubernetes.env[{i}].value: {name} {why} (the value is not shown); a secret never goes "
                          "into a spec: take it from a Kubernetes Secret with valueFrom.secretKeyRef (name, key), or "
                          "use spec.kubernetes.secrets for the Hub token and the W&B key")


def _value_or_value_from(spec: dict[str, Any]) -> Iterator[Finding]:
    for i, var in enumerate(pod_options(spec).get("env") or []):
        if "value" in var and "valueFrom" in var:
            yield ERROR, f"spec.kubernetes.env[{i}]: give a variable value or valueFrom, not both"


def _env_from_source(spec: dict[str, Any]) -> Iterator[Finding]:
    for i, source in enumerate(pod_options(spec).get("envFrom") or []):
        if ("configMapRef" in source) == ("secretRef" in source):
            yield ERROR, f"spec.kubernetes.envFrom[{i}]: give one of configMapRef or secretRef"


def _unique_names(spec: dict[str, Any]) -> Iterator[Finding]:
    """env and imagePullSecrets are lists keyed by name (the CRD's list-map keys): each name once."""
    for field in ("env", "imagePullSecrets"):
        seen: dict[str, int] = {}
        for i, item in enumerate(pod_options(spec).get(field) or []):
            name = item.get("name")
            if name in seen:
                yield ERROR, (f"spec.kubernetes.{field}[{i}].name: {name} is given twice (also {field}[{seen[name]}]); "
                              "give each once")
            seen.setdefault(name, i)


def qualified_name_problem(key: str) -> str | None:
    """Why `key` is no Kubernetes label or annotation key, or None."""
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _PREFIX.fullmatch(prefix)):
        return "its prefix (before '/') must be a DNS subdomain: lowercase letters, digits, '-' and '.'"
    if not name or len(name) > 63 or not _NAME.fullmatch(name):
        return ("its name (after any '/') must be 1 to 63 letters, digits, '-', '_' and '.', starting and ending "
                "with a letter or digit")
    return None


def label_value_problem(value: str) -> str | None:
    """Why `value` is no Kubernetes label value, or None."""
    if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
        return ("a label value is at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter "
                "or digit (or empty)")
    return None


def _pod_metadata_keys(spec: dict[str, Any]) -> Iterator[Finding]:
    meta = pod_options(spec).get("podMetadata") or {}
    for kind in ("labels", "annotations"):
        for key in meta.get(kind) or {}:
            if why := qualified_name_problem(str(key)):
                yield ERROR, f"spec.kubernetes.podMetadata.{kind}: {key!r} is not a Kubernetes {kind[:-1]} key: {why}"


RULES = (_env_values, _value_or_value_from, _env_from_source, _unique_names, _pod_metadata_keys)
