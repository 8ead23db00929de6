"""Corrections for flash-attn-4's SM90 (Hopper) backward, applied without editing its files.

1. dQ at head dims that round to a 16- but not a 32-multiple (72 and 80 become an 80-wide
   tile). The backward kernel (flash_bwd_sm90.py) rounds head_dim to a multiple of 16 and
   stores the float32 dQ accumulator in 64 x 80 tiles; `_flash_attn_bwd` hands the
   postprocess, which reads that accumulator back into bf16, `hdim_multiple_of=32`, so it
   reads 64 x 96 tiles: dQ comes out scrambled (relative error ~1.2 at head_dim 72 on an H200,
   4.0.0b36). The wrapper passes the kernel's own rounding to the postprocess.
2. Per-sample key counts (`seqused_k`): the kernel writes dK and dV only for the keys each
   sample uses and leaves the other rows of `torch.empty_like` buffers as they were; their true
   gradient is 0, so `zeroed_key_grads` hands the backward zeroed buffers.

Both only take effect where the bug can occur (SM90, those widths); a release that passes the
right rounding itself makes the wrapper a no-op. `runner.models.attention` still checks the
kernels against SDPA before use, so a release where this is wrong falls back, it is not used.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch

_POSTPROCESS_PARAMS = ("accum", "output", "scale", "cu_seqlens", "seqused", "arch", "dtype", "hdim")


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def postprocess_multiple(arch: int, hdim: int, multiple: int) -> int:
    """The rounding the SM90 backward kernel really used for this head dim, where the caller's
    `multiple` (32) disagrees with it; otherwise `multiple` unchanged."""
    if arch // 10 == 9 and multiple == 32 and round_up(hdim, 16) != round_up(hdim, 32):
        return 16
    return multiple


def install_postprocess_fix(interface: Any) -> bool:
    """Wrap `interface._bwd_postprocess_convert` (once); False when its signature is not the one
    this fix was written for (4.0.0b36), in which case nothing is changed."""
    original = getattr(interface, "_bwd_postprocess_convert", None)
    if original is None:
        return False
    if getattr(original, "_trainingjob_sm90_fix", False):
        return True
    params = inspect.signature(original).parameters
    if tuple(params)[: len(_POSTPROCESS_PARAMS)] != _POSTPROCESS_PARAMS or "hdim_multiple_of" not in params:
        return False

    def postprocess(accum, output, scale, cu_seqlens, seqused, arch, dtype, hdim, *args, **kwargs):
        kwargs["hdim_multiple_of"] = postprocess_multiple(arch, hdim, kwargs.get("hdim_multiple_of", 32))
        return original(accum, output, scale, cu_seqlens, seqused, arch, dtype, hdim, *args, **kwargs)

    # The original finds its compiled kernels as `_bwd_postprocess_convert.compile_cache`, a
    # module global lookup that now finds this wrapper.
    postprocess.compile_cache = original.compile_cache
    postprocess.__wrapped__ = original
    postprocess._trainingjob_sm90_fix = True
    interface._bwd_postprocess_convert = postprocess
    return True


def zeroed_key_grads(k: torch.Tensor, v: torch.Tensor, seqused_k: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """dk/dv buffers for `_flash_attn_bwd`: zeroed when only some keys are used, else none (it allocates)."""
    if seqused_k is None:
        return {}
    return {"dk": torch.zeros_like(k), "dv": torch.zeros_like(v)}
