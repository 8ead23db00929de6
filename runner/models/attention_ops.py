"""The attention kernels behind torch.library custom ops (see runner/models/attention.py for
why these kernels and how they are checked before use).

Two pairs of ops, so a compiled block keeps each kernel as one opaque node (no graph break)
and autograd calls the matching backward kernel:
- `attn_fwd`/`attn_bwd` take q, k, v (cross-attention, and self-attention when its q, k, v
  come from three GEMMs);
- `attn_packed_fwd`/`attn_packed_bwd` take self-attention's fused q|k|v projection as one
  [B, N, 3 * H * D] tensor and return its gradient as one tensor: the kernels write dQ, dK, dV
  straight into the three column blocks of one buffer, where separate gradients would be
  concatenated by autograd (a copy of the whole q|k|v gradient in every block).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Kernels:
    """fwd(q, k, v, seqused_k, scale) -> (out, lse) and bwd(dout, q, k, v, out, lse, seqused_k,
    scale, into=None) -> (dq, dk, dv); q/k/v/out are [B, N, H, D] (q, k, v possibly strided
    views), lse [B, H, N] float32. `into` are buffers (strided views) the backward may write
    the gradients into; whatever it returns that is not them is copied into them."""

    name: str
    fwd: Callable
    bwd: Callable
    accepts: Callable[[torch.Tensor], bool] = lambda q: True
    bwd_head_dim: int | None = None  # the backward zero-pads to this width (None: as they come)
    key_padding: bool = True  # seqused_k is right; when False, masked attention goes to SDPA
    packed: bool = True  # the packed q|k|v ops are right; when False, self-attention uses attn_fwd


_ACTIVE: Kernels | None = None


def use_kernels(kernels: Kernels | None) -> None:
    """Select the implementation behind the custom ops (tests swap in `reference_kernels`)."""
    global _ACTIVE
    _ACTIVE = kernels


def active() -> Kernels | None:
    return _ACTIVE


@functools.lru_cache(maxsize=1)
def fa4_kernels() -> Kernels:
    """flash-attn-4 (CuTe DSL) kernels; ImportError when the package is not installed."""
    import os

    # Compiled kernels persist on disk, so later processes (and the next run) skip the JIT.
    os.environ.setdefault("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "1")
    from flash_attn.cute import interface as fa

    from runner.models.fa4_sm90 import install_postprocess_fix, zeroed_key_grads

    install_postprocess_fix(fa)

    def fwd(q, k, v, seqused_k, scale):
        out, lse, *_ = fa._flash_attn_fwd(q, k, v, seqused_k=seqused_k, softmax_scale=scale, return_lse=True)
        return out, lse

    def bwd(dout, q, k, v, out, lse, seqused_k, scale, into=None):
        if into is None:
            buffers = zeroed_key_grads(k, v, seqused_k)
        else:  # the kernel writes through the buffers' strides
            buffers = dict(zip(("dq", "dk", "dv"), into))
            if seqused_k is not None:  # it leaves the unused keys' rows unwritten
                buffers["dk"].zero_(), buffers["dv"].zero_()
        dq, dk, dv = fa._flash_attn_bwd(q, k, v, out, dout, lse, softmax_scale=scale, seqused_k=seqused_k,
                                        **buffers)[:3]
        return dq, dk, dv

    # FA4 takes half-precision CUDA tensors; float32 (validation, CPU) goes to SDPA.
    return Kernels("fa4", fwd, bwd, accepts=lambda q: q.is_cuda and q.dtype in (torch.float16, torch.bfloat16))


def reference_kernels() -> Kernels:
    """The same contract in plain PyTorch (float32 math): what the CPU tests check the op
    plumbing, the key-count masking and the backward against."""

    def scores(q, k, seqused_k, scale):
        s = torch.einsum("bnhd,bthd->bhnt", q.float(), k.float()) * scale
        if seqused_k is not None:
            keep = torch.arange(k.shape[1], device=k.device)[None, :] < seqused_k[:, None].long()
            s = s.masked_fill(~keep[:, None, None, :], float("-inf"))
        return s

    def fwd(q, k, v, seqused_k, scale):
        s = scores(q, k, seqused_k, scale)
        lse = torch.logsumexp(s, dim=-1)
        out = torch.einsum("bhnt,bthd->bnhd", torch.exp(s - lse[..., None]), v.float())
        return out.to(q.dtype).contiguous(), lse.contiguous()

    def bwd(dout, q, k, v, out, lse, seqused_k, scale, into=None):
        p = torch.exp(scores(q, k, seqused_k, scale) - lse[..., None])
        do = dout.float()
        dv = torch.einsum("bhnt,bnhd->bthd", p, do)
        dp = torch.einsum("bnhd,bthd->bhnt", do, v.float())
        delta = (do * out.float()).sum(-1).transpose(1, 2)  # [B, H, N]
        ds = p * (dp - delta[..., None]) * scale
        dq = torch.einsum("bhnt,bthd->bnhd", ds, k.float())
        dk = torch.einsum("bhnt,bnhd->bthd", ds, q.float())
        return tuple(g.to(t.dtype).contiguous() for g, t in ((dq, q), (dk, k), (dv, v)))

    return Kernels("reference", fwd, bwd)


def _kernels() -> Kernels:
    if _ACTIVE is None:
        raise RuntimeError("no attention kernels selected (runner.models.attention_ops.use_kernels)")
    return _ACTIVE


def _run_bwd(dout, q, k, v, out, lse, seqused_k, scale, into=None) -> tuple[torch.Tensor, ...]:
    """The active backward, zero-padding the head dim to its `bwd_head_dim` (exact: padded q, k
    add 0 to the scores, padded v, out and dout give 0 columns that are sliced off); with `into`,
    the gradients end up in those buffers."""
    kernels = _kernels()
    d, width = q.shape[-1], kernels.bwd_head_dim
    if width and width > d:
        padded = kernels.bwd(*(F.pad(t, (0, width - d)) for t in (dout, q, k, v, out)), lse, seqused_k, scale)
        grads = tuple(g[..., :d] for g in padded)
    else:
        grads = tuple(kernels.bwd(dout, q, k, v, out, lse, seqused_k, scale, into=into))
    if into is None:
        return tuple(g.contiguous() for g in grads)
    for buffer, g in zip(into, grads):
        if g.data_ptr() != buffer.data_ptr() or g.stride() != buffer.stride():
            buffer.copy_(g)
    return tuple(into)


# ----------------------------------------------------------------------------- q, k, v ops

@torch.library.custom_op("trainingjob::attn_fwd", mutates_args=())
def attn_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seqused_k: Optional[torch.Tensor],
             scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse = _kernels().fwd(q, k, v, seqused_k, scale)
    return out, lse


@attn_fwd.register_fake
def _attn_fwd_fake(q, k, v, seqused_k, scale):
    b, n, h, _ = q.shape
    return q.new_empty((b, n, h, v.shape[-1])), q.new_empty((b, h, n), dtype=torch.float32)


@torch.library.custom_op("trainingjob::attn_bwd", mutates_args=())
def attn_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
             lse: torch.Tensor, seqused_k: Optional[torch.Tensor], scale: float
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _run_bwd(dout, q, k, v, out, lse, seqused_k, scale)


@attn_bwd.register_fake
def _attn_bwd_fake(dout, q, k, v, out, lse, seqused_k, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, seqused_k, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, seqused_k)
    ctx.scale = scale


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, seqused_k = ctx.saved_tensors
    dq, dk, dv = attn_bwd(dout.contiguous(), q, k, v, out, lse, seqused_k, ctx.scale)
    return dq, dk, dv, None, None


attn_fwd.register_autograd(_backward, setup_context=_setup_context)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seqused_k: torch.Tensor | None,
              scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v over the first seqused_k[b] keys of each sample; [B, N, H, D].
    q, k, v may be strided views (of a fused q|k|v projection) as long as the head dim is dense."""
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    return attn_fwd(q, k, v, seqused_k, scale)[0]


