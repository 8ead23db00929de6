"""The run's history as JSON lines in `<output.dir>/metrics.jsonl`: what report.html is drawn from.

Appended, never rewritten, so a resumed run continues the same history; readers keep the last
record of each step (a resume repeats the steps after its checkpoint)."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


class RunLog:
    def __init__(self, path: Path):
        self.path = path

    def append(self, event: str, **fields: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"t": round(time.time(), 3), "event": event, **{k: _json_number(v) for k, v in fields.items()}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def read(path: Path) -> list[dict[str, Any]]:
    """Every record; a torn last line (a killed process) is skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _json_number(v: Any) -> Any:
    """JSON has no NaN or infinity: write them as strings ("nan", "inf") that float() reads back."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v
