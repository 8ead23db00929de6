"""Attention kernels for the PixArt transformer (spec.model.attention).

PixArt-Sigma-XL has 16 heads of 72. PyTorch's SDPA runs head_dim 72 through cuDNN on
Hopper, which pads to 128 internally (measured on an H200: 6.8 ms per layer, fwd+bwd, at
72 and at 128 alike), so ~44% of its tensor-core work is on zeros. flash-attn-4's SM90
kernels have native tiles for head dims up to 96. `fa4` runs self- and cross-attention
through them:
- no [B, N, H, D] -> [B, H, N, D] transposes: FA4 takes the Linear outputs' own layout;
- cross-attention's key padding (T5 embeddings are trimmed to their real length and padded
  at the end, as tokenizers pad) becomes a per-sample key count (`seqused_k`) instead of
  an additive bias, so the padded keys cost nothing;
- self-attention's q, k, v come from one GEMM on the concatenated weights (`packed_qkv`):
  PixArt's 1152 x 1152 projections have K = 1152, short enough that cuBLAS ran them at
  480-560 TFLOP/s on an H200, the fused 1152 x 3456 one at 600-730 (bench/gemms.py); the
  backward kernel writes dQ, dK, dV into one buffer, the gradient of that projection.

flash-attn-4 4.0.0b36 is not right everywhere on SM90 (measured on an H200 against SDPA in
float32): the backward's dQ is wrong whenever the kernel's internal head tile is 80 (head_dim
72 or 80), and with per-sample key counts (`seqused_k`) the unused keys' dK/dV rows are left
unwritten. `fa4_sm90` corrects both from outside the package. Whatever the installed release
does, `set_attention` checks on a small problem before use: the forward runs at the native
width, the backward at the first width (72, then zero-padded 80, 96) whose gradients agree,
and key-padded (cross-)attention uses the kernels only if that case agrees too, SDPA
otherwise; likewise the packed q|k|v ops, checked at the model's head count (the strides of
their views), else fused self-attention takes the q, k, v ops. Zero padding is exact (padded q, k add 0 to the scores; padded v, out and dout
give 0 columns that are sliced off; the softmax scale stays 1/sqrt(72)).

The kernels sit behind torch.library custom ops (runner/models/attention_ops.py), so a
compiled block keeps them as one opaque node each (no graph break) and autograd calls the
matching backward kernel.
Anything the kernels cannot take (CPU, float32 inputs as in validation) goes to SDPA
with the same q, k, v and mask, so the two paths compute the same function.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from runner.models import attention_ops as ops
# The kernels and their ops live in attention_ops; these names are this module's API too.
from runner.models.attention_ops import (  # noqa: F401
    Kernels, attention, fa4_kernels, packed_attention, reference_kernels, use_kernels,
)

BACKENDS = ("auto", "sdpa", "fa4")


# ----------------------------------------------------------------------------- processor

def key_counts(bias: torch.Tensor) -> torch.Tensor:
    """Per-sample count of attended keys from diffusers' additive key-padding bias
    ([B, 1, T], 0 = keep, -10000 = drop). Assumes trailing padding, as every tokenizer
    here pads and as the cache's trimmed embeddings are padded back."""
    return (bias.reshape(bias.shape[0], -1) > -1.0).sum(dim=-1, dtype=torch.int32)


def packed_qkv(attn, hidden_states: torch.Tensor) -> torch.Tensor:
    """Self-attention's q|k|v, [B, N, 3C], from one GEMM on the concatenated weights
    (concatenated per call, so the parameters and the state dict stay diffusers' own): one
    [N, 3C] GEMM forward, and one input-gradient GEMM with K = 3C instead of three with K = C
    and two adds."""
    projections = (attn.to_q, attn.to_k, attn.to_v)
    weight = torch.cat([p.weight for p in projections])
    bias = None if attn.to_q.bias is None else torch.cat([p.bias for p in projections])
    return F.linear(hidden_states, weight, bias)


def _fusable(attn) -> bool:
    projections = (attn.to_q, attn.to_k, attn.to_v)
    return (all(type(p) is torch.nn.Linear for p in projections)
            and len({(p.in_features, p.out_features, p.bias is None) for p in projections}) == 1)