# ----------------------------------------------------------------------------- packed q|k|v ops

def split_packed(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v as [B, N, H, D] views of a [B, N, 3 * H * D] q|k|v projection (no copies)."""
    b, n, width = qkv.shape
    return qkv.view(b, n, 3, heads, width // (3 * heads)).unbind(2)


@torch.library.custom_op("trainingjob::attn_packed_fwd", mutates_args=())
def attn_packed_fwd(qkv: torch.Tensor, heads: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse = _kernels().fwd(*split_packed(qkv, heads), None, scale)
    return out, lse


@attn_packed_fwd.register_fake
def _attn_packed_fwd_fake(qkv, heads, scale):
    b, n, width = qkv.shape
    return qkv.new_empty((b, n, heads, width // (3 * heads))), qkv.new_empty((b, heads, n), dtype=torch.float32)


@torch.library.custom_op("trainingjob::attn_packed_bwd", mutates_args=())
def attn_packed_bwd(dout: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, heads: int,
                    scale: float) -> torch.Tensor:
    dqkv = torch.empty_like(qkv, memory_format=torch.contiguous_format)
    _run_bwd(dout, *split_packed(qkv, heads), out, lse, None, scale, into=split_packed(dqkv, heads))
    return dqkv


@attn_packed_bwd.register_fake
def _attn_packed_bwd_fake(dout, qkv, out, lse, heads, scale):
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


def _packed_setup_context(ctx, inputs, output):
    qkv, heads, scale = inputs
    out, lse = output
    ctx.save_for_backward(qkv, out, lse)
    ctx.heads, ctx.scale = heads, scale


def _packed_backward(ctx, dout, _dlse):
    qkv, out, lse = ctx.saved_tensors
    return attn_packed_bwd(dout.contiguous(), qkv, out, lse, ctx.heads, ctx.scale), None, None


attn_packed_fwd.register_autograd(_packed_backward, setup_context=_packed_setup_context)


def packed_attention(qkv: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
    """Self-attention of a [B, N, 3 * heads * D] q|k|v projection; [B, N, heads, D]. Its
    gradient reaches the projection as one tensor, written in place by the kernels."""
    return attn_packed_fwd(qkv.contiguous(), heads, scale)[0]
