"""PixArt Sigma, the first model family: a T5 text encoder, the SDXL VAE and a DiT
(PixArtTransformer2DModel) trained on epsilon with a learned-sigma half.

Everything goes through diffusers/transformers `from_pretrained`, the same for
`PixArt-alpha/PixArt-Sigma-XL-2-1024-MS` on an H100 and the tiny builtin on a CPU. The stages
reach this module only through runner.models.registry, as a runner.models.family.ModelFamily.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from runner.models import pipeline
from runner.models.registry import traits

TRAITS = traits("pixart_sigma")


@dataclass
class Objective:
    """Epsilon (or v) prediction on the first 4 output channels; the learned-sigma half is
    left to the pipeline, which splits it off at inference, as PixArt was trained."""

    scheduler: object
    use_additional_conditions: bool

    def __call__(self, model, latents: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        sched = self.scheduler
        b = latents.shape[0]
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        timesteps = torch.randint(0, sched.config.num_train_timesteps, (b,), device=latents.device, generator=generator)
        noisy = sched.add_noise(latents, noise, timesteps)
        added = {"resolution": None, "aspect_ratio": None}
        if self.use_additional_conditions:
            h, w = latents.shape[-2] * TRAITS.vae_scale_factor, latents.shape[-1] * TRAITS.vae_scale_factor
            added = {"resolution": torch.tensor([[h, w]], device=latents.device, dtype=latents.dtype).repeat(b, 1),
                     "aspect_ratio": torch.tensor([[h / w]], device=latents.device, dtype=latents.dtype).repeat(b, 1)}
        pred = model(noisy, encoder_hidden_states=embeds, encoder_attention_mask=mask, timestep=timesteps,
                     added_cond_kwargs=added, return_dict=False)[0]
        if pred.shape[1] > TRAITS.latent_channels:
            pred = pred[:, : TRAITS.latent_channels]
        if sched.config.prediction_type == "v_prediction":
            target = sched.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        return F.mse_loss(pred.float(), target.float())


class PixArtSigma:
    """runner.models.family.ModelFamily for PixArt Sigma."""

    traits = TRAITS

    # ---- components

    def resolve(self, ref: str, revision: str, cache_dir: Path, **retry) -> Path:
        return pipeline.resolve_model_dir(ref, revision, cache_dir, TRAITS.components, **retry)

    def load_text_encoder(self, model_dir: Path, dtype: str, device):
        """(tokenizer, T5 encoder)."""
        from transformers import AutoTokenizer, T5EncoderModel

        tokenizer = AutoTokenizer.from_pretrained(model_dir, subfolder="tokenizer")
        encoder = T5EncoderModel.from_pretrained(model_dir, subfolder="text_encoder", dtype=pipeline.torch_dtype(dtype))
        return tokenizer, encoder.to(device).eval().requires_grad_(False)

    def load_vae(self, model_dir: Path, dtype: str, device, compile: bool = False):
        """With `compile` on CUDA the encoder is compiled and channels-last. Both together:
        eager channels-last is slower than the default layout (GroupNorm falls to a generic
        kernel), compiled channels-last is 1.7x faster (H200, 1024 px, bf16)."""
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae", dtype=pipeline.torch_dtype(dtype))
        vae = vae.to(device).eval().requires_grad_(False)
        if compile and torch.device(device).type == "cuda":
            torch.backends.cudnn.benchmark = True  # one conv algorithm search per bucket shape
            vae.to(memory_format=torch.channels_last)
            vae.encoder.compile(dynamic=None)  # static first shape; later buckets share one dynamic graph
        return vae

    def load_transformer(self, model_dir: Path, *, bit_fit: bool, gradient_checkpointing: bool):
        from diffusers import PixArtTransformer2DModel

        model = PixArtTransformer2DModel.from_pretrained(model_dir, subfolder="transformer", dtype=torch.float32)
        if gradient_checkpointing:
            model.enable_gradient_checkpointing()
        if bit_fit:
            for name, p in model.named_parameters():
                p.requires_grad_(name.endswith(".bias"))
        model.train()
        return model

    def set_attention(self, transformer, backend: str, device) -> tuple[str, str | None]:
        """spec.model.attention: FA4 kernels where they run and check out, else SDPA
        (runner/models/attention.py)."""
        from runner.models.attention import set_attention

        return set_attention(transformer, backend, device)

    def set_feed_forward(self, transformer, choice: str, device) -> tuple[str, str | None]:
        """spec.model.feedForward: the GELU in quack's GEMM epilogues where they run and check
        out, else diffusers' modules (runner/models/feedforward.py)."""
        from runner.models.feedforward import set_feed_forward

        return set_feed_forward(transformer, choice, device)

    def bf16_residual(self, transformer) -> int:
        """PixArt's blocks with the modulation and residual stream in the autocast dtype
        (runner/models/pixart_block.py); the state dict is unchanged."""
        from runner.models.pixart_block import use_bfloat16_residual

        return use_bfloat16_residual(transformer)

    def compile(self, transformer, dynamic: bool = True) -> int:
        """torch.compile each transformer block in place (state-dict keys stay the same, so
        checkpoints and exports are unaffected). Per block rather than whole-model: same speed,
        a fraction of the compile time, since all 28 blocks share one compiled graph.

        The first bucket compiles static shapes. With `dynamic`, the second bucket's shape makes
        torch recompile once with a symbolic sequence length, and that graph serves every later
        bucket, so compile time is bounded by two compiles however many buckets there are.
        Without it every bucket is its own static graph, so the recompile limit is raised from 8
        to 64 (past it torch would silently fall back to eager). diffusers hands the first block
        a transposed view in another dtype than the later blocks get, which took two graphs per
        shape; pixart_block.settle_block_input makes its input look like theirs: one graph."""
        import torch._dynamo

        from runner.models.pixart_block import settle_block_input

        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        torch._dynamo.config.automatic_dynamic_shapes = dynamic
        settle_block_input(transformer)
        for block in transformer.transformer_blocks:
            block.compile(dynamic=None if dynamic else False)
        return len(transformer.transformer_blocks)

    # ---- text

    def token_counts(self, text_encoder, captions: Sequence[str]) -> list[int]:
        # verbose=False: no "sequence longer than the maximum" warning per long caption.
        tokenizer, _ = text_encoder
        return [len(ids) for ids in tokenizer(list(captions), truncation=False, verbose=False).input_ids]

    @torch.no_grad()
    def encode_text(self, text_encoder, captions: Sequence[str], max_tokens: int) -> list[torch.Tensor]:
        """T5 embeddings trimmed to each caption's real length ([L_i, D] on the CPU).

        Trimming cuts the cache ~2.5x at PixArt's 300 tokens; the loader pads back with a mask,
        which is exactly what the transformer sees (masked positions do not attend)."""
        tokenizer, encoder = text_encoder
        device = next(encoder.parameters()).device
        # Padded to the batch's longest caption, not to max_tokens: padded keys are masked, so the
        # real tokens' embeddings are the same, and length-sorted batches of ~120-token captions
        # encode ~2.8x faster than at 300 (measured with the real-size T5-XXL on an H200).
        tokens = tokenizer(list(captions), max_length=max_tokens, padding="longest", truncation=True,
                           add_special_tokens=True, return_tensors="pt")
        mask = tokens.attention_mask.to(device)
        hidden = encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
        lengths = mask.sum(dim=1).tolist()
        return [hidden[i, : max(1, int(n))].to("cpu").contiguous() for i, n in enumerate(lengths)]

    def pad_text(self, embeds: Sequence[torch.Tensor], multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack trimmed [L_i, D] embeddings into [B, L, D] plus a [B, L] attention mask, with L
        the longest length rounded up to `multiple`."""
        longest = max(e.shape[0] for e in embeds)
        length = -(-longest // multiple) * multiple
        out = embeds[0].new_zeros((len(embeds), length, embeds[0].shape[1]))
        mask = torch.zeros((len(embeds), length), dtype=torch.long)
        for i, e in enumerate(embeds):
            out[i, : e.shape[0]] = e
            mask[i, : e.shape[0]] = 1
        return out, mask

    # ---- images

    def image_to_tensor(self, image) -> torch.Tensor:
        """PIL image -> [3, H, W] uint8 RGB (encode_images normalises it on the device: a quarter
        of float32's bytes to decode, pin and copy)."""
        planar = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1))
        return torch.from_numpy(planar)

    @torch.no_grad()
    def encode_images(self, vae, pixels: torch.Tensor, seeds: Sequence[int] | None = None) -> torch.Tensor:
        """[B, 3, H, W] uint8 (or float in [-1, 1]) -> scaled latents [B, 4, H/8, W/8] (float32),
        sampled from the VAE's posterior with per-image noise seeds when given (reproducible
        cache entries)."""
        param = next(vae.parameters())
        # The noise is drawn on the host (the same numbers on any device) before the encoder is
        # queued, and sent from pinned memory: a copy from pageable memory would wait for the GPU.
        factor = TRAITS.vae_scale_factor
        shape = (TRAITS.latent_channels, pixels.shape[-2] // factor, pixels.shape[-1] // factor)
        if seeds is None:
            noise = torch.randn((pixels.shape[0], *shape), dtype=torch.float32)
        else:
            noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s), dtype=torch.float32)
                                 for s in seeds])
        if param.is_cuda:
            noise = noise.pin_memory()
        noise = noise.to(param.device, non_blocking=True)
        pixels = pixels.to(param.device, non_blocking=True)
        if pixels.dtype == torch.uint8:  # the same float32 arithmetic as on the host, then the VAE's dtype
            pixels = pixels.float() / 127.5 - 1.0
        pixels = pixels.to(param.dtype)
        if param.dim() == 4 and param.is_contiguous(memory_format=torch.channels_last):
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        dist = vae.encode(pixels).latent_dist
        sample = dist.mean.float() + dist.std.float() * noise
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (sample - shift) * vae.config.scaling_factor

    # ---- training

    def noise_scheduler(self, model_dir: Path):
        """The DDPM training schedule from the pipeline's own scheduler config (betas, T, target)."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_pretrained(model_dir, subfolder="scheduler")

    def objective(self, model_dir: Path, transformer) -> Objective:
        # The model's attribute, not its config: a config without the key (null) means "on for
        # sample_size 128", which diffusers resolves in the constructor and only there.
        return Objective(scheduler=self.noise_scheduler(model_dir),
                         use_additional_conditions=bool(getattr(transformer, "use_additional_conditions", False)))

    # ---- validation

    def validation_pipeline(self, model_dir: Path, transformer, vae, dtype: torch.dtype):
        """A PixArtSigmaPipeline around the live transformer, without T5: validation prompts are
        encoded once in the cache stage, so the 4.7B-parameter text encoder never loads while training."""
        from diffusers import PixArtSigmaPipeline
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        pipe = PixArtSigmaPipeline.from_pretrained(model_dir, transformer=transformer, vae=vae, text_encoder=None,
                                                   tokenizer=None, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def render(self, pipe, embeds: torch.Tensor, negative: torch.Tensor, mask: torch.Tensor, *, width: int,
               height: int, steps: int, guidance: float, generator: torch.Generator):
        """Exactly the requested size (no resolution binning), from embeddings (no prompt text:
        the pipeline would otherwise insist on a tokenizer), captions not cleaned (they were
        cached as written). See runner/models/tiny/pixart_sigma.py for why each argument is needed."""
        return pipe(prompt=None, negative_prompt=None, prompt_embeds=embeds[None], prompt_attention_mask=mask[:1],
                    negative_prompt_embeds=negative[None], negative_prompt_attention_mask=mask[1:],
                    width=width, height=height, num_inference_steps=steps, guidance_scale=guidance,
                    generator=generator, use_resolution_binning=False, clean_caption=False).images[0]

    # ---- export

    def export(self, model_dir: Path, transformer, dest: Path, files: Mapping[str, bytes] | None = None) -> Path:
        """Loads with `PixArtSigmaPipeline.from_pretrained(dest)`."""
        return pipeline.export_pipeline(model_dir, transformer, dest, component="transformer", files=files)


FAMILY = PixArtSigma()
