#!/usr/bin/env python3
"""Check flash-attn-4 (flash_attn.cute) fwd+bwd against float32 SDPA, and time it.

Needs torch + flash-attn-4 on a CUDA machine; run from the repository root.

    python3 bench/fa4_check.py                 # flash_attn.cute as installed
    python3 bench/fa4_check.py --workaround    # with runner/models/fa4_sm90.py's corrections
                                               #   (dQ postprocess rounding, zeroed dk/dv)
    python3 bench/fa4_check.py --dims 72 --no-timing

Correctness: B=2, H=16, D in --dims (default 64 72 80 96)
  self : N_q = N_k = 1024
  cross: N_q = 1024, N_k = 128, seqused_k = (97, 45)  (reference: SDPA with a boolean key mask)
  errors are max|x - ref| / max|ref| (ref = fp32 SDPA on the same bf16 inputs); for the
  cross case dk/dv are split into the valid rows (k < seqused_k) and the padded rows
  (reference gradient there is exactly 0; we report max|x|). The freed NaN-filled blocks
  placed in the caching allocator right before the backward make uninitialised rows
  show up as NaN (heuristic, but reliable in practice).
Timing: B=8, N=4096, H=16 (cross: N_k=128 with seqused_k), CUDA events, 20 iterations
  after warm-up, fwd+bwd per iteration; plus "72->96 pad" = the trainer's current workaround.
"""
import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F

import flash_attn.cute.interface as fa_iface

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

DEVICE = "cuda"
TOL = 5e-2       # normwise max relative error allowed for out / dq / dk / dv
PAD_TOL = 1e-3   # max |grad| allowed in the masked (k >= seqused_k) rows of dk / dv


from runner.models.fa4_sm90 import install_postprocess_fix, zeroed_key_grads  # noqa: E402


# --------------------------------------------------------------------------------------------
def fa_fwd_bwd(q, k, v, dout, scale, seqused_k=None, zero_dkdv=False, poison=False):
    out, lse = fa_iface._flash_attn_fwd(
        q, k, v, seqused_k=seqused_k, softmax_scale=scale, return_lse=True
    )[:2]
    kw = zeroed_key_grads(k, v, seqused_k) if zero_dkdv else {}
    if poison:  # make uninitialised memory visible: hand NaN blocks to the caching allocator
        junk = [torch.full_like(t, float("nan")) for t in (q, k, v, k, v)]
        del junk
    dq, dk, dv = fa_iface._flash_attn_bwd(
        q, k, v, out, dout, lse, softmax_scale=scale, seqused_k=seqused_k, **kw
    )[:3]
    return out, dq, dk, dv


def ref_fwd_bwd(q, k, v, dout, scale, key_mask=None, dtype=torch.float32):
    # [B, N, H, D] -> [B, H, N, D]
    qr, kr, vr = [t.detach().to(dtype).transpose(1, 2).requires_grad_() for t in (q, k, v)]
    mask = None if key_mask is None else key_mask[:, None, None, :]  # True = attend
    o = F.scaled_dot_product_attention(qr, kr, vr, attn_mask=mask, scale=scale)
    o.backward(dout.to(dtype).transpose(1, 2))
    return [t.transpose(1, 2).float() for t in (o.detach(), qr.grad, kr.grad, vr.grad)]


def rel(x, ref):
    x = x.float()
    d = (x - ref).abs().max().item()
    m = ref.abs().max().item()
    if not math.isfinite(d):
        return float("nan")
    return d / max(m, 1e-12)


