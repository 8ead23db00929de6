"""The run's history as JSON lines in `<output.dir>/metrics.jsonl`: what report.html is drawn from.

Appended, so a resumed run continues the same history; readers keep the last record of each
step. Rewritten only as a train stage starts (runner/train/restart.py): `resume: none` moves
the earlier run's records aside with the rest of that run, and a run that starts at step N
moves the records of steps after N aside (an abandoned timeline: a run stopped before its next
checkpoint, or a resume from an earlier one)."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


# How a stage ended (the `ended` field of its stage_finished record), in the report's words.
ENDINGS = {
    "completed": "completed",
    "interrupted": "interrupted (Ctrl-C): no checkpoint written",
    "stopped": "stopped by SIGTERM after writing a checkpoint",
    "terminated": "stopped by SIGTERM; what it wrote is kept",
    "failed": "failed",
}


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


def encode(records: list[dict[str, Any]]) -> bytes:
    """Records as the lines append() writes (for rewriting a history whole)."""
    return "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")


def _is_cache_stage(record: dict[str, Any]) -> bool:
    return record.get("event") in ("stage_started", "stage_finished") and record.get("stage") == "cache"


def split_earlier_run(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the earlier runs' records, the records of this run), for `resume: none`.

    This run's train stage has already recorded its start (the last `stage_started` of stage
    train), and this invocation's cache stage may have run just before it. The earlier run's
    records are everything up to the last train-stage record before that start (a train step,
    checkpoint, validation, or a train stage's start or end; an earlier run killed mid-stage
    has no end); the cache stage records after it, and everything from this train stage's
    start on, stay. Pure."""
    starts = [i for i, r in enumerate(records) if r.get("event") == "stage_started" and r.get("stage") == "train"]
    current = starts[-1] if starts else len(records)
    ends = [i for i in range(current) if not _is_cache_stage(records[i])]
    cut = ends[-1] + 1 if ends else 0
    return records[:cut], records[cut:]


def split_abandoned(records: list[dict[str, Any]], start_step: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the records of steps after `start_step`, the rest), for a train stage that starts at
    `start_step`: what earlier runs logged, validated or checkpointed after it belongs to weights
    this run discards. Records without a step (stage starts and ends, checkpoints of histories
    written before they recorded their step) describe what ran and stay. Pure."""
    def abandoned(r: dict[str, Any]) -> bool:
        return isinstance(r.get("step"), int) and r["step"] > start_step

    return [r for r in records if abandoned(r)], [r for r in records if not abandoned(r)]


def _json_number(v: Any) -> Any:
    """JSON has no NaN or infinity: write them as strings ("nan", "inf") that float() reads back."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v
