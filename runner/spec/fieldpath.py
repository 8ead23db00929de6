"""Field paths as text: `spec.datasets[0].crop` split into parts, parts joined back, and a
value looked up in a plain document. The schema side (which node a path names) is
runner.spec.schema.node_at."""
from __future__ import annotations

import re
from typing import Any, Iterable

_INDEX = re.compile(r"\[(\d+)\]")
DOCUMENT = "(document)"  # how a problem about the whole document names its field


def split(path: str) -> list[str]:
    """`spec.datasets[0].crop` and `spec.datasets.0.crop` -> ['spec', 'datasets', '0', 'crop']."""
    return _INDEX.sub(r".\1", path.strip()).split(".")


def join(parts: Iterable[Any]) -> str:
    """['spec', 'datasets', 0, 'crop'] -> `spec.datasets[0].crop` (int parts are list indexes)."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or DOCUMENT


def within(path: str, other: str) -> bool:
    """`path` is `other` or one of its descendants."""
    return other == DOCUMENT or path == other or path.startswith((other + ".", other + "["))


def dig(doc: Any, path: str) -> Any:
    """The value at dotted `path` in a plain document, or None where any part is absent."""
    node = doc
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
