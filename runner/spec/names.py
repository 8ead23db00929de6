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
