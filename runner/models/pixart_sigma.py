"""PixArt Sigma: loading components, caching encoders, and the training objective.

Everything goes through diffusers/transformers `from_pretrained`, the same for
`PixArt-alpha/PixArt-Sigma-XL-2-1024-MS` on an H100 and the tiny builtin on a CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PIPELINE_PATTERNS = ["model_index.json", "transformer/*", "vae/*", "text_encoder/*", "tokenizer/*", "scheduler/*"]


class ModelError(Exception):
    """A model that cannot be found or loaded; the message says what to do."""


def resolve_model_dir(ref: str, revision: str, cache_dir: Path, **retry) -> Path:
    """A local folder holding the diffusers pipeline `ref` names (builtin, local dir or Hub id).
    `retry`: `retries` and `backoff_s` of runner.data.hub.fetch_snapshot, for a Hub id."""
    from runner.models import tiny

    if tiny.is_builtin(ref):
        try:
            return tiny.resolve_builtin(ref, cache_dir)
        except ValueError as e:
            raise ModelError(f"spec.model.pretrained: {e}") from None
    local = Path(ref).expanduser()
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise ModelError(f"spec.model.pretrained: {local} is a folder but holds no model_index.json; "
                             "point it at a diffusers pipeline folder")
        return local
    if ref.startswith((".", "/", "~")):
        raise ModelError(f"spec.model.pretrained: local folder {ref} does not exist")
    return Path(_download_pipeline(ref, revision, **retry))


def _download_pipeline(ref: str, revision: str, **retry) -> str:
    """The pipeline's files in the Hub cache, for Hub id `ref`. Offline: what the cache holds.
    Online: model_index.json first (a request with a timeout that huggingface_hub retries with
    backoff itself, and which records the branch's commit for later offline runs), then every
    pipeline file of that commit, transient failures retried and the result checked whole."""
    from huggingface_hub import constants, hf_hub_download, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    from runner.data.hub import IncompleteDownload, fetch_snapshot, is_transient

    what = f"spec.model.pretrained: {ref}@{revision}"
    fixes = ("set HF_ENDPOINT to use a mirror, HF_TOKEN if the repo is gated or private, or download it first "
             f"(`hf download {ref} --revision {revision}`) and run with HF_HUB_OFFLINE=1, or point pretrained at a local folder")
    try:
        if constants.HF_HUB_OFFLINE:
            return snapshot_download(repo_id=ref, revision=revision, allow_patterns=PIPELINE_PATTERNS)
        index = hf_hub_download(ref, "model_index.json", revision=revision, etag_timeout=constants.HF_HUB_ETAG_TIMEOUT)
        commit = Path(index).parent.name  # <cache>/models--owner--name/snapshots/<commit>/model_index.json
        return str(fetch_snapshot(ref, commit, repo_type="model", patterns=PIPELINE_PATTERNS, **retry)[0])
    except (GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise ModelError(f"{what} not found on the Hub ({type(e).__name__}); "
                         "check the repo id and revision, and the token (HF_TOKEN) if the repo is gated") from None
    except IncompleteDownload as e:
        raise ModelError(f"{what}: the download stayed incomplete after retries ({e}); nothing partial is used, "
                         f"rerun to resume it. Fix: check the network, or {fixes}") from None
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise ModelError(f"{what} is not (completely) in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                             f"unset it to download, or {fixes}") from None
        raise ModelError(f"{what}: the Hub at {constants.ENDPOINT} cannot be reached, and the model is not in the local "
                         f"cache. Fix: {fixes}") from None
    except Exception as e:  # noqa: BLE001 - HTTP 5xx, timeouts, dropped connections, disk errors: all worded here
        tried = " (after retries)" if is_transient(e) else ""
        status = getattr(getattr(e, "response", None), "status_code", None) if isinstance(e, HfHubHTTPError) else None
        how = f"answered HTTP {status}" if status else f"failed ({type(e).__name__}: {' '.join(str(e).split())[:300]})"
        raise ModelError(f"{what}: downloading from the Hub at {constants.ENDPOINT} {how}{tried}. Fix: {fixes}") from None


# ----------------------------------------------------------------------------- text encoder

def load_text_encoder(model_dir: Path, dtype: str, device: torch.device):
    from transformers import AutoTokenizer, T5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(model_dir, subfolder="tokenizer")
    encoder = T5EncoderModel.from_pretrained(model_dir, subfolder="text_encoder", dtype=DTYPES[dtype])
    return tokenizer, encoder.to(device).eval().requires_grad_(False)


@torch.no_grad()
def encode_captions(tokenizer, encoder, captions: Sequence[str], max_tokens: int) -> list[torch.Tensor]:
    """T5 embeddings trimmed to each caption's real length ([L_i, D] on the CPU).

    Trimming cuts the cache ~2.5x at PixArt's 300 tokens; the loader pads back with a mask,
    which is exactly what the transformer sees (masked positions do not attend)."""
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


def pad_embeddings(embeds: Sequence[torch.Tensor], multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
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


# ----------------------------------------------------------------------------- VAE

def load_vae(model_dir: Path, dtype: str, device: torch.device, compile: bool = False):
    """The VAE; with `compile` on CUDA its encoder is compiled and channels-last. Both
    together: eager channels-last is slower than the default layout (GroupNorm falls to a
    generic kernel), compiled channels-last is 1.7x faster (H200, 1024 px, bf16)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae", dtype=DTYPES[dtype])
    vae = vae.to(device).eval().requires_grad_(False)
    if compile and torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True  # one conv algorithm search per bucket shape
        vae.to(memory_format=torch.channels_last)
        vae.encoder.compile(dynamic=None)  # static first shape; later buckets share one dynamic graph
    return vae


def image_to_tensor(image) -> torch.Tensor:
    """PIL RGB image -> [3, H, W] float in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


@torch.no_grad()
def encode_images(vae, pixels: torch.Tensor, seeds: Sequence[int] | None = None) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> scaled latents [B, 4, H/8, W/8] (float32), sampled from the
    VAE's posterior with per-image noise seeds when given (reproducible cache entries)."""
    param = next(vae.parameters())
    pixels = pixels.to(param.device, param.dtype)
    if param.dim() == 4 and param.is_contiguous(memory_format=torch.channels_last):
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    dist = vae.encode(pixels).latent_dist
    shape = dist.mean.shape[1:]
    if seeds is None:
        noise = torch.randn(dist.mean.shape, dtype=torch.float32)
    else:
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s), dtype=torch.float32)
                             for s in seeds])
    sample = dist.mean.float() + dist.std.float() * noise.to(dist.mean.device)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (sample - shift) * vae.config.scaling_factor


