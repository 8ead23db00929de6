"""PixArt's feed-forward with the GELU inside its GEMMs (spec.model.feedForward).

diffusers' FeedForward is Linear(1152 -> 4608) -> GELU(tanh) -> Linear(4608 -> 1152). Compiled,
that is two cuBLAS GEMMs with separate elementwise kernels around the 4x-wide hidden activation:
the forward writes the pre-activation, reads it back and writes the GELU output (and keeps both
for the backward); the backward writes the hidden gradient, then reads it and the pre-activation
to write their product. Each such pass is 302 MB at 1024 px, batch 8. quack's `mlp_func` (the
GEMM library flash-attn-4 is built on) applies the GELU in the up-projection's epilogue, and
GELU's derivative in the epilogue of the down-projection's input-gradient GEMM, where it also
recomputes the GELU output for the weight gradient, so that output is never stored. On an
H200 at 1024 px that took a training step from 396.5 to 386.9 ms and its peak memory from
50.7 to 42.9 GiB (bench/RESULTS.md).

Numerics: the GELU is applied to the float32 accumulator rather than to the bfloat16-rounded
pre-activation; against a float32 reference the outputs and every gradient were as close as
diffusers' own bf16 path or closer (bench/mlp.py). `set_feed_forward` checks the kernels on a
small problem against diffusers' forward before using them, as attention does.

The module is not replaced, only its forward, so parameters, state dicts and checkpoints stay
diffusers'. Inputs the kernels cannot take (CPU, float32 as in validation) go through
diffusers' forward with the same weights.
"""
from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers.models.activations import GELU
from diffusers.models.attention import FeedForward

CHOICES = ("auto", "diffusers", "fused")


@dataclass(frozen=True)
class MLPKernel:
    """mlp(x, w1, w2, bias1, bias2) -> down(gelu_tanh(up(x))), all in one dtype, x [N, C]
    contiguous; `accepts(x, dtype)` says whether it takes this input in the compute dtype."""

    name: str
    mlp: Callable
    accepts: Callable[[torch.Tensor, torch.dtype], bool]


_ACTIVE: MLPKernel | None = None


def use_kernel(kernel: MLPKernel | None) -> None:
    """Select the implementation behind the fused forward (tests swap in `reference_kernel`)."""
    global _ACTIVE
    _ACTIVE = kernel


def quack_kernel() -> MLPKernel:
    from quack.mlp import mlp_func  # comes with flash-attn-4

    def mlp(x, w1, w2, bias1, bias2):
        # tuned=False: quack's heuristic tile choice. Autotuning compiles every candidate
        # kernel per shape (~100 s on an H200, again for each aspect bucket) and timed the same.
        return mlp_func(x, w1, w2, activation="gelu_tanh_approx", bias1=bias1, bias2=bias2, tuned=False)
    # bf16 only: the start-up check runs in bf16, and fp16 training would need its own check
    return MLPKernel("quack", mlp, lambda x, dtype: x.is_cuda and dtype == torch.bfloat16)


def reference_kernel() -> MLPKernel:
    """The same function in plain PyTorch, for tests of everything around the kernels."""
    def mlp(x, w1, w2, bias1, bias2):
        return F.linear(F.gelu(F.linear(x, w1, bias1), approximate="tanh"), w2, bias2)
    return MLPKernel("reference", mlp, lambda x, dtype: True)


def fusable(ff) -> bool:
    """A FeedForward the kernels compute exactly: Linear -> tanh GELU -> no-op dropout -> Linear,
    with widths the GEMMs take (multiples of 8)."""
    if type(ff) is not FeedForward or len(ff.net) != 3:
        return False
    act, drop, down = ff.net
    return (type(act) is GELU and act.approximate == "tanh" and type(act.proj) is torch.nn.Linear
            and type(drop) is torch.nn.Dropout and drop.p == 0 and type(down) is torch.nn.Linear
            and all(n % 8 == 0 for n in (act.proj.in_features, act.proj.out_features, down.out_features)))


