"""status.progress from the trainer's /metrics: names from runner.observe.names; the ETA is the
trainer's own gauge (the dashboard's), computed from samples/s only while it has none."""
from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from runner.k8s import progress
from runner.observe.metrics import Metrics

SPEC = {"hardware": {"gpusPerNode": 2, "nodes": 2}, "training": {"batchSize": 4, "gradientAccumulationSteps": 2}}


def exposition(step: int, total: int, loss: float, rate: float, eta_from_steps: bool = False) -> str:
    metrics = Metrics("job", 0)
    if eta_from_steps:  # the trainer's ETA gauge: set from its mean time per step once a step is done
        metrics.train_started(total, 0)
        metrics.step_done(step, 0, 0.01)
    metrics.train_progress(step, total, loss, rate)
    return generate_latest(metrics.registry).decode()


def test_names_come_from_runner_observe_names_not_repeated_here():
    names = progress.metric_names()
    assert sorted(names.values()) == ["etaSeconds", "loss", "samplesPerSecond", "step", "totalSteps"]
    text = exposition(1, 2, 0.5, 1.0, eta_from_steps=True)
    assert all(name in text for name in names)


def test_progress_from_a_real_exposition():
    values = progress.parse(exposition(100, 1100, 0.123456789, 32.0))
    out = progress.progress(values, SPEC, "2026-01-01T00:00:00Z")
    # 1000 steps left x 32 samples per step (4 x 2 accumulation x 2 GPUs x 2 nodes) / 32 samples/s
    assert out == {"step": 100, "totalSteps": 1100, "steps": "100/1100", "loss": 0.123457,
                   "samplesPerSecond": 32.0, "etaSeconds": 1000, "eta": "16m40s",
                   "updatedAt": "2026-01-01T00:00:00Z"}


def test_the_eta_is_the_trainers_own_when_it_has_one():
    """Its mean time per step counts checkpoints and validation, as the dashboard's ETA does;
    samples/s leaves them out (here: 1000 steps left x 32 samples / 32 samples/s = 1000 s)."""
    text = exposition(100, 1100, 0.5, 32.0, eta_from_steps=True)
    values = progress.parse(text)
    assert "etaSeconds" in values and values["etaSeconds"] < 1000  # a test's steps take no time
    out = progress.progress(values, SPEC, "t")
    assert out["etaSeconds"] == int(values["etaSeconds"])
    assert progress.progress({**values, "etaSeconds": 4000.0}, SPEC, "t")["eta"] == "1h06m"  # not 16m40s


@pytest.mark.parametrize("text", ["", "# nothing\n", "other_metric 1\n"])
def test_no_step_yet_means_no_progress(text):
    assert progress.progress(progress.parse(text), SPEC, "t") is None


def test_no_rate_yet_means_no_eta():
    out = progress.progress(progress.parse(exposition(0, 10, 1.0, 0.0)), SPEC, "t")
    assert out["steps"] == "0/10" and "eta" not in out


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59, "59s"), (60, "1m00s"), (185, "3m05s"),
                                           (3725, "1h02m"), (90061, "25h01m")])
def test_human(seconds, text):
    assert progress.human(seconds) == text


def test_scrape_of_a_silent_port_is_none():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert progress.scrape("127.0.0.1", port) is None
