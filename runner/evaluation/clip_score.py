"""CLIP score of generated images against their prompts.

The definition is torchmetrics' ``CLIPScore``:
``100 * max(cos(image_embeds, text_embeds), 0)``, computed per (image, prompt)
pair on the projected CLIP embeddings, with the prompt truncated to the text
model's maximum length (77 tokens for OpenAI CLIP).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

__all__ = ["ClipScorer", "clip_scores"]


def _features(output: object) -> torch.Tensor:
    """Projected embeddings from ``get_{text,image}_features``.

    transformers 4.x returns the tensor; 5.x returns a
    ``BaseModelOutputWithPooling`` whose ``pooler_output`` is the projection.
    """
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    raise TypeError(f"unexpected CLIP feature output type: {type(output).__name__}")


def clip_scores(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> list[float]:
    """``100 * max(cos, 0)`` of each row pair; the embeddings need not be normalised.

    The clamp is per pair, as torchmetrics' ``CLIPScore`` gives for one pair: a prompt the
    image does not match scores 0 rather than pulling an average below 0."""
    image = torch.nn.functional.normalize(image_embeds.float(), dim=-1)
    text = torch.nn.functional.normalize(text_embeds.float(), dim=-1)
    cos = (image * text).sum(dim=-1)
    return [float(x) for x in (100.0 * cos).clamp(min=0.0)]


class ClipScorer:
    """Scores (image, prompt) pairs with a CLIP model.

    ``model_ref`` is a Hub repo id (e.g. ``openai/clip-vit-large-patch14``), a
    local directory, or ``builtin:tiny-clip`` (built offline under
    ``cache_dir/builtin/``; ``cache_dir`` is then required).  The model and its
    processor are loaded with ``CLIPModel.from_pretrained`` /
    ``CLIPProcessor.from_pretrained``.
    """

    def __init__(
        self,
        model_ref: str,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        batch_size: int = 16,
        cache_dir: Path | str | None = None,
    ) -> None:
        from transformers import CLIPModel, CLIPProcessor

        from runner.models.tiny import is_builtin, resolve_builtin

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        ref = str(model_ref)
        if is_builtin(ref):
            if cache_dir is None:
                raise ValueError(f"cache_dir is required to resolve the builtin model {ref!r}")
            ref = str(resolve_builtin(ref, Path(cache_dir)))

        self.model_ref = str(model_ref)
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = batch_size
        self.processor = CLIPProcessor.from_pretrained(ref)
        self.model = CLIPModel.from_pretrained(ref).to(device=self.device, dtype=dtype).eval()
        self.model.requires_grad_(False)

        tokenizer = self.processor.tokenizer
        limits = [int(self.model.config.text_config.max_position_embeddings)]
        tok_max = getattr(tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
            limits.append(tok_max)
        self.max_length = min(limits)

    @torch.no_grad()
    def embed(self, images: Sequence, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected (image_embeds, text_embeds), float32 on CPU, one row per pair."""
        image_chunks: list[torch.Tensor] = []
        text_chunks: list[torch.Tensor] = []
        for start in range(0, len(prompts), self.batch_size):
            batch_images = [im.convert("RGB") for im in images[start : start + self.batch_size]]
            batch_prompts = list(prompts[start : start + self.batch_size])
            text = self.processor.tokenizer(
                batch_prompts,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            pixels = self.processor.image_processor(batch_images, return_tensors="pt")["pixel_values"]
            img = _features(
                self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))
            )
            txt = _features(
                self.model.get_text_features(
                    input_ids=text["input_ids"].to(self.device),
                    attention_mask=text["attention_mask"].to(self.device),
                )
            )
            image_chunks.append(img.float().cpu())
            text_chunks.append(txt.float().cpu())
        if not image_chunks:
            return torch.empty(0), torch.empty(0)
        return torch.cat(image_chunks), torch.cat(text_chunks)

    def score(self, images: Sequence, prompts: Sequence[str]) -> list[float]:
        """CLIP score of each ``images[i]`` against ``prompts[i]``, in [0, 100]."""
        if len(images) != len(prompts):
            raise ValueError(
                f"need one prompt per image, got {len(images)} images and {len(prompts)} prompts"
            )
        if not prompts:
            return []
        return clip_scores(*self.embed(images, prompts))
