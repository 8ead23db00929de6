"""keep_spec_settings: a checkpoint's optimizer state loaded over one built from a changed spec.
torch's load_state_dict puts the saved settings back in the param groups; the spec's must win
(learning rate through the schedule), and another optimizer's state must be refused before its
first step fails."""
from __future__ import annotations

import pytest
import torch

from runner.train.optim import keep_spec_settings, make_lr_scheduler, make_optimizer, settings_of

BASE = dict(optimizer="adamw", learningRate=1e-4, adamBeta1=0.9, adamBeta2=0.999, adamEpsilon=1e-8,
            weightDecay=0.0, lrScheduler="cosine", lrWarmupSteps=3)
CPU = torch.device("cpu")


def _run(training, steps, total=20):
    """An optimizer and schedule after `steps` steps on a fixed problem."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = make_optimizer(training, model.parameters(), CPU)
    sched = make_lr_scheduler(training, opt, total)
    x = torch.randn(8, 4)
    for _ in range(steps):
        model(x).square().mean().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return model, opt, sched


def _resume(saved_training, spec_training, steps=5):
    _, saved_opt, saved_sched = _run(saved_training, steps)
    model, opt, sched = _run(spec_training, 0)
    built = settings_of(opt)
    opt.load_state_dict(saved_opt.state_dict())
    sched.load_state_dict(saved_sched.state_dict())
    return saved_opt, opt, sched, built


def test_the_specs_learning_rate_and_weight_decay_apply_at_the_schedules_position() -> None:
    spec = {**BASE, "learningRate": 1e-2, "weightDecay": 0.05}
    saved_opt, opt, sched, built = _resume(BASE, spec)
    assert opt.param_groups[0]["lr"] == pytest.approx(saved_opt.param_groups[0]["lr"])  # torch kept the saved one
    changed = keep_spec_settings(opt, sched, built)
    assert sorted(changed) == [("learningRate", 1e-4, 1e-2), ("weightDecay", 0.0, 0.05)]
    _, reference, reference_sched = _run(spec, 5)  # a run that had the new settings all along
    assert opt.param_groups[0]["lr"] == pytest.approx(reference.param_groups[0]["lr"], rel=1e-9)
    assert opt.param_groups[0]["weight_decay"] == 0.05
    assert sched.get_last_lr() == pytest.approx(reference_sched.get_last_lr(), rel=1e-9)
    sched.step()
    reference_sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(reference.param_groups[0]["lr"], rel=1e-9)
    # the moments are the checkpoint's
    for p, q in zip(opt.state.values(), saved_opt.state.values()):
        assert torch.equal(p["exp_avg"], q["exp_avg"]) and torch.equal(p["exp_avg_sq"], q["exp_avg_sq"])


def test_an_unchanged_spec_changes_nothing() -> None:
    saved_opt, opt, sched, built = _resume(BASE, BASE)
    assert keep_spec_settings(opt, sched, built) == []
    assert opt.param_groups[0]["lr"] == saved_opt.param_groups[0]["lr"]


@pytest.mark.parametrize("saved, spec, missing", [
    ("adamw", "sgd", "momentum"),
    ("adamw", "adafactor", "beta1"),
    ("adafactor", "adamw", "betas"),
    ("sgd", "adafactor", "beta1"),
])
def test_another_optimizers_state_is_refused(saved, spec, missing) -> None:
    _, opt, sched, built = _resume({**BASE, "optimizer": saved}, {**BASE, "optimizer": spec}, steps=2)
    with pytest.raises(ValueError, match=f"not spec.training.optimizer's .*{missing}"):
        keep_spec_settings(opt, sched, built)