class FlashAttnProcessor:
    """diffusers attention processor for PixArt's plain Attention modules (no q/k norms,
    no group or spatial norm, no residual): the kernels above where they apply, SDPA on the
    same tensors otherwise. With `fuse_qkv`, self-attention projects q, k, v in one GEMM."""

    def __init__(self, fuse_qkv: bool = False):
        self.fuse_qkv = fuse_qkv

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        b, n, _ = hidden_states.shape
        h, kernels = attn.heads, ops.active()
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if self.fuse_qkv and encoder_hidden_states is None and _fusable(attn):
            qkv = packed_qkv(attn, hidden_states)
            if kernels is not None and kernels.packed and kernels.accepts(qkv) and attention_mask is None:
                out = packed_attention(qkv, h, attn.scale)
                return attn.to_out[1](attn.to_out[0](out.reshape(b, n, -1).to(qkv.dtype)))
            q, k, v = qkv.chunk(3, dim=-1)
        else:
            q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        d = q.shape[-1] // h
        q, k, v = q.view(b, n, h, d), k.view(b, -1, h, d), v.view(b, -1, h, d)
        if (kernels is not None and kernels.accepts(q) and k.dtype == q.dtype
                and (attention_mask is None or kernels.key_padding)):
            seqused = key_counts(attention_mask) if attention_mask is not None else None
            out = attention(q, k, v, seqused, attn.scale)
        else:
            mask = None
            if attention_mask is not None:
                mask = attn.prepare_attention_mask(attention_mask, k.shape[1], b).view(b, h, -1, k.shape[1])
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 attn_mask=mask, scale=attn.scale).transpose(1, 2)
        out = out.reshape(b, n, h * d).to(q.dtype)
        return attn.to_out[1](attn.to_out[0](out))


def _plain(attn) -> bool:
    """Only Attention modules shaped like PixArt's: anything else keeps its own processor."""
    return (getattr(attn, "spatial_norm", None) is None and getattr(attn, "group_norm", None) is None
            and getattr(attn, "norm_q", None) is None and getattr(attn, "norm_k", None) is None
            and not getattr(attn, "norm_cross", False) and not getattr(attn, "residual_connection", False)
            and getattr(attn, "rescale_output_factor", 1.0) == 1.0)


def kernel_problem(device: torch.device, load: Callable[[], object], package: str) -> str | None:
    """Why kernels for compute capability 9.x/10.x (flash-attn-4's, and quack's that come with
    it) cannot run on `device`, or None; `load` imports them, `package` names them."""
    if device.type != "cuda":
        return f"needs a CUDA GPU (device is {device.type})"
    major, _ = torch.cuda.get_device_capability(device)
    if major not in (9, 10):
        return f"needs compute capability 9.x or 10.x (this GPU is {major}.x)"
    try:
        load()
    except Exception as e:  # noqa: BLE001 - an install problem of any kind means: the fallback
        return f"{package} is not importable ({type(e).__name__}: {e})"
    return None


def fa4_problem(device: torch.device) -> str | None:
    """Why FA4 cannot run here, or None."""
    return kernel_problem(device, fa4_kernels, "flash-attn-4")


def set_attention(transformer, backend: str, device: torch.device) -> tuple[str, str | None]:
    """Install the kernels for spec.model.attention; returns (backend in use, why not the
    requested one). `auto` is fa4 where it runs, else sdpa; `fa4` where it cannot run
    also falls back to sdpa, with the reason."""
    if backend not in BACKENDS:
        raise ValueError(f"spec.model.attention: unknown backend {backend!r}")
    if backend == "sdpa":
        use_kernels(None)
        return "sdpa", None
    problem = fa4_problem(device)
    if problem:
        use_kernels(None)
        return "sdpa", problem
    heads, head_dim = _attention_shape(transformer) or (0, None)
    kernels = checked_kernels(fa4_kernels(), head_dim, device, heads=heads) if head_dim else None
    if kernels is None:
        use_kernels(None)
        return "sdpa", f"flash-attn-4 failed its check against SDPA at head_dim {head_dim} and the padded widths"
    use_kernels(kernels)
    install_processor(transformer, fuse_qkv=True)
    unpacked = "" if kernels.packed else "; self-attention's q|k|v gradients unpacked, the packed ops failed their check"
    return (f"{kernels.name} (head_dim {head_dim}, backward at {kernels.bwd_head_dim or head_dim}; key-padded "
            f"cross-attention on {kernels.name if kernels.key_padding else 'sdpa'}{unpacked})"), None


