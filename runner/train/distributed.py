"""Data-parallel wrapping: spec.training.ddp as accelerate's DistributedDataParallelKwargs, and
what the prepared model really got, for the log.

accelerate wraps the model in torch's DistributedDataParallel only when more than one process
trains; on one process the handler is inert and `summary` returns None.
"""
from __future__ import annotations

from typing import Any, Mapping


def ddp_options(training: Mapping[str, Any]) -> dict[str, Any]:
    """spec.training.ddp in DistributedDataParallel's argument names (pure)."""
    ddp = training["ddp"]
    return {"bucket_cap_mb": ddp["bucketCapMB"], "gradient_as_bucket_view": ddp["gradientAsBucketView"],
            "static_graph": ddp["staticGraph"], "find_unused_parameters": ddp["findUnusedParameters"]}


def ddp_handler(training: Mapping[str, Any]):
    """The kwargs handler for `Accelerator(kwargs_handlers=[...])`."""
    from accelerate.utils import DistributedDataParallelKwargs

    return DistributedDataParallelKwargs(**ddp_options(training))


def summary(model) -> str | None:
    """One line on the wrapper the model is in, read off the wrapper itself (None: not DDP)."""
    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(model, DistributedDataParallel):
        return None
    mb = model.bucket_bytes_cap / 2**20
    return (f"data parallel: DistributedDataParallel over {model.process_group.size()} processes, "
            f"bucketCapMB {mb:g}, gradientAsBucketView {str(model.gradient_as_bucket_view).lower()}, "
            f"staticGraph {str(model.static_graph).lower()}, "
            f"findUnusedParameters {str(model.find_unused_parameters).lower()}")
