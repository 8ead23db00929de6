"""The block GEMMs of a PixArt-Sigma-XL training step at their real shapes, one at a time.

    python bench/gemms.py [--res 1024] [--batch 8] [--tiny] [--out DIR] [--library aten,cublaslt,triton]

A step's profile names cuBLAS kernels, not shapes, so "the GEMMs run at the card's peak" could
not be told apart per layer. This times each Linear of a block (forward, input gradient and
weight gradient, bf16, as autocast runs them) at the step's shapes, and the same for a fused
q/k/v projection, and gives TFLOP/s beside a large square matmul's. Rows go to DIR/gemms.jsonl.
--library times the same GEMMs through other implementations: `cublaslt` (PyTorch's
preferred_blas_library) and `triton` (inductor's max-autotune Triton templates, persistent TMA
kernels allowed; the 1152-wide shapes only, as they are the slow ones).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import Rows, median_ms  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--res", type=int, default=1024)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--tiny", action="store_true")
p.add_argument("--library", default="aten", help="comma-separated: aten, cublaslt, triton")
p.add_argument("--out", default=os.environ.get("OUT", "/tmp/gemms"))
args = p.parse_args()
DEV = torch.device("cpu" if args.tiny else "cuda")
DT = torch.float32 if args.tiny else torch.bfloat16
WIDTH, FF = (64, 256) if args.tiny else (1152, 4608)
TOKENS = args.batch * (args.res // 16) ** 2 if not args.tiny else 256
LAYERS = 28

# name: (in, out, uses per block); self q/k/v/o and cross q/o see the image tokens
LINEARS = {"attn 1152x1152 (self q, k, v, o; cross q, o)": (WIDTH, WIDTH, 6),
           "fused q|k|v 1152x3456 (instead of three)": (WIDTH, 3 * WIDTH, 0),
           "ff up 1152x4608": (WIDTH, FF, 1),
           "ff down 4608x1152": (FF, WIDTH, 1)}


def main() -> None:
    emit = Rows(args.out, "gemms.jsonl")

    def timed(fn):
        return median_ms(fn, cuda=DEV.type == "cuda", warm=3, iters=20)

    g = torch.Generator(device=DEV).manual_seed(0)
    n = 8192 if not args.tiny else 256
    a, b = (torch.randn(n, n, device=DEV, dtype=DT, generator=g) for _ in range(2))
    peak = 2 * n ** 3 / timed(lambda: a @ b) / 1e9
    emit(kind="gemm_peak", shape=f"{n}^3", tflops=round(peak, 1))
    for library in args.library.split(","):
        run_library(emit, timed, g, library)


def compiled(fn):
    """fn through inductor's max-autotune GEMM templates (Triton only, so the row says what
    Triton reaches, not which library wins)."""
    return torch.compile(fn, fullgraph=True, options={
        "max_autotune": True, "max_autotune_gemm_backends": "TRITON" if DEV.type == "cuda" else "ATEN",
        "triton.enable_persistent_tma_matmul": True, "triton.cudagraphs": False})


def run_library(emit, timed, g, library: str) -> None:
    previous = torch.backends.cuda.preferred_blas_library()
    if library == "cublaslt" and DEV.type == "cuda":
        torch.backends.cuda.preferred_blas_library("cublaslt")
    try:
        linears(emit, timed, g, library)
    finally:
        torch.backends.cuda.preferred_blas_library(previous)


def linears(emit, timed, g, library: str) -> None:
    step_ms = 0.0
    for name, (k, m, uses) in LINEARS.items():
        if library == "triton" and FF in (k, m):
            continue
        x = torch.randn(TOKENS, k, device=DEV, dtype=DT, generator=g)
        w = torch.randn(m, k, device=DEV, dtype=DT, generator=g)
        bias = torch.randn(m, device=DEV, dtype=DT, generator=g)
        grad = torch.randn(TOKENS, m, device=DEV, dtype=DT, generator=g)
        flops = 2 * TOKENS * k * m
        rec = dict(kind="gemm", library=library, linear=name, tokens=TOKENS)
        for part, fn in (("fwd", lambda x, w, bias, grad: F.linear(x, w, bias)),
                         ("dx", lambda x, w, bias, grad: grad @ w),
                         ("dw", lambda x, w, bias, grad: grad.t() @ x)):
            if library == "triton":
                fn = compiled(fn)
            try:
                ms = timed(lambda fn=fn: fn(x, w, bias, grad))
            except Exception as e:  # noqa: BLE001 - a library that cannot run a shape is a result
                rec[f"{part}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
                continue
            rec[f"{part}_ms"] = round(ms, 4)
            rec[f"{part}_tflops"] = round(flops / ms / 1e9, 1)
            step_ms += ms * uses * LAYERS
        emit(**rec)
    if library == "triton":
        return
    emit(kind="gemm_step", library=library, unfused_block_gemms_ms=round(step_ms, 1), layers=LAYERS,
         note="the block Linears of one step (fwd + dx + dw) at these rates; cross k/v (text tokens) left out")


if __name__ == "__main__":
    main()
