"""Observability end to end, on one smoke run: a real Prometheus scrapes it, promtool lints a
scrape of each stage, the dashboard's queries run against what was scraped, and report.html
is checked against the TensorBoard event files and in a real headless Chromium.

Prometheus, promtool and chromium are Debian packages that `make test` installs where apt-get
works (tests/system-deps.sh); elsewhere these tests skip and say so."""
from __future__ import annotations

import base64
import io
import json
import math
import re
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runner.observe import names as N
from tests.e2e.conftest import REPO, Runner, assert_clean, cache_manifest
from tests.observe_tools import free_port, promtool_check_metrics, require_tool, sample, scrape

pytestmark = pytest.mark.e2e

DASHBOARD = REPO / "k8s" / "monitoring" / "grafana-dashboard.json"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


@dataclass
class ObservedRun:
    proc: subprocess.CompletedProcess
    out: Path
    artifacts: Path  # the tests' output folder: screenshot, dashboard picture, scrapes
    prometheus: str
    scrapes: dict[str, str] = field(default_factory=dict)  # stage -> a /metrics text taken during it


class Poller(threading.Thread):
    """Scrapes /metrics every 0.1 s and keeps the last text seen in each stage."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port, self.by_stage, self.stop = port, {}, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                text = scrape(self.port, timeout=2)
            except OSError:  # not serving yet, or between stages
                text = ""
            for stage in ("cache", "train"):
                if sample(text, N.STAGE, trainingjob="smoke", stage=stage) == 1.0:
                    self.by_stage[stage] = text
            self.stop.wait(0.1)


def start_prometheus(tmp: Path, target_port: int) -> tuple[subprocess.Popen, str]:
    binary = require_tool("prometheus", "prometheus")
    port = free_port()
    config = tmp / "prometheus.yml"
    # No honor_labels, as in the common kubernetes-pods config: the runner's `trainingjob`
    # label must come through as it is, next to Prometheus's own `job` (the scrape job).
    config.write_text(f"""global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: scrapejob
    static_configs: [{{targets: ["127.0.0.1:{target_port}"]}}]
