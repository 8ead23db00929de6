"""All-reduce time per training step under DistributedDataParallel, and how much of it the
backward pass hides. Run by torchrun, one process per GPU (`make bench GPUS=2` does):

    python -m torch.distributed.run --standalone --nproc-per-node 2 bench/ddp_comm.py \
        [--res 512] [--batch 32] [--steps 10] [--set spec.training.ddp.bucketCapMB=100 ...] [--tiny]

The model is PixArt-Sigma-XL's transformer (random weights) with the train stage's own speed
options (attention kernel, compiled blocks) and its own DDP wrapping: an Accelerator with the
spec's `training.ddp` kwargs handler (runner/train/distributed.py), then `prepare`. A comm
hook, registered here only, wraps DDP's default all-reduce and records per gradient bucket when
it became ready (its last gradient computed) and when its all-reduce finished: CUDA events on a
GPU, wall clock on the CPU. Per step that gives the time an all-reduce was in flight (busy)
and the part the step waited for after the backward pass ended (exposed). The hook is Python
around the same collective, so a step here may be a little slower than in `trainingjob run`;
step_ms is reported beside the figures for that comparison.

Prints one line `DDP_COMM {json}` on rank 0 (bench/rows.comm_summary).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from rows import comm_summary  # noqa: E402

TINY = dict(num_layers=2, num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32, caption_channels=64,
            sample_size=16)


class CommTimer:
    """A DDP comm hook: the default all-reduce (average), with a (ready, done) mark per bucket."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.spans: list[tuple] = []

    def mark(self):
        if not self.cuda:
            return time.perf_counter() * 1e3
        event = torch.cuda.Event(enable_timing=True)
        event.record()  # on the current stream: the compute stream in the hook, a stream after NCCL in the callback
        return event

    def hook(self, state, bucket):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        ready = self.mark()

        def done(fut):
            self.spans.append((ready, self.mark()))
            return fut.value()

        return allreduce_hook(state, bucket).then(done)

    def elapsed(self, start, mark) -> float:
        """Milliseconds from `start` (a mark) to `mark`."""
        return start.elapsed_time(mark) if self.cuda else mark - start


def build(args, device: torch.device, spec: dict):
    from diffusers import DDPMScheduler, PixArtTransformer2DModel

    from make_random_pixart import XL_TRANSFORMER
    from runner.models.pixart_sigma import Objective
    from runner.models.registry import family
    from runner.train.loop import apply_speed_options

    cfg = dict(XL_TRANSFORMER, **(TINY if args.tiny else {}))
    torch.manual_seed(0)
    with torch.device(device):
        model = PixArtTransformer2DModel(**cfg).train()
    apply_speed_options(family("pixart_sigma"), model, spec, device, lambda m: None)
    return model, cfg, Objective(scheduler=DDPMScheduler(num_train_timesteps=1000), use_additional_conditions=False)


def batch(cfg: dict, res: int, bs: int, tiny: bool, device: torch.device, rank: int):
    g = torch.Generator(device=device).manual_seed(res + bs + rank)
    side, tokens = (res // 64, 12) if tiny else (res // 8, 300)
    latents = torch.randn(bs, 4, side, side, device=device, generator=g)
    embeds = torch.randn(bs, tokens, cfg["caption_channels"], device=device, generator=g)
    lengths = torch.randint(tokens // 4, tokens, (bs,), device=device, generator=g)
    return latents, embeds, (torch.arange(tokens, device=device)[None] < lengths[:, None]).long()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--res", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warm", type=int, default=3, help="steps before measuring (compile, bucket rebuild)")
    p.add_argument("--set", action="append", default=[], help="spec override, e.g. spec.training.ddp.bucketCapMB=100")
    p.add_argument("--tiny", action="store_true")
    args = p.parse_args()

    from accelerate import Accelerator

    from runner.spec.load import load_spec
    from runner.train.distributed import ddp_handler, summary
    from runner.train.optim import make_optimizer

    sets = ([f"spec.hardware.accelerator={'cpu' if args.tiny else 'cuda12'}"] + args.set
            + (["spec.training.mixedPrecision=no"] if args.tiny else []))
    spec = load_spec(REPO / "bench" / "bench.yaml", sets).spec.to_dict()
    training = spec["training"]
    accelerator = Accelerator(mixed_precision=training["mixedPrecision"], cpu=args.tiny,
                              kwargs_handlers=[ddp_handler(training)])
    device = accelerator.device
    model, cfg, objective = build(args, device, spec)
    optimizer = make_optimizer(training, model.parameters(), device)
    model, optimizer = accelerator.prepare(model, optimizer)
    timer = CommTimer(device)
    model.register_comm_hook(None, timer.hook)
    params = [q for q in model.parameters() if q.requires_grad]
    latents, embeds, mask = batch(cfg, args.res, args.batch, args.tiny, device, accelerator.process_index)

    steps = []
    for i in range(args.warm + args.steps):
        timer.spans = []
        start = timer.mark()
        with accelerator.autocast():
            loss = objective(model, latents, embeds, mask)
        backward = timer.mark()
        accelerator.backward(loss)
        if training["maxGradNorm"] > 0:
            accelerator.clip_grad_norm_(params, training["maxGradNorm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        end = timer.mark()
        if timer.cuda:
            torch.cuda.synchronize()
        if i >= args.warm:
            spans = [(timer.elapsed(start, a), timer.elapsed(start, b)) for a, b in timer.spans]
            last_ready = max((a for a, _ in spans), default=timer.elapsed(start, backward))
            steps.append({"step_ms": timer.elapsed(start, end), "spans": spans,
                          "backward_ms": last_ready - timer.elapsed(start, backward)})
    grad_mb = sum(q.numel() * 4 for q in params) / 2**20
    row = dict(comm_summary(steps), resolution=args.res, batch=args.batch, processes=accelerator.num_processes,
               gradients_mb=round(grad_mb, 1), ddp=(summary(model) or "").removeprefix("data parallel: "),
               loss=round(float(loss), 4),
               card=torch.cuda.get_device_name() if timer.cuda else "cpu")
    if accelerator.is_main_process:
        print("DDP_COMM " + json.dumps(row), flush=True)
    accelerator.end_training()


if __name__ == "__main__":
    main()
