"""Remake docs/report.png and docs/dashboard.png (the README's pictures):

    .venv/bin/python docs/screenshots.py [--steps 120]

Runs the smoke job (a longer one, so the curves have a shape) with /metrics on a free port
while a local Prometheus (Debian's `prometheus`) scrapes it every second; then draws the
Grafana dashboard's panels from that Prometheus with runner.observe.dashboard (Grafana itself
is not needed) and screenshots report.html in headless Chromium (Debian's `chromium`,
driven by Playwright). Both PNGs are palette-quantized to stay small.
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
DASHBOARD = REPO / "k8s" / "monitoring" / "grafana-dashboard.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quantize(path: Path, height: int | None = None) -> None:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if height and im.height > height:
            im = im.crop((0, 0, im.width, height))
        im.quantize(colors=128).save(path, optimize=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=120)
    args = ap.parse_args()
    from runner.observe.dashboard import draw, fetch

    tmp = Path(tempfile.mkdtemp(prefix="trainingjob-shots-"))
    metrics_port, prom_port = free_port(), free_port()
    (tmp / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s}\nscrape_configs:\n  - job_name: trainingjob\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n")
    prom = subprocess.Popen([shutil.which("prometheus") or "prometheus", f"--config.file={tmp / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}",
                             "--log.level=warn"])
    try:
        start = time.time()
        every = max(args.steps // 3, 1)
        sets = [f"spec.cacheDir={tmp / 'cache'}", f"spec.output.dir={tmp / 'out'}", f"spec.metrics.port={metrics_port}",
                f"spec.training.maxSteps={args.steps}", f"spec.training.checkpointEvery={every}",
                f"spec.validation.every={every}"]
        cmd = [sys.executable, "-m", "runner", "run", str(REPO / "examples" / "smoke.yaml")]
        for s in sets:
            cmd += ["--set", s]
        subprocess.run(cmd, cwd=REPO, check=True)
        time.sleep(3)
        dashboard = json.loads(DASHBOARD.read_text())
        end = time.time()
        data = fetch(f"http://127.0.0.1:{prom_port}", dashboard, "smoke", start, end, 2, "10s")
        draw(dashboard, data, DOCS / "dashboard.png", DASHBOARD.name)
        quantize(DOCS / "dashboard.png")
    finally:
        prom.terminate()
        prom.wait()

    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1100, "height": 1500})
        page.goto((tmp / "out" / "report.html").as_uri())
        page.screenshot(path=str(DOCS / "report.png"))
        browser.close()
    quantize(DOCS / "report.png")
    for name in ("report.png", "dashboard.png"):
        print(f"{DOCS / name}: {(DOCS / name).stat().st_size // 1024} KiB")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
