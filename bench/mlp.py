"""PixArt's feed-forward alone (1152 -> 4608 -> GELU(tanh) -> 1152, biases, bf16 autocast) at a
1024 px step's 32768 tokens: diffusers' module eager and compiled, and with the GELU in quack's
GEMM epilogues (runner/models/feedforward.py, and with quack's autotuner), fwd + bwd time and
each output's and gradient's error against float32.

    python bench/mlp.py [--tokens N] [--tiny] [--out DIR]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]
from timing import Rows, median_ms  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--tokens", type=int, default=8 * 64 * 64)
p.add_argument("--tiny", action="store_true")
p.add_argument("--out", default=os.environ.get("OUT", "/tmp/mlp"))
args = p.parse_args()
DEV = torch.device("cpu" if args.tiny else "cuda")
emit = Rows(args.out, "mlp.jsonl")


def main() -> None:
    from diffusers.models.attention import FeedForward

    from runner.models import feedforward

    width, tokens = (64, 256) if args.tiny else (1152, args.tokens)
    torch.manual_seed(0)
    ff = FeedForward(width, activation_fn="gelu-approximate").to(DEV)
    x = torch.randn(tokens, width, device=DEV)
    dy = torch.randn(tokens, width, device=DEV)
    params = [ff.net[0].proj.weight, ff.net[0].proj.bias, ff.net[2].weight, ff.net[2].bias]

    def run(forward, autocast=True):
        xi = x.clone().requires_grad_(True)
        for q in params:
            q.grad = None
        with torch.autocast(DEV.type, dtype=torch.bfloat16, enabled=autocast):
            y = forward(xi)
        y.backward(dy)
        return [y.detach().float()] + [xi.grad] + [q.grad for q in params]

    reference = run(ff.forward, autocast=False)
    names = ["out", "dx", "dW1", "db1", "dW2", "db2"]
    variants = {"diffusers eager": ff.forward, "diffusers compiled": torch.compile(ff.forward)}
    # the same module and parameters, with the fused forward as `trainingjob run` installs it
    used, why = feedforward.set_feed_forward(torch.nn.ModuleList([ff]), "fused", DEV)
    emit(kind="fused", used=used, why=why)
    if why is None:
        from quack.mlp import mlp_func

        variants["fused (quack heuristic tiles)"] = ff.forward
        variants["fused, compiled"] = torch.compile(ff.forward)

        def tuned(h):  # quack's autotuner: every candidate kernel compiled and timed per shape
            with torch.autocast("cuda", enabled=False):
                c = lambda t: t.to(torch.bfloat16)  # noqa: E731
                return mlp_func(c(h), c(params[0]), c(params[2]), activation="gelu_tanh_approx",
                                bias1=c(params[1]), bias2=c(params[3]), tuned=True)
        variants["quack autotuned"] = tuned
    for name, forward in variants.items():
        try:
            got = run(forward)
            errors = {n: round(float((g - r).abs().max() / r.abs().max()), 5) for n, g, r in zip(names, got, reference)}
            ms = median_ms(lambda: run(forward), cuda=DEV.type == "cuda", warm=3, iters=20)
            flops = 3 * 2 * 2 * tokens * width * 4 * width  # two GEMMs, fwd + 2 bwd
            emit(kind="ff", variant=name, tokens=tokens, ms=round(ms, 3), tflops=round(flops / ms / 1e9, 1),
                 error_vs_fp32=errors)
        except Exception as e:  # noqa: BLE001 - record and go on
            emit(kind="ff", variant=name, error=f"{type(e).__name__}: {str(e)[:400]}")


if __name__ == "__main__":
    main()
