"""Build a PixArt-Sigma-XL-2-1024-MS-architecture pipeline with random weights (no download).

Transformer and VAE have the real architectures (610.9M-parameter DiT, SDXL VAE). The T5
encoder keeps the real width (d_model 4096 = the transformer's caption_channels) but only
2 layers, with the project's small offline tokenizer: training throughput depends on the
transformer, and the cache stage runs T5 once per caption. `--text-layers 24` gives the
real-size T5-XXL encoder (4.76B parameters; built on the GPU in bf16 when there is one), for
timing the cache stage's text encoding as users will see it. Usage:
    python bench/make_random_pixart.py OUT_DIR [--text-layers N]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

XL_TRANSFORMER = dict(
    num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28, dropout=0.0,
    norm_num_groups=32, cross_attention_dim=1152, attention_bias=True, sample_size=128, patch_size=2,
    activation_fn="gelu-approximate", num_embeds_ada_norm=1000, upcast_attention=False, norm_type="ada_norm_single",
    norm_elementwise_affine=False, norm_eps=1e-6, interpolation_scale=2, use_additional_conditions=False,
    caption_channels=4096, attention_type="default",
)
SDXL_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=1024, scaling_factor=0.13025, force_upcast=True,
)


def main(out: Path, text_layers: int = 2) -> None:
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from runner.models.tiny.tokenizers import t5_tokenizer

    if (out / "model_index.json").exists():
        print(f"{out} exists")
        return
    t0 = time.time()
    torch.manual_seed(0)
    tokenizer = t5_tokenizer()
    t5_config = T5Config(vocab_size=len(tokenizer), d_model=4096, d_kv=64, d_ff=10240, num_layers=text_layers,
                         num_heads=64, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                         use_cache=False, pad_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    big = text_layers > 2 and torch.cuda.is_available()
    default_dtype = torch.get_default_dtype()
    if big:  # 4.76B parameters initialise in seconds on a GPU, minutes on CPU cores
        torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda" if big else "cpu"):
            text_encoder = T5EncoderModel(t5_config)
    finally:
        torch.set_default_dtype(default_dtype)
    vae = AutoencoderKL(**SDXL_VAE)
    transformer = PixArtTransformer2DModel(**XL_TRANSFORMER)
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                                            beta_schedule="linear", prediction_type="epsilon", variance_type=None)
    pipe = PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                               scheduler=scheduler)
    pipe.save_pretrained(out)
    n = sum(p.numel() for p in transformer.parameters())
    print(f"built {out}: transformer {n / 1e6:.1f}M params in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--text-layers", type=int, default=2)
    cli = parser.parse_args()
    main(cli.out, cli.text_layers)
