"""Draw a Grafana dashboard's panels with matplotlib, from a Prometheus server's HTTP API.

Where Grafana itself is not available (CI, the README's screenshot), this runs every panel's
PromQL through /api/v1/query_range and lays the panels out by their gridPos, so the picture
shows what the dashboard JSON asks for, on real scraped data:

    python -m runner.observe.dashboard k8s/monitoring/grafana-dashboard.json \\
        --prometheus http://127.0.0.1:9090 --trainingjob smoke --minutes 10 --out docs/dashboard.png
"""
from __future__ import annotations

import argparse
import json
import re
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GRID_COLUMNS = 24
ROW_PX = 30  # Grafana's height of one grid unit


@dataclass
class Line:
    label: str
    times: list[float]
    values: list[float]


def panel_queries(dashboard: dict[str, Any], job: str, rate_interval: str,
                  namespace: str = ".*") -> dict[str, list[tuple[str, str]]]:
    """Panel title -> [(PromQL, legend format)], with the dashboard's variables filled in
    (`job`: the $trainingjob regex; `namespace`: the $namespace one, ".*" also matching a
    local run, which has no namespace label)."""
    fill = {"$trainingjob": job, "$namespace": namespace, "$__rate_interval": rate_interval}
    out = {}
    for panel in dashboard["panels"]:
        queries = []
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in fill.items():
                expr = expr.replace(var, value)
            queries.append((expr, target.get("legendFormat", "")))
        out[panel["title"]] = queries
    return out


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus.rstrip('/')}/api/v1/query_range?{params}", timeout=30) as resp:
        body = json.loads(resp.read())
    if body.get("status") != "success":
        raise ValueError(f"{expr}: {body.get('error', body)}")
    return body["data"]["result"]


def fetch(prometheus: str, dashboard: dict[str, Any], job: str, start: float, end: float, step: float,
          rate_interval: str, namespace: str = ".*") -> dict[str, list[Line]]:
    """Panel title -> its lines; a query Prometheus refuses raises (a broken panel)."""
    out = {}
    for title, queries in panel_queries(dashboard, job, rate_interval, namespace).items():
        lines = []
        for expr, legend in queries:
            for series in query_range(prometheus, expr, start, end, step):
                # A label the series lacks (a local run's namespace) renders empty, as in Grafana.
                label = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: series["metric"].get(m.group(1), ""), legend).strip()
                lines.append(Line(label or expr, [float(t) for t, _ in series["values"]],
                                  [float(v) for _, v in series["values"]]))
        out[title] = lines
    return out


def draw(dashboard: dict[str, Any], data: dict[str, list[Line]], out: Path, source: str, width_px: int = 1400) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, PercentFormatter

    panels = dashboard["panels"]
    header, dpi = 40, 100
    height_px = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels) * ROW_PX + header
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    fig.suptitle(f"{dashboard['title']}: the panels of {source}, drawn by runner.observe.dashboard from Prometheus",
                 fontsize=11, x=0.01, ha="left")
    formatters = {"percentunit": PercentFormatter(1.0), "bytes": FuncFormatter(_bytes), "s": FuncFormatter(_secs)}
    # One time axis for all panels, as on a Grafana dashboard.
    t0 = min((t for lines in data.values() for line in lines for t in line.times), default=0.0)
    for p in panels:
        g = p["gridPos"]
        # The panel's box in pixels, less room for the axis labels and the title.
        x0, y0 = g["x"] / GRID_COLUMNS * width_px, header + g["y"] * ROW_PX
        w, h = g["w"] / GRID_COLUMNS * width_px, g["h"] * ROW_PX
        left, right, top, bottom = 70, 15, 28, 42
        rect = ((x0 + left) / width_px, 1 - (y0 + h - bottom) / height_px,
                (w - left - right) / width_px, (h - top - bottom) / height_px)
        ax = fig.add_axes(rect)
        ax.set_title(p["title"], fontsize=10, loc="left")
        lines = data.get(p["title"], [])
        if not lines:
            ax.text(0.5, 0.5, "No data", ha="center", va="center", transform=ax.transAxes, color="#888")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        for line in lines:
            ax.plot([(t - t0) / 60 for t in line.times], line.values, label=line.label, linewidth=1.4)
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "none")
        if unit in formatters:
            ax.yaxis.set_major_formatter(formatters[unit])
        ax.set_xlabel("minutes", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")


def _bytes(v: float, _pos: Any = None) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(v) < 1024 or unit == "GiB":
            return f"{v:.3g} {unit}"
        v /= 1024
    return str(v)


def _secs(v: float, _pos: Any = None) -> str:
    return f"{v / 60:.3g} min" if abs(v) >= 120 else f"{v:.3g} s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dashboard", type=Path)
    ap.add_argument("--prometheus", default="http://127.0.0.1:9090")
    ap.add_argument("--trainingjob", default=".+", help="value of the $trainingjob variable (a regex)")
    ap.add_argument("--namespace", default=".*", help="value of the $namespace variable (a regex)")
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--step", type=float, default=2, help="seconds between points")
    ap.add_argument("--rate-interval", default="10s", help="value of $__rate_interval")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    dashboard = json.loads(args.dashboard.read_text())
    end = time.time()
    data = fetch(args.prometheus, dashboard, args.trainingjob, end - args.minutes * 60, end, args.step,
                 args.rate_interval, args.namespace)
    draw(dashboard, data, args.out, args.dashboard.name)
    print(f"{args.out}: " + ", ".join(f"{title} ({len(lines)})" for title, lines in data.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