# ----------------------------------------------------------------------------- transformer

def load_transformer(model_dir: Path, *, bit_fit: bool, gradient_checkpointing: bool):
    from diffusers import PixArtTransformer2DModel

    model = PixArtTransformer2DModel.from_pretrained(model_dir, subfolder="transformer", dtype=torch.float32)
    if gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if bit_fit:
        for name, p in model.named_parameters():
            p.requires_grad_(name.endswith(".bias"))
    model.train()
    return model


def compile_blocks(model, dynamic: bool = True) -> int:
    """torch.compile each transformer block in place (state-dict keys stay the same, so
    checkpoints and exports are unaffected). Per block rather than whole-model: same speed,
    a fraction of the compile time, since all 28 blocks share one compiled graph.

    The first bucket compiles static shapes. With `dynamic`, the second bucket's shape makes
    torch recompile once with a symbolic sequence length, and that graph serves every later
    bucket, so compile time is bounded by two compiles however many buckets there are.
    Without it every bucket is its own static graph; and since the first block sees float32
    input while the rest see bf16, one code object needs a few graphs per bucket: the
    default limit of 8 would silently fall back to eager after ~4 buckets."""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    torch._dynamo.config.automatic_dynamic_shapes = dynamic
    for block in model.transformer_blocks:
        block.compile(dynamic=None if dynamic else False)
    return len(model.transformer_blocks)


def apply_speed_options(transformer, spec, device: torch.device, log) -> None:
    """spec.model.attention, spec.training.fp8 and spec.training.compile, in that order
    (kernels and FP8 modules must be in place before the blocks are compiled, and before
    the optimizer takes the parameters)."""
    from runner.models.attention import set_attention
    from runner.training.precision import apply_fp8

    training = spec["training"]
    used, why = set_attention(transformer, spec["model"].get("attention", "auto"), device)
    if device.type == "cuda" or spec["model"].get("attention") == "fa4":
        log(f"attention kernels: {used}" + (f" ({why})" if why else ""))
    if training.get("fp8"):
        log(f"fp8 linears: {apply_fp8(transformer, device, 'on')}")
    if training["compile"] and device.type == "cuda":  # elsewhere ignored, as the schema says
        dynamic = training.get("compileDynamic", True)
        log(f"compiling {compile_blocks(transformer, dynamic)} transformer blocks (first bucket static, "
            + ("later buckets share one dynamic graph)" if dynamic else "one graph per bucket)"))


def load_noise_scheduler(model_dir: Path):
    """The DDPM training schedule from the pipeline's own scheduler config (betas, T, target)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_pretrained(model_dir, subfolder="scheduler")


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
            h, w = latents.shape[-2] * 8, latents.shape[-1] * 8
            added = {"resolution": torch.tensor([[h, w]], device=latents.device, dtype=latents.dtype).repeat(b, 1),
                     "aspect_ratio": torch.tensor([[h / w]], device=latents.device, dtype=latents.dtype).repeat(b, 1)}
        pred = model(noisy, encoder_hidden_states=embeds, encoder_attention_mask=mask, timestep=timesteps,
                     added_cond_kwargs=added, return_dict=False)[0]
        if pred.shape[1] == 2 * latents.shape[1]:
            pred = pred[:, : latents.shape[1]]
        if sched.config.prediction_type == "v_prediction":
            target = sched.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        return F.mse_loss(pred.float(), target.float())


def make_objective(model_dir: Path, transformer) -> Objective:
    # The model's attribute, not its config: a config without the key (null) means "on for
    # sample_size 128", which diffusers resolves in the constructor and only there.
    return Objective(scheduler=load_noise_scheduler(model_dir),
                     use_additional_conditions=bool(getattr(transformer, "use_additional_conditions", False)))


# ----------------------------------------------------------------------------- validation pipeline

def validation_pipeline(model_dir: Path, transformer, vae, dtype: torch.dtype):
    """A PixArtSigmaPipeline around the live transformer, without T5: validation prompts are
    encoded once in the cache stage, so the 4.7B-parameter text encoder never loads while training."""
    from diffusers import PixArtSigmaPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    pipe = PixArtSigmaPipeline.from_pretrained(model_dir, transformer=transformer, vae=vae, text_encoder=None,
                                               tokenizer=None, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe
