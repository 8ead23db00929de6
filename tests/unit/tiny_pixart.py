"""A tiny PixArt-shaped transformer and its inputs, for tests of the training fast paths."""
from __future__ import annotations

import torch
from diffusers import PixArtTransformer2DModel


def model(dropout: float = 0.0) -> PixArtTransformer2DModel:
    """Two blocks of width 16 in train mode, the adaLN table randomised so the gates matter."""
    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=16, sample_size=8, patch_size=2, norm_type="ada_norm_single", caption_channels=12,
        norm_elementwise_affine=False, norm_eps=1e-6, num_embeds_ada_norm=1000, use_additional_conditions=False,
        activation_fn="gelu-approximate", attention_bias=True, interpolation_scale=1, dropout=dropout)
    for block in transformer.transformer_blocks:  # init leaves the table near 0: make the gates matter
        torch.nn.init.normal_(block.scale_shift_table, std=0.5)
    return transformer.train()


def inputs() -> dict:
    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(2, 4, 8, 8, generator=g),
                encoder_hidden_states=torch.randn(2, 6, 12, generator=g),
                encoder_attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]]),
                timestep=torch.tensor([10, 700]), added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                return_dict=False)
