"""Loss curves of a precision setting against float32, beside the noise of two seeds.

    python bench/curves.py [--runs fp32:0,fp32:1,bf16res:0,bf16res:1] [--steps 500] [--res 512] [--tiny]

Each run trains the PixArt-Sigma-XL architecture (random init, the same init for every run)
for --steps steps of fp32-master AdamW with bf16 autocast, FA4 and compiled blocks, as
`trainingjob run` does, on a fixed set of smooth random latents and caption embeddings
visited in the same order. The seed after the colon sets the noise and timesteps. A setting
is within noise when its curve's distance from float32 at the same seed is no larger than
float32's own distance between the two seeds. Rows (per-step losses and 50-step window means)
go to DIR/curves.jsonl.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from timing import Rows  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--runs", default="fp32:0,fp32:1,bf16res:0,bf16res:1")
p.add_argument("--steps", type=int, default=500)
p.add_argument("--res", type=int, default=512)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--lr", type=float, default=1e-4)
p.add_argument("--tiny", action="store_true")
p.add_argument("--out", default=os.environ.get("OUT", "/tmp/curves"))
args = p.parse_args()
DEV = torch.device("cpu" if args.tiny else "cuda")
WINDOW = 50


def dataset(cfg, n=64):
    """Smooth random latents (low-frequency fields upsampled, as image latents are smooth) and
    caption embeddings with key-padding masks; fixed, the same for every run."""
    g = torch.Generator().manual_seed(1234)
    h = args.res // 8 if not args.tiny else 16
    t = 120 if not args.tiny else 12
    coarse = torch.randn(n, 4, h // 8, h // 8, generator=g)
    lat = F.interpolate(coarse, size=(h, h), mode="bicubic", align_corners=False)
    lat = lat + 0.2 * torch.randn(n, 4, h, h, generator=g)
    emb = torch.randn(n, t, cfg["caption_channels"], generator=g)
    lens = torch.randint(t // 4, t, (n,), generator=g)
    mask = (torch.arange(t)[None] < lens[:, None]).long()
    return lat, emb, mask


def run(kind: str, seed: int, emit) -> list[float]:
    from diffusers import DDPMScheduler, PixArtTransformer2DModel

    from make_random_pixart import XL_TRANSFORMER
    from runner.models import attention as attn
    from runner.models.pixart_sigma import FAMILY, Objective
    from runner.train.optim import make_optimizer

    torch._dynamo.reset()
    cfg = dict(XL_TRANSFORMER)
    if args.tiny:
        cfg.update(num_layers=2, num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
                   caption_channels=64, sample_size=16)
    torch.manual_seed(0)  # one init for every run
    with torch.device(DEV):
        model = PixArtTransformer2DModel(**cfg).train()
    used, _ = attn.set_attention(model, "auto", DEV)
    if kind == "bf16res":
        FAMILY.bf16_residual(model)
    if DEV.type == "cuda":
        FAMILY.compile(model)
    training = dict(optimizer="adamw", learningRate=args.lr, adamBeta1=0.9, adamBeta2=0.999, adamEpsilon=1e-8,
                    weightDecay=0.0)
    opt = make_optimizer(training, model.parameters(), DEV)
    objective = Objective(scheduler=DDPMScheduler(num_train_timesteps=1000), use_additional_conditions=False)
    lat, emb, mask = dataset(cfg)
    lat, emb, mask = lat.to(DEV), emb.to(DEV, torch.bfloat16), mask.to(DEV)  # once, not every step
    gen = torch.Generator(device=DEV).manual_seed(seed)
    losses, t = [], time.time()
    for step in range(args.steps):
        idx = torch.arange(step * args.batch, (step + 1) * args.batch, device=DEV) % lat.shape[0]
        with torch.autocast(DEV.type, dtype=torch.bfloat16):
            loss = objective(model, lat[idx], emb[idx], mask[idx], generator=gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    losses = [float(x) for x in torch.stack(losses).cpu()]
    windows = [sum(losses[i:i + WINDOW]) / len(losses[i:i + WINDOW]) for i in range(0, len(losses), WINDOW)]
    emit(kind="curve", run=f"{kind}:{seed}", attention=used, steps=args.steps, res=args.res, batch=args.batch,
         lr=args.lr, seconds=round(time.time() - t, 1), window=WINDOW, window_means=[round(w, 5) for w in windows],
         losses=[round(x, 5) for x in losses])
    return windows


def main() -> None:
    emit = Rows(args.out, "curves.jsonl")
    curves = {}
    for item in args.runs.split(","):
        kind, seed = item.split(":")
        curves[(kind, int(seed))] = run(kind, int(seed), emit)

    def distance(a, b):  # mean absolute gap between two curves' window means
        return sum(abs(x - y) for x, y in zip(a, b)) / len(a)

    seeds = sorted({s for _, s in curves})
    if ("fp32", seeds[0]) in curves and len(seeds) > 1 and ("fp32", seeds[1]) in curves:
        noise = distance(curves[("fp32", seeds[0])], curves[("fp32", seeds[1])])
        for kind in sorted({k for k, _ in curves} - {"fp32"}):
            gaps = [distance(curves[(kind, s)], curves[("fp32", s)]) for s in seeds if (kind, s) in curves]
            emit(kind="curve_compare", setting=kind, seed_noise=round(noise, 5),
                 gap_to_fp32=[round(g, 5) for g in gaps], within_noise=all(g <= noise for g in gaps))


if __name__ == "__main__":
    main()
