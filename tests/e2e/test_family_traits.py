"""The torch-free family traits that `validate` checks against are the model's real ones: the
PixArt Sigma pipeline renders at the sizes validate accepts and fails at the ones it refuses."""
from __future__ import annotations

import pytest

from runner.models.registry import traits
from runner.spec import semantics

pytestmark = pytest.mark.e2e


def validation_errors(family: str, resolutions: str) -> list[str]:
    spec = {"model": {"family": family}, "validation": {"resolutions": resolutions}}
    return list(semantics._resolutions(spec))


def test_pixart_sigma_traits_match_the_pipeline(tiny_model):
    import torch
    from diffusers import PixArtSigmaPipeline

    pipe = PixArtSigmaPipeline.from_pretrained(str(tiny_model), dtype=torch.float32)
    t = traits("pixart_sigma")
    assert t.vae_scale_factor == pipe.vae_scale_factor
    assert t.patch_size == pipe.transformer.config.patch_size
    assert t.latent_channels == pipe.vae.config.latent_channels == pipe.transformer.config.in_channels
    assert pipe.transformer.config.out_channels == 2 * t.latent_channels  # the other half: learned sigma
    assert t.max_tokens == pipe.tokenizer.model_max_length
    assert set(t.components) | {"model_index.json"} == {p.name for p in tiny_model.iterdir() if not p.name.startswith(".")}

    embeds = torch.zeros(1, 4, pipe.text_encoder.config.d_model)
    mask = torch.ones(1, 4, dtype=torch.long)

    def render(side: int):
        return pipe(prompt=None, prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt=None,
                    negative_prompt_embeds=embeds, negative_prompt_attention_mask=mask, width=side, height=side,
                    num_inference_steps=1, use_resolution_binning=False, output_type="latent").images

    # 144 = 9 x 16: validate accepts it and the pipeline renders it.
    assert validation_errors("pixart_sigma", "144x144") == []
    assert render(144).shape[-2:] == (18, 18)
    # 136 = 17 x 8: a whole latent grid, but not a whole grid of 2x2 patches. validate refuses it;
    # the pipeline gets a 16x16 prediction for a 17x17 latent and fails at the first step.
    assert "136x136 is not a multiple of 16" in validation_errors("pixart_sigma", "136x136")[0][1]
    with pytest.raises(RuntimeError, match="size of tensor"):
        render(136)
