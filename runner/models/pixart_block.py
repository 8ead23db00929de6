"""PixArt's transformer block with a bfloat16 residual stream (spec.training.residualStream).

diffusers' BasicTransformerBlock (norm_type "ada_norm_single") adds the float32
`scale_shift_table` to the timestep embedding, so under bf16 autocast the gates, and with
them the residual stream between and inside the 28 blocks, are float32. The compiled norms,
modulation and gated residual adds then move float32 activations through memory.
`bfloat16_residual_forward` is the same block, line for line, with the modulation and the
residual stream in the autocast dtype: what the block computes in bf16 inference, and what
FSDP's `param_dtype=bfloat16` (torchtitan's default) gives in training. Master weights,
gradients and the optimizer stay float32; the norms still compute in float32 (CUDA autocast).

Only blocks shaped like PixArt's are touched (ada_norm_single, self- and cross-attention, no
dropout); anything else keeps diffusers' forward. The state dict is unchanged.

`settle_block_input` serves torch.compile: diffusers' PatchEmbed hands the first block a
transposed view in the conv's dtype, while every later block gets a contiguous tensor in the
residual stream's dtype, so compiled blocks needed two graphs per shape.
"""
from __future__ import annotations

import types

import torch


def bfloat16_residual_forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None,
                              encoder_attention_mask=None, timestep=None, cross_attention_kwargs=None,
                              class_labels=None, added_cond_kwargs=None):
    dtype = torch.get_autocast_dtype(hidden_states.device.type) \
        if torch.is_autocast_enabled(hidden_states.device.type) else hidden_states.dtype
    batch = hidden_states.shape[0]
    table = (self.scale_shift_table[None] + timestep.reshape(batch, 6, -1)).to(dtype)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = table.chunk(6, dim=1)
    hidden_states = hidden_states.to(dtype)

    norm_hidden_states = self.norm1(hidden_states) * (1 + scale_msa) + shift_msa
    attn_output = self.attn1(norm_hidden_states, attention_mask=attention_mask)
    hidden_states = (gate_msa * attn_output).to(dtype) + hidden_states

    # PixArt applies no norm before cross-attention (diffusers: "norm2 isn't applied here")
    attn_output = self.attn2(hidden_states, encoder_hidden_states=encoder_hidden_states,
                             attention_mask=encoder_attention_mask)
    hidden_states = attn_output.to(dtype) + hidden_states

    norm_hidden_states = self.norm2(hidden_states) * (1 + scale_mlp) + shift_mlp
    ff_output = self.ff(norm_hidden_states)
    return (gate_mlp * ff_output).to(dtype) + hidden_states


def _dropout_free(module) -> bool:
    return all(m.p == 0 for m in module.modules() if isinstance(m, torch.nn.Dropout))


def fits(block) -> bool:
    """A block this forward reproduces exactly."""
    return (getattr(block, "norm_type", None) == "ada_norm_single" and getattr(block, "attn2", None) is not None
            and getattr(block, "pos_embed", None) is None and not getattr(block, "only_cross_attention", True)
            and getattr(block, "_chunk_size", None) is None and getattr(block, "fuser", None) is None
            and _dropout_free(block))


def use_bfloat16_residual(transformer) -> int:
    """Give every PixArt-shaped block of `transformer` the bf16-residual forward, before the
    blocks are compiled; returns how many blocks."""
    count = 0
    for block in getattr(transformer, "transformer_blocks", []):
        if fits(block):
            block.forward = types.MethodType(bfloat16_residual_forward, block)
            count += 1
    return count


def _uses_bf16_residual(block) -> bool:
    return getattr(vars(block).get("forward"), "__func__", None) is bfloat16_residual_forward


def settle_block_input(transformer) -> bool:
    """Give the first block its input as every later block gets it, contiguous and in the
    residual stream's dtype, so that compiled blocks share one graph per shape instead of two.
    The values do not change: a copy, and either the cast bfloat16_residual_forward makes first
    anyway or a widening to float32 that CUDA autocast makes too (its layer_norm computes in
    float32; CPU autocast's does not). Returns False where the model has no PixArt-shaped
    blocks after a `pos_embed`."""
    blocks = getattr(transformer, "transformer_blocks", None)
    patch = getattr(transformer, "pos_embed", None)
    if not blocks or patch is None or not hasattr(blocks[0], "scale_shift_table"):
        return False
    if getattr(patch, "_trainingjob_settled", False):
        return True
    bf16_stream, table_dtype = _uses_bf16_residual(blocks[0]), blocks[0].scale_shift_table.dtype

    def settle(module, args, out):
        device = out.device.type
        if bf16_stream:  # the dtype bfloat16_residual_forward casts to
            dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else out.dtype
        else:  # diffusers' gated residual adds promote to the table's dtype
            dtype = torch.promote_types(table_dtype, out.dtype)
        return out.to(dtype).contiguous()

    patch.register_forward_hook(settle)
    patch._trainingjob_settled = True
    return True
