"""When training must stop: a stop signal, agreed by every rank at the same step, and a
non-finite loss or non-finite weights, caught at the step they appear and never saved."""
from __future__ import annotations

import contextlib
import signal
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch


class Diverged(Exception):
    """The loss or the weights became non-finite: continuing or saving would only spread it."""


@dataclass
class Stop:
    """Within `with Stop() as stop:` SIGTERM (preemption, `kubectl delete`) only sets `requested`:
    the loop checkpoints after the current step and exits. When the loop ends normally the
    handler before it is back (run_job's, which raises StageStopped), so a SIGTERM during the Hub
    push ends the process as it does between stages. When it ends with an error the flag handler
    stays: torchrun SIGTERMs a worker whose peer failed while that worker is still reporting
    its own error (a lost peer), and that report must not turn into "stopped (SIGTERM)". A
    diverged run's metrics hold handles SIGTERM itself (Metrics.hold)."""

    requested: bool = False
    signal_name: str = ""
    _before: Any = None

    def __enter__(self) -> "Stop":
        def handler(signum, _frame):
            self.requested, self.signal_name = True, signal.Signals(signum).name

        with contextlib.suppress(ValueError):  # not the main thread: nothing to install or restore
            self._before = signal.signal(signal.SIGTERM, handler)
        return self

    def __exit__(self, exc_type: object, *_exc: object) -> None:
        if self._before is not None and exc_type is None:
            signal.signal(signal.SIGTERM, self._before)
            self._before = None


def divergence_advice(training: Mapping[str, Any]) -> str:
    """What to change in the spec, given what it says now (pure)."""
    tips = [f"lower spec.training.learningRate (now {training['learningRate']:g})"]
    if training["maxGradNorm"] > 0:
        tips.append(f"lower spec.training.maxGradNorm (now {training['maxGradNorm']:g})")
    else:
        tips.append("set spec.training.maxGradNorm (gradient clipping is off; 1.0 is usual)")
    if training["mixedPrecision"] == "fp16":
        tips.append("use mixedPrecision: bf16 instead of fp16 (fp16 overflows)")
    tips.append(f"raise spec.training.lrWarmupSteps (now {training['lrWarmupSteps']})")
    return ("; ".join(tips) + ". No checkpoint was written after that step: after changing the spec, rerun "
            "to resume from the newest checkpoint, or from an earlier one if the loss was already climbing "
            "(spec.training.resume: <output.dir>/checkpoints/step-N), or set spec.training.resume: none to start "
            "over. Rerunning the same spec would very likely diverge again (it resumes from the same checkpoint with "
            "the same data)")


class Guard:
    """Decides, once per optimizer step and identically on every rank, whether training goes on."""

    def __init__(self, training: Mapping[str, Any], world_size: int, device: torch.device):
        self.training, self.world_size, self.device = training, world_size, device

    def stop_after(self, step: int, loss: torch.Tensor, stop_requested: bool) -> bool:
        """True when some rank was asked to stop; raises Diverged when some rank's loss is not finite.

        One scalar, all-reduced (MAX) when there are several ranks: 1 = a stop was requested,
        2 = a loss is not finite. Without the agreement, a rank that got SIGTERM checkpoints
        (a collective) while the others start the next step's gradient all-reduce: a hang.
        Reading it back is the one host sync this adds per step: the price of catching a NaN at
        the step it appears, before it can reach a checkpoint, and of agreeing on a stop; one
        scalar next to a step's many kernels and its gradient all-reduce."""
        flag = (~torch.isfinite(loss)).to(torch.int32) * 2 + int(stop_requested)
        if self.world_size > 1:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        verdict = int(flag.item())
        if verdict >= 2:
            raise Diverged(f"training diverged: the loss is not finite at step {step}. To fix it: "
                           + divergence_advice(self.training))
        return verdict == 1

    def check_weights(self, params: Iterable[torch.nn.Parameter], step: int) -> None:
        """Before anything is written: a finite loss can still leave non-finite weights (an update
        that overflows), and a checkpoint of those would poison every resume. The weights are the
        same on every rank (data parallel), so so is the verdict."""
        finite = torch.stack([torch.isfinite(p.detach()).all() for p in params]).all()
        if not bool(finite):
            raise Diverged(f"training diverged: the weights are not finite after step {step} (the loss still "
                           "was). To fix it: " + divergence_advice(self.training))
