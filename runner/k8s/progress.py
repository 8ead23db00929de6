"""Training progress for `status.progress`, read from the trainer's own /metrics endpoint.

Why the operator scrapes rather than the trainer reporting: the trainer already serves these
numbers for Prometheus, so it needs no cluster credentials or RBAC of its own (stages never
import kubernetes), and one reader sees exactly what dashboards see. The operator reads rank 0's
pod (the train Job's completion index 0), which is the one process that serves /metrics, every
PROGRESS_INTERVAL_S.

Metric names come from ONE place, runner/observe/names.py (standard library only, so the
operator needs no training extras for them); a rename there reaches this parser.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

PROGRESS_INTERVAL_S = 15  # at least twice per 30 s, so a missed scrape still refreshes in time
SCRAPE_TIMEOUT_S = 3
# The status.progress fields read from /metrics. etaSeconds is the trainer's own estimate (its
# mean time per step, checkpoints and validation included), the one the dashboard shows; only
# while the trainer has none yet is it estimated here from samples/s.
FIELDS = ("step", "totalSteps", "loss", "samplesPerSecond", "etaSeconds")


@lru_cache(maxsize=1)
def metric_names() -> dict[str, str]:
    """Prometheus sample name -> status.progress field, from runner.observe.names."""
    from runner.observe.names import PROGRESS

    return {PROGRESS[field]: field for field in FIELDS}


def parse(text: str) -> dict[str, float]:
    """The progress fields found in a /metrics exposition (empty when none are there)."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted, out = metric_names(), {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:  # by sample name: a counter's family name drops its _total
            field = wanted.get(sample.name)
            if field and field not in out:
                out[field] = float(sample.value)
    return out


def human(seconds: float) -> str:
    """3725 -> '1h02m', 185 -> '3m05s', 9 -> '9s'."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def samples_per_step(spec: dict[str, Any]) -> int:
    hw, training = spec["hardware"], spec["training"]
    return training["batchSize"] * training["gradientAccumulationSteps"] * hw["gpusPerNode"] * hw["nodes"]


def progress(values: dict[str, float], spec: dict[str, Any], now: str) -> dict[str, Any] | None:
    """status.progress from parsed metrics (pure); None until the trainer reports a step."""
    if "step" not in values or "totalSteps" not in values or values["totalSteps"] <= 0:
        return None
    step, total = int(values["step"]), int(values["totalSteps"])
    out: dict[str, Any] = {"step": step, "totalSteps": total, "steps": f"{step}/{total}", "updatedAt": now}
    if "loss" in values:
        out["loss"] = round(values["loss"], 6)
    rate = values.get("samplesPerSecond", 0.0)
    if rate > 0:
        out["samplesPerSecond"] = round(rate, 3)
    eta = values.get("etaSeconds")
    if eta is None or not math.isfinite(eta) or eta < 0:  # none yet: steps left at the current rate
        eta = max(total - step, 0) * samples_per_step(spec) / rate if rate > 0 else None
    if eta is not None:
        out["etaSeconds"], out["eta"] = int(eta), human(eta)
    return out


def scrape(host: str, port: int) -> str | None:
    """The /metrics text of one pod, or None when it does not answer (it may be starting)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=SCRAPE_TIMEOUT_S) as response:
            return response.read().decode("utf-8", "replace")
    except (OSError, urllib.error.URLError):
        return None
