"""`<output.dir>/report.html`: one offline page a person can look at after (or during) a run.

Drawn from files only, so any process can write it at any time: the history in
`<output.dir>/metrics.jsonl` (runlog.py), the validation folders, the cache manifest and the
effective spec. Plots are matplotlib PNGs and images are embedded as data: URIs; the page
has no script and loads nothing from the network. Written at the end of each stage and after
each validation (Metrics' callbacks, wired in runner/launch/run.py).
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.observe import runlog
from runner.observe.runlog import ENDINGS
from runner.spec.plan import HISTORY_FILE, REPORT_FILE

THUMB_PX = 256  # longest side of an embedded validation image: a 1024 px PNG is ~1.5 MB
MAX_VALIDATION_STEPS = 12  # the newest ones; every image stays in <output.dir>/validation/
SMOOTHING = 0.6  # TensorBoard's default exponential smoothing weight


@dataclass
class ReportData:
    """Everything on the page, gathered from disk by `gather()`; `render()` is pure."""

    job: str
    spec: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    cache: dict[str, Any] | None = None
    validations: list[dict[str, Any]] = field(default_factory=list)  # images.json + "folder"


def history_path(output_dir: Path) -> Path:
    return output_dir / HISTORY_FILE


def gather(job: str, spec: dict[str, Any], output_dir: Path, cache_manifest: Path) -> ReportData:
    cache = json.loads(cache_manifest.read_text()).get("report") if cache_manifest.is_file() else None
    validations = []
    for folder in sorted((output_dir / "validation").glob("step-*"), key=_step_of):
        meta = folder / "images.json"
        if meta.is_file():
            validations.append({**json.loads(meta.read_text()), "folder": folder})
    return ReportData(job, spec, runlog.read(history_path(output_dir)), cache, validations)


def write_report(data: ReportData, output_dir: Path) -> Path:
    from runner.files import atomic_write_bytes

    path = output_dir / REPORT_FILE
    atomic_write_bytes(path, render(data).encode("utf-8"))
    return path


@dataclass
class Reporter:
    """Rewrites one job's report and prints its path. Never raises: a report that cannot be
    drawn is a warning, not a failed run (nor a hidden training error)."""

    job: str
    spec: dict[str, Any]
    output_dir: Path
    cache_manifest: Path

    @property
    def history(self) -> Path:
        return history_path(self.output_dir)

    def write(self) -> Path | None:
        try:
            path = write_report(gather(self.job, self.spec, self.output_dir, self.cache_manifest), self.output_dir)
        except Exception as e:  # noqa: BLE001 - see the docstring
            print(f"[{self.job}] warning: could not write {self.output_dir / REPORT_FILE}: {type(e).__name__}: {e}",
                  file=sys.stderr, flush=True)
            return None
        print(f"[{self.job}] report: {path}", flush=True)
        return path


# ----------------------------------------------------------------------------- series

def train_points(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The logged steps in order, the last record of each step winning (a resume repeats steps)."""
    by_step: dict[int, dict[str, Any]] = {}
    for r in history:
        if r.get("event") == "train":
            by_step[int(r["step"])] = r
    return [by_step[s] for s in sorted(by_step)]


def smooth(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """TensorBoard's debiased exponential moving average (non-finite values are passed over)."""
    out, last, n = [], 0.0, 0
    for v in values:
        if math.isfinite(v):
            n += 1
            last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight ** n) if n else math.nan)
    return out


