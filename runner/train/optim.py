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