def fused_forward(self, hidden_states, *args, **kwargs):
    device = hidden_states.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden_states.dtype
    kernel = _ACTIVE
    if kernel is None or not kernel.accepts(hidden_states, dtype):
        return FeedForward.forward(self, hidden_states, *args, **kwargs)
    up, down = self.net[0].proj, self.net[2]

    def cast(t):  # what autocast does for F.linear; autograd takes the gradients back to float32
        return None if t is None else t.to(dtype)
    with torch.autocast(device, enabled=False):
        x = cast(hidden_states).reshape(-1, hidden_states.shape[-1]).contiguous()
        out = kernel.mlp(x, cast(up.weight), cast(down.weight), cast(up.bias), cast(down.bias))
    return out.reshape(*hidden_states.shape[:-1], out.shape[-1])


def install(transformer) -> int:
    """Give every fusable FeedForward of `transformer` the fused forward (before compiling);
    returns how many."""
    count = 0
    for module in transformer.modules():
        if fusable(module):
            module.forward = types.MethodType(fused_forward, module)
            count += 1
    return count


def problem(device: torch.device) -> str | None:
    """Why the quack kernels cannot run here, or None."""
    from runner.models.attention import kernel_problem

    return kernel_problem(device, quack_kernel, "quack-kernels (a flash-attn-4 dependency)")


CHECK_TOLERANCE = 2e-2  # bf16 rounding, relative to each tensor's largest value


def disagreement(kernel: MLPKernel, ff: FeedForward, device: torch.device, tokens: int = 256) -> str | None:
    """Run a copy of `ff` both ways on random input under bf16 autocast; what differs beyond
    bf16's rounding (output, input or parameter gradients), or None."""
    import copy

    ref = copy.deepcopy(ff).to(device).float()
    fused = copy.deepcopy(ref)
    fused.forward = types.MethodType(fused_forward, fused)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(2, tokens // 2, ref.net[0].proj.in_features, device=device, generator=g)
    dy = torch.randn(2, tokens // 2, ref.net[2].out_features, device=device, generator=g)
    results = []
    previous = _ACTIVE
    use_kernel(kernel)
    try:
        for module in (ref, fused):
            xi = x.clone().requires_grad_(True)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                y = module(xi)
            y.backward(dy)
            results.append([y.detach().float(), xi.grad] + [p.grad for p in module.parameters()])
    except Exception as e:  # noqa: BLE001 - a kernel that fails in any way is not used
        return f"raised {type(e).__name__}: {str(e)[:300]}"
    finally:
        use_kernel(previous)
    names = ["output", "input gradient"] + [f"{n} gradient" for n, _ in ref.named_parameters()]
    for name, a, b in zip(names, *results):
        if b is None or a.shape != b.shape or not torch.isfinite(b).all():
            return f"{name}: missing or not finite"
        error = float((a - b).abs().max() / a.abs().max().clamp_min(1e-6))
        if error > CHECK_TOLERANCE:
            return f"{name} differs by {error:.3g} (relative to its largest value; allowed {CHECK_TOLERANCE})"
    return None


def set_feed_forward(transformer, choice: str, device: torch.device,
                     kernel: MLPKernel | None = None) -> tuple[str, str | None]:
    """Install the feed-forward for spec.model.feedForward; returns (what is used, why not the
    requested one). `auto` and `fused` take the fused kernels (quack's, or `kernel`) where they
    run and agree with diffusers' forward on a small problem, and diffusers' forward otherwise,
    with the reason."""
    if choice not in CHOICES:
        raise ValueError(f"spec.model.feedForward: unknown choice {choice!r}")
    use_kernel(None)
    if choice == "diffusers":
        return "diffusers", None
    first = next((m for m in transformer.modules() if fusable(m)), None)
    if first is None:
        return "diffusers", "no feed-forward of the tanh-GELU shape the kernels compute"
    if kernel is None:
        if why := problem(device):
            return "diffusers", why
        kernel = quack_kernel()
    if why := disagreement(kernel, first, device):
        return "diffusers", f"{kernel.name} kernels disagree with diffusers' feed-forward: {why}"
    use_kernel(kernel)
    return f"fused GELU GEMMs ({kernel.name}) in {install(transformer)} blocks", None