def timings(history: list[dict[str, Any]]) -> list[tuple[str, str]]:
    rows = []
    for r in history:
        if r.get("event") == "stage_finished":
            when = dt.datetime.fromtimestamp(r["t"] - r["seconds"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            # Histories written before stages recorded how they ended hold completed stages only.
            ended = r.get("ended", "completed")
            how = "" if ended == "completed" else f", {ENDINGS.get(ended, ended)}"
            rows.append((f"{r['stage']} stage (started {when}{how})", _secs(r["seconds"])))
    for event, label in (("checkpoint", "checkpoints"), ("validation", "validation runs")):
        secs = [float(r["seconds"]) for r in history if r.get("event") == event]
        if secs:
            rows.append((label, f"{len(secs)}, {_secs(sum(secs))} in all, {_secs(sum(secs) / len(secs))} each"))
    rates = [_f(p.get("samples_per_second")) for p in train_points(history)]
    rates = [r for r in rates if math.isfinite(r) and r > 0]
    if rates:
        rows.append(("training throughput", f"{sum(rates) / len(rates):.3g} samples/s (mean of logged steps)"))
    return rows


# ----------------------------------------------------------------------------- figures

def line_plot(title: str, steps: list[int], series: list[tuple[str, list[float]]], ylabel: str, log_y: bool = False) -> str:
    """A PNG as a data: URI. The Figure API, not pyplot: no global figure state."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.0), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for label, values in series:
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    if log_y and all(v > 0 for _, vs in series for v in vs if math.isfinite(v)):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return _data_uri(buf.getvalue())


def thumbnail(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((THUMB_PX, THUMB_PX))
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=True)
    return _data_uri(buf.getvalue())


# ----------------------------------------------------------------------------- page

def render(data: ReportData) -> str:
    points = train_points(data.history)
    parts = [f"<h1>TrainingJob {_e(data.job)}</h1>",
             f"<p class=meta>Written {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC. "
             + (f"Step {points[-1]['step']}, loss {_f(points[-1]['loss']):.4g}." if points else "No training step logged yet.")
             + "</p>"]
    parts += _curves(points)
    parts += _validation(data.validations)
    parts.append("<h2>Timings</h2>" + (_table(["", ""], timings(data.history), header=False)
                                       if data.history else "<p>No history yet.</p>"))
    parts += _cache(data.cache)
    parts.append("<h2>Effective spec</h2><pre>" + _e(_yaml(data.spec)) + "</pre>")
    return PAGE.format(title=_e(f"{data.job}: training report"), body="\n".join(parts))


def _curves(points: list[dict[str, Any]]) -> list[str]:
    if not points:
        return ["<h2>Training</h2><p>No training step logged yet.</p>"]
    steps = [int(p["step"]) for p in points]
    loss = [_f(p["loss"]) for p in points]
    out = ["<h2>Training</h2><div class=plots>",
           _img(line_plot("loss", steps, [("raw", loss), (f"smoothed ({SMOOTHING})", smooth(loss))], "loss"), "loss curve")]
    for key, title, log_y in (("lr", "learning rate", False), ("samples_per_second", "samples/s", False)):
        values = [_f(p.get(key)) for p in points]
        if any(math.isfinite(v) for v in values):
            out.append(_img(line_plot(title, steps, [(title, values)], title, log_y), title))
    out.append("</div>")
    rows = [(p["step"], _num(p["loss"]), _num(p.get("lr")), _num(p.get("samples_per_second")), _num(p.get("grad_norm")))
            for p in points]
    out.append(f"<details><summary>Logged values ({len(rows)} steps)</summary>"
               + _table(["step", "loss", "learning rate", "samples/s", "grad norm"], rows, cls="values") + "</details>")
    return out


def _validation(validations: list[dict[str, Any]]) -> list[str]:
    if not validations:
        return ["<h2>Validation images</h2><p>No validation images yet.</p>"]
    shown = validations[-MAX_VALIDATION_STEPS:]
    out = ["<h2>Validation images</h2>"]
    if len(shown) < len(validations):
        out.append(f"<p>The newest {len(shown)} of {len(validations)} validation runs; all are in "
                   f"{_e(str(shown[0]['folder'].parent))}.</p>")
    for v in reversed(shown):
        records = v.get("images", [])
        prompts = list(dict.fromkeys(r["prompt"] for r in records))
        sizes = list(dict.fromkeys((r["width"], r["height"]) for r in records))
        cells = {(r["prompt"], (r["width"], r["height"])): r for r in records}
        clip = f", mean CLIP score {v['validation/clip_score']:.4g}" if "validation/clip_score" in v else ""
        out.append(f"<h3>Step {v['step']}</h3><p class=meta>guidance {v.get('guidance')}, {v.get('steps')} "
                   f"sampling steps, seed {v.get('seed')}{clip}</p>")
        rows = []
        for prompt in prompts:
            row = [f"<th>{_e(prompt)}</th>"]
            for size in sizes:
                r = cells.get((prompt, size))
                if r is None or not (v["folder"] / r["file"]).is_file():
                    row.append("<td>-</td>")
                    continue
                score = f"<br>CLIP {r['clip_score']:.4g}" if "clip_score" in r else ""
                row.append(f"<td>{_img(thumbnail(v['folder'] / r['file']), f'{prompt} at {size[0]}x{size[1]}')}"
                           f"<div class=cap>{size[0]}x{size[1]}{score}</div></td>")
            rows.append("<tr>" + "".join(row) + "</tr>")
        head = "<tr><th>prompt</th>" + "".join(f"<th>{w}x{h}</th>" for w, h in sizes) + "</tr>"
        out.append(f"<table class=grid>{head}{''.join(rows)}</table>")
    return out


def _cache(report: dict[str, Any] | None) -> list[str]:
    if not report:
        return ["<h2>Cache</h2><p>No cache manifest yet.</p>"]
    rows = [("text embeddings", report["text_total"], report["text_encoded"], report["text_total"] - report["text_encoded"]),
            ("latents", report["latents_total"], report["latents_encoded"], report["latents_total"] - report["latents_encoded"])]
    out = ["<h2>Cache</h2>", _table(["", "entries", "encoded", "reused"], rows)]
    skipped = report.get("skipped", [])
    out.append(f"<p>{len(skipped)} image(s) skipped" + (":</p>" if skipped else ".</p>"))
    if skipped:
        out.append(_table(["dataset", "file", "why"], skipped))
    truncated = report.get("truncated", [])
    if truncated:
        out.append(f"<p>{len(truncated)} caption(s) truncated:</p>" + _table(["dataset", "file", "how"], truncated))
    return out


def _table(head: list[str], rows, header: bool = True, cls: str = "") -> str:
    th = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{_e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table{f' class={cls}' if cls else ''}>{th}{body}</table>"


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{_e(alt)}">'


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _yaml(spec: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=100)


def _step_of(folder: Path) -> int:
    tail = folder.name.removeprefix("step-")
    return int(tail) if tail.isdigit() else -1


def _f(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _num(v: Any) -> str:
    """Full precision (repr), so the page holds the exact values that were logged."""
    return "" if v is None else repr(_f(v))


def _secs(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def _e(s: str) -> str:
    return html.escape(s, quote=True)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }}
h1 {{ font-size: 1.6em; }} h2 {{ border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }}
.meta {{ color: #666; }} .plots img {{ max-width: 49%; }}
table {{ border-collapse: collapse; margin: .5em 0; }} td, th {{ border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }}
table.grid td {{ text-align: center; }} .cap {{ font-size: .85em; color: #555; }}
table.values td {{ font-family: ui-monospace, monospace; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
</style></head>
<body>
{body}
</body></html>
"""
