"""Prometheus metrics over real HTTP: one registry per instance, port released on close."""
from __future__ import annotations

import re
import socket
import urllib.error
import urllib.request

import pytest

from runner.metrics import Metrics, NoMetrics
from runner.stages.cache import CacheReport


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers.get("Content-Type", "").startswith("text/plain")
        return resp.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    """Value of one sample line of the exposition text, or None."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)\{(.*)\} (\S+)$", line)
        if m and m.group(1) == name and _same_labels(m.group(2), want):
            return float(m.group(3))
    return None


def _same_labels(a: str, b: str) -> bool:
    return sorted(a.split(",")) == sorted(b.split(","))


@pytest.fixture(scope="module")
def metrics():
    """One served instance for the read-only tests (each close() waits out the server's 0.5 s
    poll interval); every test sets the values it checks."""
    m = Metrics("x", port=free_port())
    yield m
    m.close()


def _port(m: Metrics) -> int:
    return m.server.server_address[1]


def test_serves_train_progress(metrics: Metrics) -> None:
    metrics.set_stage("train")
    metrics.train_progress(step=5, total=20, loss=0.25, samples_per_second=12.5)
    text = scrape(_port(metrics))
    assert 'trainingjob_train_step{job="x"} 5.0' in text
    assert 'trainingjob_train_total_steps{job="x"} 20.0' in text
    assert 'trainingjob_train_loss{job="x"} 0.25' in text
    assert 'trainingjob_train_samples_per_second{job="x"} 12.5' in text
    assert 'trainingjob_stage{job="x",stage="train"} 1.0' in text
    assert 'trainingjob_stage{job="x",stage="cache"} 0.0' in text
    # A later update is what the next scrape sees.
    metrics.train_progress(step=6, total=20, loss=0.2, samples_per_second=13.0)
    assert sample(scrape(_port(metrics)), "trainingjob_train_step", job="x") == 6.0


@pytest.mark.parametrize("stage, cache, train", [("cache", 1.0, 0.0), ("train", 0.0, 1.0), ("done", 0.0, 0.0)])
def test_stage_gauge(metrics: Metrics, stage: str, cache: float, train: float) -> None:
    metrics.set_stage("cache")
    metrics.set_stage(stage)
    text = scrape(_port(metrics))
    assert sample(text, "trainingjob_stage", job="x", stage="cache") == cache
    assert sample(text, "trainingjob_stage", job="x", stage="train") == train


@pytest.mark.parametrize("saves", [1, 3])
def test_checkpoint_counter(metrics: Metrics, saves: int) -> None:
    before = sample(scrape(_port(metrics)), "trainingjob_checkpoints_total", job="x") or 0.0
    for _ in range(saves):
        metrics.checkpoint_saved()
    text = scrape(_port(metrics))
    assert sample(text, "trainingjob_checkpoints_total", job="x") == before + saves


@pytest.mark.parametrize("report, expected", [
    (CacheReport(text_total=10, text_encoded=4, latents_total=7, latents_encoded=7),
     {("text", "encoded"): 4, ("text", "reused"): 6, ("latent", "encoded"): 7, ("latent", "reused"): 0}),
    (CacheReport(text_total=3, text_encoded=0, latents_total=0, latents_encoded=0),
     {("text", "encoded"): 0, ("text", "reused"): 3, ("latent", "encoded"): 0, ("latent", "reused"): 0}),
])
def test_cache_report(metrics: Metrics, report: CacheReport, expected: dict) -> None:
    metrics.cache_report(report)
    text = scrape(_port(metrics))
    for (kind, result), value in expected.items():
        assert sample(text, "trainingjob_cache_items", job="x", kind=kind, result=result) == float(value)


def test_instances_do_not_share_state() -> None:
    a, b = Metrics("a", port=free_port()), Metrics("b", port=free_port())
    try:
        a.train_progress(step=5, total=10, loss=1.0, samples_per_second=1.0)
        b.train_progress(step=9, total=90, loss=2.0, samples_per_second=3.0)
        ta, tb = scrape(_port(a)), scrape(_port(b))
        assert sample(ta, "trainingjob_train_step", job="a") == 5.0
        assert sample(tb, "trainingjob_train_step", job="b") == 9.0
        assert 'job="b"' not in ta and 'job="a"' not in tb
        assert a.registry is not b.registry
    finally:
        a.close()
        b.close()


def test_same_job_name_twice_is_allowed() -> None:
    """No global registry: two runs of one job in one process (cache then train) both register."""
    first = Metrics("x", port=0)
    second = Metrics("x", port=0)
    first.train_progress(1, 2, 0.5, 1.0)
    assert second.registry.get_sample_value("trainingjob_train_step", {"job": "x"}) is None
    assert first.registry.get_sample_value("trainingjob_train_step", {"job": "x"}) == 1.0


def test_port_zero_serves_nothing() -> None:
    m = Metrics("x", port=0)
    assert m.server is None
    m.set_stage("train")
    m.close()
    m.close()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
            s.listen()
        except OSError:
            return False
        return True


def test_close_frees_port() -> None:
    port = free_port()
    m = Metrics("x", port=port)
    scrape(port)
    assert not _port_is_free(port)
    m.close()
    assert _port_is_free(port)
    with pytest.raises(urllib.error.URLError):
        scrape(port)
    m.close()  # idempotent


def test_cache_then_train_on_same_port() -> None:
    """run_job with --stage all opens the metrics port for the cache stage, closes it, and opens
    it again for the train stage in the same process."""
    port = free_port()
    cache = Metrics("x", port=port)
    cache.set_stage("cache")
    cache.close()
    train = Metrics("x", port=port)
    try:
        train.set_stage("train")
        text = scrape(port)
        assert sample(text, "trainingjob_stage", job="x", stage="train") == 1.0
    finally:
        train.close()


@pytest.mark.parametrize("call, args", [
    ("set_stage", ("train",)),
    ("train_progress", (1, 2, 0.5, 3.0)),
    ("checkpoint_saved", ()),
    ("cache_report", (CacheReport(),)),
    ("close", ()),
    ("anything_else_at_all", ("x", 1)),
])
def test_no_metrics_accepts_any_call(call: str, args: tuple) -> None:
    nm = NoMetrics()
    assert getattr(nm, call)(*args, keyword="ok") is None
