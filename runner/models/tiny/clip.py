"""The builtin tiny CLIP (``builtin:tiny-clip``): a ``CLIPModel`` plus ``CLIPProcessor``
(byte-level BPE tokenizer and ``CLIPImageProcessor``) loadable with ``CLIPModel.from_pretrained``,
``CLIPProcessor.from_pretrained`` and ``AutoProcessor.from_pretrained``, random weights. For the
CLIP-score tests and smoke runs: its scores measure nothing (see runner.models.tiny).

Gotchas (transformers 5.24):

* Without torchvision, ``CLIPImageProcessor`` logs "requires torchvision (not
  installed); falling back to `CLIPImageProcessorPil`" - harmless.
  ``CLIPProcessor.save_pretrained`` in transformers 5 embeds the image
  processor config in ``processor_config.json``; we also write a standalone
  ``preprocessor_config.json`` so ``CLIPImageProcessor.from_pretrained`` and
  older transformers find it.
* ``CLIPModel.get_text_features`` / ``get_image_features`` return a
  ``BaseModelOutputWithPooling`` in transformers 5 (a tensor in 4.x); the
  projected embedding is its ``pooler_output``.
* ``CLIPTextConfig.eos_token_id`` must be the tokenizer's real ``<|endoftext|>``
  id: with the legacy value 2 the text pooler takes the argmax token id
  instead of the first EOS position.
"""
from __future__ import annotations

from pathlib import Path

from runner.models.tiny.build import build_once, seeded
from runner.models.tiny.tokenizers import CLIP_MAX_LENGTH, clip_tokenizer

CLIP_IMAGE_SIZE = 32


def build_tiny_clip(dest: Path, seed: int = 0) -> Path:
    """Build (once) a tiny ``CLIPModel`` + ``CLIPProcessor`` at ``dest``.

    Loads with ``CLIPModel.from_pretrained(dest)`` and
    ``CLIPProcessor.from_pretrained(dest)`` / ``AutoProcessor``.  Images are
    resized/center-cropped to 32x32 (patch 8); text is truncated at 77 tokens.
    """

    def build(tmp: Path) -> None:
        from transformers import (
            CLIPConfig,
            CLIPImageProcessor,
            CLIPModel,
            CLIPProcessor,
            CLIPTextConfig,
            CLIPVisionConfig,
        )

        tokenizer = clip_tokenizer()
        text_config = CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            projection_dim=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=CLIP_MAX_LENGTH,
            hidden_act="quick_gelu",
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        vision_config = CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            projection_dim=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_channels=3,
            image_size=CLIP_IMAGE_SIZE,
            patch_size=8,
            hidden_act="quick_gelu",
        )
        config = CLIPConfig(
            text_config=text_config.to_dict(),
            vision_config=vision_config.to_dict(),
            projection_dim=16,
        )
        with seeded(seed):
            model = CLIPModel(config).eval()
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": CLIP_IMAGE_SIZE},
            crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
            do_resize=True,
            do_center_crop=True,
            do_normalize=True,
            do_rescale=True,
            do_convert_rgb=True,
        )
        processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        image_processor.save_pretrained(tmp)  # standalone preprocessor_config.json

    return build_once(Path(dest), kind="tiny-clip", seed=seed, required="config.json", build=build)