def _attention_shape(transformer) -> tuple[int, int] | None:
    """(heads, head_dim) of the first plain Attention module, or None."""
    for module in transformer.modules():
        if type(module).__name__ == "Attention" and _plain(module):
            return (module.heads, module.inner_dim // module.heads) if hasattr(module, "inner_dim") else None
    return None


def widths(head_dim: int) -> list[int]:
    """Candidate kernel widths: the head dim itself, then rounded up to 16 and to 32."""
    out = [head_dim]
    for multiple in (16, 32):
        w = -(-head_dim // multiple) * multiple
        if w not in out:
            out.append(w)
    return out


def checked_kernels(kernels: Kernels, head_dim: int, device: torch.device, dtype=torch.bfloat16,
                    heads: int = 2) -> Kernels | None:
    """`kernels` with the backward at the first width whose plain attention matches SDPA
    (output and all three gradients), and key_padding and packed set by whether the key-padded
    case and the packed q|k|v ops match too at that width; None when no width does."""
    import dataclasses

    for width in widths(head_dim):
        candidate = dataclasses.replace(kernels, bwd_head_dim=None if width == head_dim else width, key_padding=True,
                                        packed=True)
        if agrees_with_sdpa(candidate, head_dim, device, dtype, heads=heads):
            return dataclasses.replace(
                candidate, key_padding=agrees_with_sdpa(candidate, head_dim, device, dtype, "key_padded", heads=heads),
                packed=agrees_with_sdpa(candidate, head_dim, device, dtype, "packed", heads=heads))
    return None


def agrees_with_sdpa(kernels: Kernels, head_dim: int, device: torch.device, dtype=torch.bfloat16,
                     case: str = "plain", tol: float = 2e-2, heads: int = 2) -> bool:
    """fwd+bwd of a small random problem against SDPA in float32 (relative L2 errors);
    bf16 rounding gives ~4e-3, a wrong kernel ~1. `case`: plain q, k, v; "key_padded"
    (per-sample key counts, as cross-attention); "packed" (one q|k|v tensor, as fused
    self-attention)."""
    previous, grad_mode = ops.active(), torch.is_grad_enabled()
    use_kernels(kernels)
    try:
        torch.set_grad_enabled(True)  # start-up may run under no_grad
        g = torch.Generator(device=device).manual_seed(0)
        b, h, n = 2, max(heads, 1), 320  # the model's head count: the packed views' strides as in a step
        key_padded = case == "key_padded"
        cases = [(140, torch.tensor([100, 140], device=device, dtype=torch.int32))] if key_padded else [(n, None)]
        for t, seqused in cases:
            q, k, v = (torch.randn(b, s, h, head_dim, device=device, generator=g, dtype=dtype).requires_grad_()
                       for s in (n, t, t))
            go = torch.randn(b, n, h, head_dim, device=device, generator=g, dtype=dtype)
            if case == "packed":
                qkv = torch.cat([x.detach().reshape(b, n, -1) for x in (q, k, v)], -1).requires_grad_()
                out = packed_attention(qkv, h, head_dim ** -0.5)
                got = [out, *torch.autograd.grad(out, qkv, go)[0].view(b, n, 3, h, head_dim).unbind(2)]
            else:
                out = attention(q, k, v, seqused, head_dim ** -0.5)
                got = [out, *torch.autograd.grad(out, (q, k, v), go)]
            qf, kf, vf = (x.detach().float().requires_grad_() for x in (q, k, v))
            mask = None
            if seqused is not None:
                mask = (torch.arange(t, device=device)[None] < seqused[:, None].long())[:, None, None, :]
            ref = F.scaled_dot_product_attention(qf.transpose(1, 2), kf.transpose(1, 2), vf.transpose(1, 2),
                                                 attn_mask=mask, scale=head_dim ** -0.5).transpose(1, 2)
            want = [ref, *torch.autograd.grad(ref, (qf, kf, vf), go.float())]
            for a, r in zip(got, want):
                err = float((a.detach().float() - r.detach()).norm() / r.detach().norm().clamp_min(1e-12))
                if not err < tol:  # also catches NaN
                    return False
        return True
    except Exception:  # noqa: BLE001 - a kernel that cannot run this shape is not usable
        return False
    finally:
        use_kernels(previous)
        torch.set_grad_enabled(grad_mode)


def install_processor(transformer, fuse_qkv: bool = False) -> int:
    """FlashAttnProcessor on every plain Attention module; returns how many."""
    processor, count = FlashAttnProcessor(fuse_qkv), 0
    for module in transformer.modules():
        if type(module).__name__ == "Attention" and _plain(module):
            module.set_processor(processor)
            count += 1
    return count
