"""flash-attn-4's SM90 backward at PixArt's shape under other tile configurations.

    python bench/fa4_tiles.py [--deadline S] [--out DIR] [--only NAME[,NAME...]]

For head_dim <= 96 the package picks one BwdConfig (64 x 128 tiles, from FA3's hdim-96
setting). This times the backward kernel (B 8, 4096 tokens, 16 heads of 72) under each
candidate in CANDIDATES, checks its dQ/dK/dV against float32 SDPA, and records compile
seconds; a candidate that does not compile or is wrong is recorded as such. Rows go to
DIR/fa4_tiles.jsonl. runner/models/fa4_sm90.py's corrections are applied, as in training.
Without --only each candidate runs in its own process (a launch failure poisons the process's
CUDA context); FWD_CANDIDATES do the same for the forward's tiles.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from timing import Rows, median_ms  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--deadline", type=float, default=400, help="seconds for the whole sweep (without --only)")
p.add_argument("--out", default=os.environ.get("OUT", "/tmp/fa4-tiles"))
p.add_argument("--only", default="", help="comma-separated candidate names")
args = p.parse_args()
T0 = time.time()

# name -> BwdConfig fields that differ from the package's choice for head_dim <= 96
CANDIDATES = {
    "default": {},
    "dq_two_wg": dict(dQ_single_wg=False),
    "dq_atom2": dict(dQ_single_wg=False, AtomLayoutMdQ=2),
    "m80_dq_swap": dict(m_block_size=80, dQ_swapAB=True, dQ_single_wg=False),
    "m128": dict(m_block_size=128, AtomLayoutMdQ=2, dQ_single_wg=False),
    "m128_pds1": dict(m_block_size=128, AtomLayoutMdQ=2, dQ_single_wg=False, num_stages_PdS=1),
    "n96": dict(n_block_size=96),
    "m64_n192_wg3": dict(n_block_size=192, num_wg=3, AtomLayoutNdKV=3),
    "q1_do1": dict(num_stages_Q=1, num_stages_dO=1, m_block_size=128, AtomLayoutMdQ=2, dQ_single_wg=False),
    "m128_sdp2": dict(m_block_size=128, AtomLayoutMdQ=2, dQ_single_wg=False, AtomLayoutMSdP=2),
    "m128_nosdpswap": dict(m_block_size=128, AtomLayoutMdQ=2, dQ_single_wg=False, SdP_swapAB=False),
    "m128_dkv1": dict(m_block_size=128, AtomLayoutMdQ=2, dQ_single_wg=False, AtomLayoutNdKV=1),
    "m128_do1": dict(m_block_size=128, AtomLayoutMdQ=2, dQ_single_wg=False, num_stages_dO=1),
    "m128_dqswap": dict(m_block_size=128, AtomLayoutMdQ=2, dQ_single_wg=False, dQ_swapAB=True),
    "m128_n64": dict(m_block_size=128, n_block_size=64, AtomLayoutMdQ=2, dQ_single_wg=False, AtomLayoutNdKV=1),
    "m64_n192_wg3b": dict(n_block_size=192, num_wg=3, AtomLayoutNdKV=3, dQ_single_wg=False),
    "m192_wg3": dict(m_block_size=192, num_wg=3, AtomLayoutMdQ=3, dQ_single_wg=False),
    "m128_n192_wg3": dict(m_block_size=128, n_block_size=192, num_wg=3, AtomLayoutNdKV=3, AtomLayoutMdQ=1,
                          dQ_single_wg=False),
}
# forward: (m_block_size, n_block_size, mma_pv_is_rs, intra_wg_overlap); the package's is 192 x 144
FWD_CANDIDATES = {"fwd_192x144": (192, 144, False, True), "fwd_192x128": (192, 128, False, True),
                  "fwd_192x160": (192, 160, False, True), "fwd_192x176": (192, 176, False, True),
                  "fwd_128x176": (128, 176, False, True), "fwd_128x192_rs": (128, 192, True, True),
                  "fwd_192x192": (192, 192, False, True), "fwd_128x128_rs": (128, 128, True, True)}


def trial(emit, rec: dict, call, errors, flops: float) -> None:
    """One candidate: the first call (its JIT compile), its errors (`errors(output)`), then the
    median of 12 calls; a candidate that cannot build or launch is recorded as such."""
    try:
        t = time.time()
        got = call()
        torch.cuda.synchronize()
        rec["compile_s"] = round(time.time() - t, 1)
        rec.update(errors(got))
        ms = median_ms(call, cuda=True, warm=0, iters=12)
        rec.update(ms=round(ms, 3), tflops=round(flops / ms / 1e9, 1))
    except Exception as e:  # noqa: BLE001 - a config that cannot build is a result
        traceback.print_exc(limit=2)
        rec["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    emit(**rec)


def main() -> None:
    from flash_attn.cute import interface as fa

    from runner.models.fa4_sm90 import install_postprocess_fix

    install_postprocess_fix(fa)
    emit = Rows(args.out, "fa4_tiles.jsonl")
    bwd_tiles, fwd_tiles = fa._tile_size_bwd_sm90, fa._tile_size_fwd_sm90
    dev = torch.device("cuda")
    b, n, h, d = 8, 4096, 16, 72
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v, go = (torch.randn(b, n, h, d, device=dev, generator=g, dtype=torch.bfloat16) for _ in range(4))
    scale = d ** -0.5
    out, lse, *_ = fa._flash_attn_fwd(q, k, v, softmax_scale=scale, return_lse=True)
    qf, kf, vf = (x.float().transpose(1, 2).requires_grad_() for x in (q, k, v))
    ref = F.scaled_dot_product_attention(qf, kf, vf, scale=scale)
    want = [x.transpose(1, 2) for x in torch.autograd.grad(ref, (qf, kf, vf), go.float().transpose(1, 2))]
    ref = ref.detach().transpose(1, 2)
    del qf, kf, vf
    fwd_flops = 4 * b * h * n * n * d

    def rel(a, r):
        return round(float((a.float() - r).norm() / r.norm()), 5)

    names = [x for x in args.only.split(",") if x] or [*CANDIDATES, *FWD_CANDIDATES]
    for name in names:
        if name in CANDIDATES:
            change = CANDIDATES[name]

            def pick(head_dim, head_dim_v, causal, local, sparse_block_size_q=None, _change=change):
                cfg = bwd_tiles(head_dim, head_dim_v, causal, local, sparse_block_size_q=sparse_block_size_q)
                return dataclasses.replace(cfg, **_change) if head_dim <= 96 else cfg

            fa._tile_size_bwd_sm90 = pick
            rec = dict(kind="fa4_tile", name=name, change=change)
            trial(emit, rec, lambda: fa._flash_attn_bwd(q, k, v, out, go, lse, softmax_scale=scale)[:3],
                  lambda got: {"rel_err": [rel(a, r) for a, r in zip(got, want)]}, 2.5 * fwd_flops)
        else:
            config = FWD_CANDIDATES[name]

            def pick_fwd(head_dim, head_dim_v, is_causal, is_local, sparse_block_size_q=None, _c=config):
                cfg = fwd_tiles(head_dim, head_dim_v, is_causal, is_local, sparse_block_size_q)
                return fa.FwdConfig(*_c) if 64 < head_dim <= 96 else cfg

            fa._tile_size_fwd_sm90 = pick_fwd
            rec = dict(kind="fa4_fwd_tile", name=name)
            trial(emit, rec, lambda: fa._flash_attn_fwd(q, k, v, softmax_scale=scale, return_lse=True)[0],
                  lambda got: {"rel_err": rel(got, ref)}, fwd_flops)
        fa._tile_size_bwd_sm90, fa._tile_size_fwd_sm90 = bwd_tiles, fwd_tiles


def isolated() -> None:
    """Each candidate in its own process: a configuration that fails to launch leaves its CUDA
    context unusable, which would end the sweep there."""
    import subprocess

    for name in [*CANDIDATES, *FWD_CANDIDATES]:
        left = args.deadline - (time.time() - T0)
        if left < 20:
            print(f"{name}: skipped, the deadline is near", flush=True)
            continue
        cmd = [sys.executable, __file__, "--only", name, "--out", args.out]
        try:
            subprocess.run(cmd, timeout=left, check=False)
        except subprocess.TimeoutExpired:
            print(f"{name}: stopped at the deadline", flush=True)


if __name__ == "__main__":
    os.makedirs(args.out, exist_ok=True)
    if args.only:
        main()
    else:
        isolated()
