"""Names a spec holds (`metadata.name`, dataset names), made from free text."""
from __future__ import annotations

import re
import unicodedata
from typing import Any

MAX_NAME = 63  # a DNS label; dataset names name cache folders and follow the same limit


def slug(text: Any, fallback: str, *, underscore: bool = False) -> str:
    """`My Photos!` -> `my-photos`: lowercase letters, digits and '-' (and '_' with
    `underscore`, as dataset names allow), at most 63 characters, starting and ending with a
    letter or digit; `fallback` when nothing is left."""
    keep, edge = ("a-z0-9_-", "-_") if underscore else ("a-z0-9-", "-")
    # accented Latin letters keep their base letter (`données` -> `donnees`, not `donn-es`)
    plain = "".join(c for c in unicodedata.normalize("NFKD", str(text)) if not unicodedata.combining(c))
    name = re.sub(f"[^{keep}]+", "-", plain.lower()).strip(edge)[:MAX_NAME].strip(edge)
    return name or fallback


# A spec.model.pretrained written so names a folder on this machine (there or not), never a Hub id;
# one starting with BUILTIN_PREFIX a model built offline (runner/models/tiny).
LOCAL_PATH_PREFIXES = (".", "/", "~")
BUILTIN_PREFIX = "builtin:"

# Hub repo ids, by the rules of huggingface_hub.utils.validate_repo_id (as of huggingface_hub
# 2.4; tests/unit/test_hub_repo_ids.py checks the two agree on its table). Rewritten here because `validate`
# must work without the training extras, and huggingface_hub is one of them.
MAX_REPO_PART = 96  # each of the namespace and the name
_REPO_PART = re.compile(r"[A-Za-z0-9_.-]+")
_REPO_PART_EDGE = re.compile(r"[A-Za-z0-9_]")


def repo_id_problem(repo_id: str, *, namespace_required: bool = False) -> str | None:
    """Which of the Hub's repo-id rules `repo_id` breaks (worded for a problem line), or None
    when the Hub accepts it: `name` or `namespace/name`, each part 1 to 96 of letters, digits,
    '-', '_' and '.', starting and ending with a letter, digit or '_'; no '--' or '..'
    anywhere; not ending in '.git'."""
    parts = repo_id.split("/")
    if len(parts) > 2 or (namespace_required and len(parts) != 2):
        return "it must be namespace/name, with exactly one '/'" if namespace_required else \
            "it must be name or namespace/name, with at most one '/'"
    for part in parts:
        if not part:
            return "the namespace and the name must not be empty"
        if len(part) > MAX_REPO_PART:
            return f"{part[:12]!r}... is {len(part)} characters long; the namespace and the name are at most {MAX_REPO_PART} each"
        if not _REPO_PART.fullmatch(part):
            return "only letters, digits, '-', '_' and '.' are allowed"
        if not (_REPO_PART_EDGE.fullmatch(part[0]) and _REPO_PART_EDGE.fullmatch(part[-1])):
            return "the namespace and the name must start and end with a letter, digit or '_'"
    if "--" in repo_id or ".." in repo_id:
        return "'--' and '..' are not allowed"
    if repo_id.endswith(".git"):
        return "it must not end in '.git'"
    return None
