"""FP8 linears for training (spec.training.fp8), through torchao's float8 training.

The transformer blocks' large GEMMs (M = batch x 4096 tokens at 1024 px) run in FP8 with
per-tensor scales; master weights, the optimizer and everything outside the blocks stay as
they are. Cross-attention's key/value projections see only the text tokens (M = batch x
<=300), too small for the casts to pay off, so they stay in bf16. torchao's Float8Linear
subclasses nn.Linear and keeps the weight's name and dtype, so checkpoints and the
exported pipeline are unchanged.
"""
from __future__ import annotations

import torch

MODES = ("off", "auto", "on")


def fp8_problem(device: torch.device) -> str | None:
    """Why FP8 training cannot run here, or None."""
    if device.type != "cuda":
        return f"needs a CUDA GPU (device is {device.type})"
    if torch.cuda.get_device_capability(device) < (8, 9):
        return "needs compute capability 8.9 or newer (Ada, Hopper, Blackwell)"
    try:
        import torchao.float8  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any install problem means: stay in bf16
        return f"torchao is not importable ({type(e).__name__}: {e})"
    return None


def fp8_filter(module: torch.nn.Module, fqn: str) -> bool:
    """Linears inside the transformer blocks whose dims the FP8 GEMM takes (multiples of 16),
    except the cross-attention key/value projections of the short text sequence."""
    if not isinstance(module, torch.nn.Linear) or "transformer_blocks." not in fqn:
        return False
    if fqn.endswith(("attn2.to_k", "attn2.to_v")):
        return False
    return module.in_features % 16 == 0 and module.out_features % 16 == 0


def apply_fp8(model: torch.nn.Module, device: torch.device, mode: str) -> str:
    """Convert the block Linears to FP8 training where `mode` asks for it and the hardware
    allows; returns what was done (for the log). `on` where FP8 cannot run falls back to
    bf16 with the reason, like `auto`."""
    if mode not in MODES:
        raise ValueError(f"spec.training.fp8: unknown mode {mode!r}")
    if mode == "off":
        return "off"
    problem = fp8_problem(device)
    if problem:
        return f"off ({problem})"
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    before = sum(1 for m in model.modules() if isinstance(m, torch.nn.Linear))
    convert_to_float8_training(model, config=Float8LinearConfig.from_recipe_name("tensorwise"),
                               module_filter_fn=fp8_filter)
    converted = sum(1 for m in model.modules() if type(m).__name__ == "Float8Linear")
    return f"on ({converted} of {before} Linears, tensorwise scales)"
