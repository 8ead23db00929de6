"""When training stops: a non-finite loss or non-finite weights stop it at the step they appear
with advice from the spec; a stop request is honoured at the end of the step."""
from __future__ import annotations

import os
import signal
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from runner.exitcodes import sigterm_stops
from runner.train.guard import Diverged, Guard, Stop, divergence_advice

TRAINING = {"learningRate": 0.5, "maxGradNorm": 0.0, "mixedPrecision": "no", "lrWarmupSteps": 0}


def _guard(**training) -> Guard:
    return Guard({**TRAINING, **training}, world_size=1, device=torch.device("cpu"))


@pytest.mark.parametrize("stop", [False, True])
def test_finite_loss_goes_on_unless_asked_to_stop(stop: bool) -> None:
    assert _guard().stop_after(7, torch.tensor(0.25), stop) is stop


@pytest.mark.parametrize("loss", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("stop", [False, True])
def test_non_finite_loss_raises_naming_the_step(loss: float, stop: bool) -> None:
    with pytest.raises(Diverged, match="not finite at step 12") as err:
        _guard().stop_after(12, torch.tensor(loss), stop)  # a stop request does not mean "save it anyway"
    assert "learningRate (now 0.5)" in str(err.value)


def test_non_finite_weights_raise_before_a_save() -> None:
    model = torch.nn.Linear(3, 2)
    guard = _guard()
    guard.check_weights(model.parameters(), 4)
    with torch.no_grad():
        model.bias[1] = float("inf")
    with pytest.raises(Diverged, match="weights are not finite after step 4"):
        guard.check_weights(model.parameters(), 4)


@pytest.mark.parametrize("training, present, absent", [
    (dict(maxGradNorm=0.0), ["set spec.training.maxGradNorm", "learningRate (now 0.5)"], ["fp16"]),
    (dict(maxGradNorm=2.0), ["lower spec.training.maxGradNorm (now 2)"], ["fp16"]),
    (dict(mixedPrecision="fp16"), ["bf16 instead of fp16"], []),
    (dict(lrWarmupSteps=10), ["lrWarmupSteps (now 10)", "resume: none"], ["fp16"]),
])
def test_advice_follows_the_spec(training: dict, present: list[str], absent: list[str]) -> None:
    text = divergence_advice({**TRAINING, **training})
    assert all(p in text for p in present), text
    assert not any(a in text for a in absent), text


def test_sigterm_ends_the_divergence_hold_after_training(monkeypatch) -> None:
    """run_train's SIGTERM handler only sets a flag for the loop, and stays after run_train raised
    (Stop's docstring says why), so in the metrics hold that follows (75 s in a pod) a SIGTERM
    (`kubectl delete`, a preemption) did nothing, and the pod waited out the hold. The hold
    handles SIGTERM itself now."""
    from runner.observe.metrics import Metrics
    from runner.train import loop

    def diverge(ctx):
        raise Diverged("training diverged: the loss is not finite at step 3")

    monkeypatch.setattr(loop, "make_accelerator", diverge)  # the first thing after the handler goes in
    metrics = Metrics("x")
    with sigterm_stops():  # run_job
        with pytest.raises(Diverged):
            loop.run_train(SimpleNamespace(spec_dict={"training": {}}, family=None))
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
        started = time.monotonic()
        metrics.hold(20)  # as _run_job's `except Diverged` does
        assert time.monotonic() - started < 10


def test_a_stop_left_by_an_error_keeps_its_flag_handler() -> None:
    """A worker reporting its own error (a lost peer) is not cut short by torchrun's SIGTERM."""
    before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(RuntimeError), Stop() as stop:
            raise RuntimeError("Connection closed by peer")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.requested
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_stop_inside_sets_its_flag_and_leaves_the_handler_as_it_found_it() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with Stop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
    assert stop.requested and stop.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before
