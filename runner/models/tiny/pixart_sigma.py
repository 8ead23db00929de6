"""The builtin tiny PixArt Sigma (``builtin:tiny-pixart-sigma``): a diffusers
``PixArtSigmaPipeline`` folder shaped like ``PixArt-alpha/PixArt-Sigma-XL-2-1024-MS`` (T5
encoder + SDXL-style VAE with x8 downscale + ``PixArtTransformer2DModel`` with learned sigma +
DPM-Solver++ scheduler), about 1 MB on disk, random weights.

Gotchas (diffusers 0.42.1 / transformers 5.24):

* ``PixArtSigmaPipeline.__call__`` defaults to ``use_resolution_binning=True``
  which only supports ``transformer.config.sample_size`` in {32, 64, 128, 256}
  (else ``ValueError: Invalid sample size``) and snaps height/width to the
  aspect-ratio bins of that size (32 -> 256 px bins).  Pass
  ``use_resolution_binning=False`` to get exactly the requested size (height
  and width must then be multiples of 16 = vae x8 * patch 2).
* ``clean_caption=True`` (the pipeline default) needs ``bs4`` and ``ftfy``;
  without them it only logs a warning.  Pass ``clean_caption=False``.
* The scheduler is saved with ``variance_type=None`` like the real
  checkpoint.  With ``variance_type="learned_range"`` DPM-Solver slices the
  model output along channels itself and the pipeline (which already drops
  the learned-sigma half of the 8 output channels) crashes.
  ``DDPMScheduler.from_pretrained(path, subfolder="scheduler")`` works on the
  saved config (cross-class ``from_config``); its ``variance_type`` is then
  ``None``, which ``DDPMScheduler`` treats like ``"fixed_small"``.
* Validating from precomputed embeddings (``text_encoder=None,
  tokenizer=None`` passed to ``from_pretrained``) requires passing
  ``prompt=None, negative_prompt=None`` explicitly: ``negative_prompt``
  defaults to ``""`` and ``check_inputs`` raises ``ValueError: Cannot forward
  both `negative_prompt`:  and `negative_prompt_embeds`: ...``.
"""
from __future__ import annotations

from pathlib import Path

from runner.models.tiny.build import build_once, seeded
from runner.models.tiny.tokenizers import t5_tokenizer


def _pixart_components(seed: int) -> dict:
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        PixArtTransformer2DModel,
    )
    from transformers import T5Config, T5EncoderModel

    tokenizer = t5_tokenizer()

    d_model = 32
    # Each component is seeded separately so that e.g. a vocab-size change does
    # not shift the transformer's weights.
    with seeded(seed):
        text_encoder = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer),
                d_model=d_model,
                d_kv=16,
                d_ff=64,
                num_layers=2,
                num_heads=2,
                relative_attention_num_buckets=32,
                relative_attention_max_distance=128,
                dropout_rate=0.0,
                layer_norm_epsilon=1e-6,
                feed_forward_proj="gated-gelu",  # T5 v1.1 / T5-XXL
                tie_word_embeddings=False,
                is_encoder_decoder=False,
                use_cache=False,
                pad_token_id=0,
                eos_token_id=1,
                decoder_start_token_id=0,
            )
        ).eval()

    with seeded(seed + 1):
        # SDXL-VAE shaped (PixArt Sigma uses it): 4 levels -> x8 downscale.
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=1,
            act_fn="silu",
            latent_channels=4,
            norm_num_groups=4,  # must divide every block_out_channels entry
            sample_size=128,
            scaling_factor=0.13025,
            force_upcast=True,
        ).eval()

    heads, head_dim = 2, 16
    with seeded(seed + 2):
        transformer = PixArtTransformer2DModel(
            num_attention_heads=heads,
            attention_head_dim=head_dim,
            in_channels=4,
            out_channels=8,  # learned sigma
            num_layers=2,
            dropout=0.0,
            norm_num_groups=32,
            cross_attention_dim=heads * head_dim,
            attention_bias=True,
            sample_size=32,  # latent size; 32/64/128/256 for resolution binning
            patch_size=2,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            upcast_attention=False,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
            interpolation_scale=2,
            use_additional_conditions=False,
            caption_channels=d_model,
            attention_type="default",
        ).eval()

    # PixArt-Sigma-XL-2-1024-MS scheduler config.
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="epsilon",
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
        timestep_spacing="linspace",
        steps_offset=0,
        variance_type=None,
    )
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "vae": vae,
        "transformer": transformer,
        "scheduler": scheduler,
    }


def build_tiny_pixart_sigma(dest: Path, seed: int = 0) -> Path:
    """Build (once) a tiny PixArt-Sigma-shaped diffusers pipeline at ``dest``.

    Loads with ``PixArtSigmaPipeline.from_pretrained(dest)`` and per component
    (``subfolder=`` ``transformer``/``vae``/``text_encoder``/``tokenizer``/
    ``scheduler``).  Shapes: T5 encoder d_model 32 (= ``caption_channels``),
    300-token tokenizer; VAE with x8 downscale and 4 latent channels; 2-layer
    transformer with 2x16 heads, patch 2, 8 output channels (learned sigma),
    ``sample_size`` 32 (256 px default resolution).  See the module docstring
    for the pipeline call arguments it needs (``use_resolution_binning=False``,
    ``clean_caption=False``).
    """

    def build(tmp: Path) -> None:
        from diffusers import PixArtSigmaPipeline

        pipe = PixArtSigmaPipeline(**_pixart_components(seed))
        pipe.save_pretrained(tmp, safe_serialization=True)

    return build_once(Path(dest), kind="tiny-pixart-sigma", seed=seed, required="model_index.json", build=build)