""")
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "prometheus.log", "w"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"prometheus did not get ready: {(tmp / 'prometheus.log').read_text()[-2000:]}")


def query(prometheus: str, expr: str) -> list[dict]:
    params = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query?{params}", timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def one_value(prometheus: str, expr: str) -> float | None:
    result = query(prometheus, expr)
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


@pytest.fixture(scope="module")
def observed(tmp_path_factory, tiny_model) -> ObservedRun:
    tmp = tmp_path_factory.mktemp("observe")
    artifacts = tmp / "artifacts"
    artifacts.mkdir()
    runner = Runner(tmp, tiny_model)
    metrics_port = free_port()
    prom, url = start_prometheus(tmp, metrics_port)
    poller = Poller(metrics_port)
    poller.start()
    try:
        proc = runner.run(f"spec.metrics.port={metrics_port}", timeout=600)
        time.sleep(2)  # two more scrape intervals: Prometheus has seen the last values
        poller.stop.set()
        poller.join()
        for stage, text in poller.by_stage.items():
            (artifacts / f"scrape-{stage}.txt").write_text(text)
        yield ObservedRun(proc, runner.out, artifacts, url, dict(poller.by_stage))
    finally:
        poller.stop.set()
        prom.terminate()
        prom.wait(timeout=30)
        print(f"observability test artifacts: {artifacts}")


def test_prometheus_scraped_the_running_job(observed: ObservedRun) -> None:
    assert_clean(observed.proc)
    p, job, window = observed.prometheus, 'trainingjob="smoke"', "[10m]"
    # The step counter rose while it was scraped, up to the last step.
    steps = query(p, f"{N.TRAIN_STEPS}{{{job}}}{window}")
    assert len(steps) == 1
    # Our label and Prometheus's target label side by side, neither renamed.
    assert steps[0]["metric"]["job"] == "scrapejob" and "exported_job" not in steps[0]["metric"], steps[0]["metric"]
    values = [float(v) for _, v in steps[0]["values"]]
    assert len(set(values)) >= 2 and values == sorted(values) and values[-1] == 20.0, values
    # The loss series exists and is finite.
    loss = one_value(p, f"max_over_time({N.TRAIN_LOSS}{{{job}}}{window})")
    assert loss is not None and 0 < loss < 100
    assert one_value(p, f"count_over_time({N.TRAIN_LOSS}{{{job}}}{window})") >= 2
    # Cache progress reached its total, for both kinds.
    manifest = cache_manifest(observed.out.parent / "cache")["report"]
    for kind, total in (("text", manifest["text_total"]), ("latent", manifest["latents_total"])):
        sel = f'{{{job},kind="{kind}"}}'
        assert one_value(p, f"max_over_time({N.CACHE_ITEMS}{sel}{window})") == total > 0
        assert one_value(p, f"max_over_time({N.CACHE_ITEMS_DONE}{sel}{window})") == total
    # The other train series were there too.
    for name in (N.TRAIN_SAMPLES_PER_SECOND, N.TRAIN_ETA, N.TRAIN_LEARNING_RATE, N.LAST_PROGRESS):
        assert one_value(p, f"max_over_time({name}{{{job}}}{window})") is not None, name
    assert one_value(p, f"max_over_time({N.CHECKPOINT_DURATION}_count{{{job}}}{window})") == 3.0  # steps 8, 16, 20
    # The samples counter, which the dashboard's samples/s takes rate() of, counted every sample trained.
    state = json.loads((observed.out / "checkpoints" / "step-20" / "trainer_state.json").read_text())["state"]
    assert one_value(p, f"max_over_time({N.TRAIN_SAMPLES}{{{job}}}{window})") == state["samples_seen"] > 0


def test_promtool_accepts_a_scrape_of_each_stage(observed: ObservedRun) -> None:
    assert set(observed.scrapes) == {"cache", "train"}, f"stages scraped: {sorted(observed.scrapes)}"
    for stage, text in observed.scrapes.items():
        result = promtool_check_metrics(text)
        assert result.returncode == 0, f"{stage}: {result.stdout}{result.stderr}"
    assert sample(observed.scrapes["cache"], N.CACHE_ITEMS, trainingjob="smoke", kind="latent") is not None
    assert sample(observed.scrapes["train"], N.TRAIN_PLANNED_STEPS, trainingjob="smoke") == 20.0


def test_dashboard_panels_query_the_run(observed: ObservedRun) -> None:
    from runner.observe.dashboard import draw, fetch

    dashboard = json.loads(DASHBOARD.read_text())
    end = time.time()
    data = fetch(observed.prometheus, dashboard, "smoke", end - 600, end, 1, "5s")  # raises on a bad query
    for title in ("Training progress", "ETA", "Cache progress", "Loss", "Samples/s", "Step duration", "Learning rate",
                  "Time since last progress"):
        assert data[title], f"panel {title!r} got no data"
    assert data["GPU memory"] == []  # absent on a CPU run
    assert {line.label for line in data["Cache progress"]} == {"smoke text", "smoke latent"}
    draw(dashboard, data, observed.artifacts / "dashboard.png", DASHBOARD.name)


def test_report_holds_the_tensorboard_values_and_its_images_decode(observed: ObservedRun) -> None:
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    report = observed.out / "report.html"
    assert f"report: {report}" in observed.proc.stdout
    page = report.read_text()
    logs = [p.parent for p in (observed.out / "logs").rglob("events.out.tfevents*")]
    tb: dict[str, dict[int, float]] = {}
    for folder in logs:
        acc = EventAccumulator(str(folder))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            tb.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    assert sorted(tb["train/loss"]) == [1, 10, 20]
    rows = re.findall(r"<tr><td>(\d+)</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>", page)
    in_report = {int(s): (float(loss), float(lr), float(rate)) for s, loss, lr, rate in rows}
    assert set(in_report) == set(tb["train/loss"])
    for step, (loss, lr, rate) in in_report.items():
        # TensorBoard keeps float32; the report keeps the float it was given.
        assert loss == pytest.approx(tb["train/loss"][step], rel=1e-6)
        assert lr == pytest.approx(tb["train/lr"][step], rel=1e-6)
        assert rate == pytest.approx(tb["train/samples_per_second"][step], rel=1e-6)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3 + 2 * 4  # loss, lr, samples/s; 2 validations x 2 prompts x 2 sizes
    for b64 in images:
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            im.verify()
    assert not re.search(r'(src|href)="(https?:)?//', page), "the page must not load anything from the network"
    for text in ("a photo of an astronaut", "192x128", "text embeddings", "cacheDir:", "train stage"):
        assert text in page


def test_report_renders_in_headless_chromium(observed: ObservedRun, tmp_path: Path) -> None:
    chromium = require_tool("chromium", "chromium")
    from playwright.sync_api import sync_playwright

    report = observed.out / "report.html"
    problems, requests = [], []
    with sync_playwright() as pw:
        # A fresh profile folder; the flags keep Chromium from calling home.
        context = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=chromium,
                                                        args=CHROMIUM_FLAGS, headless=True,
                                                        viewport={"width": 1100, "height": 900})
        try:
            page = context.new_page()
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.as_uri(), wait_until="load")
            decoded = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
            heading = page.inner_text("h1")
            page.screenshot(path=str(observed.artifacts / "report.png"), full_page=True)
        finally:
            context.close()
    assert problems == []
    assert len(decoded) == 11 and all(decoded)
    assert heading == "TrainingJob smoke"
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert (observed.artifacts / "report.png").stat().st_size > 10_000


# Forced divergence (tests/e2e/test_nonfinite.py): plain SGD at learning rate 1, no clipping.
DIVERGE = ("spec.training.optimizer=sgd", "spec.training.learningRate=1", "spec.training.maxGradNorm=0",
           "spec.training.lrWarmupSteps=0", "spec.training.maxSteps=30", "spec.training.checkpointEvery=100",
           "spec.validation.prompts=[]", "spec.tracking.tensorboard=false")


def test_a_diverged_run_is_scraped_diverged_and_fires_the_alert(tmp_path_factory, tiny_model) -> None:
    """The trainer stops at the step the loss turns NaN, before the loss gauge could hold it, so
    the old loss-is-NaN alert only ever fired on synthetic series. The run now sets
    trainingjob_train_diverged and keeps serving for TRAININGJOB_METRICS_HOLD_S before it exits
    3; a real Prometheus scrapes it, and TrainingJobDiverged's own expression finds the run."""
    import yaml

    from tests.e2e.train_state import quiet_env, runner_with_cache, shared_cache

    tmp = tmp_path_factory.mktemp("diverged")
    runner = runner_with_cache(tmp, tiny_model, shared_cache(tmp_path_factory, tiny_model))
    metrics_port = free_port()
    prom, url = start_prometheus(tmp, metrics_port)
    poller = Poller(metrics_port)
    poller.start()
    try:
        proc = subprocess.run(runner.args(*DIVERGE, f"spec.metrics.port={metrics_port}", stage="train"), cwd=REPO,
                              env=quiet_env(runner, TRAININGJOB_METRICS_HOLD_S="4"), capture_output=True, text=True,
                              timeout=300)
        poller.stop.set()
        poller.join()
        assert_clean(proc, 3)
        assert "training diverged: the loss is not finite at step" in proc.stderr
        assert f"keeping /metrics on port {metrics_port} up for 4 s" in proc.stderr
        last = poller.by_stage["train"]  # the last scrape of the train stage: during the hold
        assert sample(last, N.TRAIN_DIVERGED, trainingjob="smoke") == 1.0
        loss = sample(last, N.TRAIN_LOSS, trainingjob="smoke")
        assert loss is None or math.isfinite(loss)  # the operator copies it into status.progress (JSON)
        assert promtool_check_metrics(last).returncode == 0
        rules = yaml.safe_load((REPO / "k8s" / "monitoring" / "alerts.yaml").read_text())["groups"][0]["rules"]
        expr = next(r["expr"] for r in rules if r["alert"] == "TrainingJobDiverged")
        firing = query(url, expr)
        assert [r["metric"]["trainingjob"] for r in firing] == ["smoke"], firing
        assert one_value(url, f'max_over_time({N.TRAIN_DIVERGED}{{trainingjob="smoke"}}[10m])') == 1.0
    finally:
        poller.stop.set()
        prom.terminate()
        prom.wait(timeout=30)
