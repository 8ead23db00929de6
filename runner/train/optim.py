"""Optimizers and LR schedules by name (spec.training.optimizer / lrScheduler)."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch


def make_optimizer(training: Mapping[str, Any], params: Iterable[torch.nn.Parameter], device: torch.device):
    params = [p for p in params if p.requires_grad]
    name, lr = training["optimizer"], training["learningRate"]
    if name == "adamw":
        # fused AdamW is one kernel per step on CUDA instead of a loop over ~700 tensors.
        fused = device.type == "cuda"
        return torch.optim.AdamW(params, lr=lr, betas=(training["adamBeta1"], training["adamBeta2"]),
                                 eps=training["adamEpsilon"], weight_decay=training["weightDecay"], fused=fused)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        # Factored second moments: O(rows + cols) state per matrix instead of AdamW's 2x params.
        return Adafactor(params, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False,
                         weight_decay=training["weightDecay"])
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=training["weightDecay"])
    raise ValueError(f"spec.training.optimizer: unknown optimizer {name!r}")


def make_lr_scheduler(training: Mapping[str, Any], optimizer, total_steps: int):
    from diffusers.optimization import get_scheduler

    return get_scheduler(training["lrScheduler"], optimizer, num_warmup_steps=training["lrWarmupSteps"],
                         num_training_steps=total_steps)


# The optimizer settings that come from the spec, by their name in torch's param groups.
SPEC_FIELDS = {"lr": "learningRate", "betas": "adamBeta1/adamBeta2", "eps": "adamEpsilon",
               "weight_decay": "weightDecay"}


def settings_of(optimizer) -> list[dict[str, Any]]:
    """Each param group's settings (everything but its parameters), as built from the spec."""
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def keep_spec_settings(optimizer, scheduler, built: list[dict[str, Any]]) -> list[tuple[str, Any, Any]]:
    """After a checkpoint's optimizer and LR-scheduler state were loaded over ones built from
    the current spec (`built`: settings_of before loading).

    torch's load_state_dict replaces the groups' settings with the saved ones, so a changed
    learningRate or weightDecay would silently not apply. This puts the spec's settings back,
    the learning rate through the scheduler (its base rate, and the current rate scaled by the
    same factor, which keeps the schedule's position). Returns (spec field, checkpoint value,
    spec value) for each spec setting that differed. Raises ValueError when the saved state
    belongs to another optimizer: its groups lack this one's settings, and its first step
    would fail."""
    groups = optimizer.param_groups
    missing = sorted(set(optimizer.defaults) - set(groups[0]))
    if missing:
        raise ValueError(f"the checkpoint's optimizer is not spec.training.optimizer's (its state has no "
                         f"{', '.join(missing)})")
    changed: dict[str, tuple[Any, Any]] = {}
    for group, spec in zip(groups, built):
        for key, value in spec.items():
            if key not in ("lr", "initial_lr") and group.get(key) != value:
                if key in SPEC_FIELDS:
                    changed.setdefault(SPEC_FIELDS[key], (group.get(key), value))
                group[key] = value
    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate wraps it
    base = [spec.get("initial_lr", spec["lr"]) for spec in built]
    saved = list(getattr(inner, "base_lrs", base))
    if saved != base:
        changed["learningRate"] = (saved[0], base[0])
        for group, old, new in zip(groups, saved, base):
            group["lr"] = group["lr"] * new / old if old else new
            group["initial_lr"] = new
        inner.base_lrs = base
        inner._last_lr = [group["lr"] for group in groups]
    return [(field, old, new) for field, (old, new) in changed.items()]