def problem(B, Nq, Nk, D, H=16):
    """Random bf16 q, k, v, dout in [B, N, H, D] and the softmax scale."""
    q = torch.randn(B, Nq, H, D, device=DEVICE, dtype=torch.bfloat16)
    k, v = (torch.randn(B, Nk, H, D, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
    dout = torch.randn(B, Nq, H, D, device=DEVICE, dtype=torch.bfloat16)
    return q, k, v, dout, 1.0 / math.sqrt(D)


def check_case(D, cross, args, seqused_list=(97, 45)):
    torch.manual_seed(1234 + D + (7 if cross else 0))
    B, Nk = 2, 128 if cross else 1024
    q, k, v, dout, scale = problem(B, 1024, Nk, D)
    seqused_k = key_mask = None
    if cross:
        seqused_k = torch.tensor(seqused_list[:B], device=DEVICE, dtype=torch.int32)
        key_mask = torch.arange(Nk, device=DEVICE)[None, :] < seqused_k[:, None].long()

    out, dq, dk, dv = fa_fwd_bwd(q, k, v, dout, scale, seqused_k,
                                 zero_dkdv=args.workaround, poison=True)
    torch.cuda.synchronize()
    r_out, r_dq, r_dk, r_dv = ref_fwd_bwd(q, k, v, dout, scale, key_mask)
    b_out, b_dq, b_dk, b_dv = ref_fwd_bwd(q, k, v, dout, scale, key_mask, dtype=torch.bfloat16)

    res = {}
    res["out"] = (rel(out, r_out), rel(b_out, r_out))
    res["dq"] = (rel(dq, r_dq), rel(b_dq, r_dq))
    if cross:
        vm = key_mask[:, :, None, None]  # valid rows
        for name, x, r, b in (("dk", dk, r_dk, b_dk), ("dv", dv, r_dv, b_dv)):
            res[name] = (rel(torch.where(vm, x.float(), 0), r),
                         rel(torch.where(vm, b.float(), 0), r))
            pad = torch.where(vm, 0, x.float()).abs().max().item()
            res[name + "_pad"] = (pad if math.isfinite(pad) else float("nan"), 0.0)
    else:
        res["dk"] = (rel(dk, r_dk), rel(b_dk, r_dk))
        res["dv"] = (rel(dv, r_dv), rel(b_dv, r_dv))

    ok = True
    for name, (e, _) in res.items():
        lim = PAD_TOL if name.endswith("_pad") else TOL
        if not (e == e and e <= lim):
            ok = False
    return res, ok


def time_case(D, cross, args, pad_to=None, iters=20, warmup=3):
    torch.manual_seed(0)
    B, Nk = 8, 128 if cross else 4096
    q, k, v, dout, scale = problem(B, 4096, Nk, D)
    seqused_k = None
    if cross:
        seqused_k = torch.randint(60, Nk + 1, (B,), device=DEVICE, dtype=torch.int32)

    def step():
        out, lse = fa_iface._flash_attn_fwd(
            q, k, v, seqused_k=seqused_k, softmax_scale=scale, return_lse=True
        )[:2]
        kw = zeroed_key_grads(k, v, seqused_k) if args.workaround else {}
        if pad_to is None:
            return fa_iface._flash_attn_bwd(
                q, k, v, out, dout, lse, softmax_scale=scale, seqused_k=seqused_k, **kw
            )[:3]
        p = pad_to - D  # trainer's current workaround: zero-pad to pad_to for the backward
        qp, kp, vp, op, dop = [F.pad(t, (0, p)) for t in (q, k, v, out, dout)]
        dq, dk, dv = fa_iface._flash_attn_bwd(
            qp, kp, vp, op, dop, lse, softmax_scale=scale, seqused_k=seqused_k
        )[:3]
        return dq[..., :D], dk[..., :D], dv[..., :D]

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 72, 80, 96])
    ap.add_argument("--workaround", action="store_true",
                    help="install the runtime workaround (for an unpatched wheel)")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--no-cross", action="store_true")
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()

    assert torch.cuda.is_available(), "needs a CUDA device"
    cap = torch.cuda.get_device_capability()
    try:
        from importlib.metadata import version
        fa_ver = version("flash-attn-4")
    except Exception:
        fa_ver = "?"
    print(f"device={torch.cuda.get_device_name()} sm{cap[0]}{cap[1]} torch={torch.__version__} "
          f"flash-attn-4={fa_ver} file={fa_iface.__file__} workaround={args.workaround}")
    if args.workaround:
        assert install_postprocess_fix(fa_iface), "flash_attn.cute.interface is not the release the fix was written for"

    t0 = time.time()
    all_ok = True
    cases = [(D, c) for D in args.dims for c in ((False,) if args.no_cross else (False, True))]
    print(f"\n{'case':<14}{'status':<7}  max-rel-err vs fp32 SDPA  [bf16 SDPA's own error]")
    for D, cross in cases:
        tag = f"D={D} {'cross' if cross else 'self'}"
        try:
            res, ok = check_case(D, cross, args)
        except Exception as e:  # compile / launch failure counts as FAIL
            print(f"{tag:<14}ERROR  {type(e).__name__}: {str(e)[:300]}")
            all_ok = False
            continue
        all_ok &= ok
        parts = []
        for name, (e, b) in res.items():
            parts.append(f"{name}={e:.3g}" if name.endswith("_pad") else f"{name}={e:.3g}[{b:.2g}]")
        print(f"{tag:<14}{'ok' if ok else 'BAD':<7}" + " ".join(parts))
    print(f"(correctness section took {time.time() - t0:.1f}s incl. JIT compiles)")

    if not args.no_timing:
        print(f"\nTiming fwd+bwd, B=8 N_q=4096 H=16, {args.iters} iters (ms/iter):")
        tcases = [(D, c, None) for D in args.dims for c in ((False,) if args.no_cross else (False, True))]
        if 72 in args.dims:
            tcases.append((72, False, 96))
        for D, cross, pad in tcases:
            tag = f"D={D}{'->' + str(pad) + ' pad' if pad else ''} {'cross(Nk=128,seqused)' if cross else 'self'}"
            try:
                ms = time_case(D, cross, args, pad_to=pad, iters=args.iters)
                print(f"  {tag:<32}{ms:8.3f}")
            except Exception as e:
                print(f"  {tag:<32}ERROR {type(e).__name__}: {str(e)[:200]}")
        print(f"(total {time.time() - t0:.1f}s)")

    print("\nPASS" if all_ok else "\nFAIL")
    sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
