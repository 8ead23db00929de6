"""spec.training.ddp reaches torch's DistributedDataParallel, and changes no numbers.

Two real gloo processes build the accelerator the train stage builds (`make_accelerator`) for
several specs, wrap a model with it, read the wrapper's own attributes back, and train it a few
steps the way the loop does (accumulation under no_sync, set_to_none). The model is big enough
for 1 MB buckets to split it. tests/e2e/test_ddp_options.py runs the real training loop."""
from __future__ import annotations

import contextlib
import inspect
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from runner.train.distributed import ddp_options
from tests.unit.conftest import MINIMAL_SPEC

WORLD = 2
STEPS = 3
# name -> (--set overrides, gradient accumulation steps)
CONFIGS = {
    "defaults": ([], 2),
    "other": (["spec.training.ddp.bucketCapMB=1", "spec.training.ddp.gradientAsBucketView=false",
               "spec.training.ddp.findUnusedParameters=true"], 2),
    "defaults-no-accumulation": ([], 1),
    "static": (["spec.training.ddp.staticGraph=true", "spec.training.ddp.bucketCapMB=1"], 1),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(accelerator, accum: int) -> tuple[torch.nn.Module, list[float]]:
    """The loop's pattern on a 3.2 MB MLP: the same start on every rank, rank-specific data."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(12)])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    data = torch.Generator().manual_seed(100 + accelerator.process_index)
    losses = []
    for _ in range(STEPS):
        for micro in range(accum):
            sync = contextlib.nullcontext() if micro == accum - 1 else accelerator.no_sync(model)
            with sync:
                loss = model(torch.randn(4, 256, generator=data)).pow(2).mean()
                accelerator.backward(loss / accum)
        losses.append(loss.item())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model, losses


def _worker(rank: int, port: int, out: str) -> None:
    """One process of the group, as torchrun would start it."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from runner.launch.context import make_context
    from runner.spec.load import job_from_document
    from runner.train.distributed import summary
    from runner.train.loop import make_accelerator

    accelerator = None
    for name, (sets, accum) in CONFIGS.items():
        job = job_from_document(yaml.safe_load(MINIMAL_SPEC), overrides=[
            "spec.hardware.accelerator=cpu", "spec.tracking.tensorboard=false", f"spec.output.dir={out}/output",
            f"spec.training.gradientAccumulationSteps={accum}", *sets])
        accelerator = make_accelerator(make_context(job, "cpu"))
        model, losses = _train(accelerator, accum)
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        torch.save(weights, Path(out, f"{name}-rank{rank}.pt"))
        got = {"type": type(model).__name__, "world": accelerator.num_processes,
               "bucket_bytes_cap": model.bucket_bytes_cap, "gradient_as_bucket_view": model.gradient_as_bucket_view,
               "static_graph": model.static_graph, "find_unused_parameters": model.find_unused_parameters,
               "summary": summary(model), "losses": losses,
               # the buckets as rebuilt after the first steps, in the order gradients arrived
               "buckets": len(model.reducer._get_zeros_like_grad_buckets())}
        Path(out, f"{name}-rank{rank}.json").write_text(json.dumps(got))
    accelerator.end_training()  # once: it destroys the process group every accelerator shares


@pytest.fixture(scope="module")
def wrapped(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return out


def _got(out: Path, name: str) -> list[dict]:
    return [json.loads((out / f"{name}-rank{r}.json").read_text()) for r in range(WORLD)]


def _weights(out: Path, name: str) -> list[torch.Tensor]:
    return [torch.load(out / f"{name}-rank{r}.pt") for r in range(WORLD)]


def test_the_wrapper_gets_the_spec_defaults(wrapped):
    for got in _got(wrapped, "defaults"):
        assert got["type"] == "DistributedDataParallel" and got["world"] == WORLD
        assert got["bucket_bytes_cap"] == 25 * 2**20
        assert got["gradient_as_bucket_view"] is True  # not torch's default (False)
        assert got["static_graph"] is False and got["find_unused_parameters"] is False
        assert got["summary"] == ("data parallel: DistributedDataParallel over 2 processes, bucketCapMB 25, "
                                  "gradientAsBucketView true, staticGraph false, findUnusedParameters false")


def test_the_wrapper_gets_every_option_from_the_spec(wrapped):
    for got in _got(wrapped, "other"):
        assert got["bucket_bytes_cap"] == 1 * 2**20
        assert got["gradient_as_bucket_view"] is False and got["find_unused_parameters"] is True
        assert got["buckets"] >= 3  # 3.2 MB of gradients in 1 MB buckets
    for got in _got(wrapped, "static"):
        assert got["static_graph"] is True and got["buckets"] >= 3


@pytest.mark.parametrize("name, same_as", [("other", "defaults"), ("static", "defaults-no-accumulation")])
def test_the_options_change_no_numbers(wrapped, name, same_as):
    """Bucketing, gradient views, the unused-parameter search and a static graph change when
    and where gradients are summed, not the sums: a two-rank sum is exact in any grouping."""
    ours, theirs = _weights(wrapped, name), _weights(wrapped, same_as)
    assert torch.equal(ours[0], ours[1])  # the ranks agree: the all-reduce happened
    assert torch.equal(ours[0], theirs[0])
    assert [g["losses"] for g in _got(wrapped, name)] == [g["losses"] for g in _got(wrapped, same_as)]
    torch.manual_seed(0)
    start = torch.cat([p.flatten() for m in [torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(12)])]
                       for p in m.parameters()])
    assert not torch.equal(ours[0], start)  # and it trained


def test_one_process_is_left_unwrapped(tmp_path):
    """On one process accelerate does not wrap, and the train stage logs no DDP line."""
    from accelerate.state import AcceleratorState, GradientState

    from runner.launch.context import make_context
    from runner.spec.load import job_from_document
    from runner.train.distributed import summary
    from runner.train.loop import make_accelerator

    job = job_from_document(yaml.safe_load(MINIMAL_SPEC), overrides=[
        "spec.hardware.accelerator=cpu", "spec.tracking.tensorboard=false", f"spec.output.dir={tmp_path}"])
    try:
        model = make_accelerator(make_context(job, "cpu")).prepare(torch.nn.Linear(2, 2))
        assert summary(model) is None
    finally:  # accelerate keeps process-wide singletons; leave none behind for other tests
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


def test_option_names_are_torch_arguments():
    training = {"ddp": {"bucketCapMB": 7, "gradientAsBucketView": False, "staticGraph": True,
                        "findUnusedParameters": True}}
    options = ddp_options(training)
    assert options == {"bucket_cap_mb": 7, "gradient_as_bucket_view": False, "static_graph": True,
                       "find_unused_parameters": True}
    assert set(options) <= set(inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters)
