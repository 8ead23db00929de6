"""Validation images: every prompt at every resolution with the spec's guidance, steps and seed,
using the live transformer and the text embeddings cached by the cache stage."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file

from runner.files import atomic_write_json
from runner.spec.semantics import parse_resolutions
from runner.train.data import text_entry

if TYPE_CHECKING:
    from runner.models.family import ModelFamily


class Validator:
    def __init__(self, spec: dict[str, Any], manifest: dict[str, Any], family: ModelFamily, out_dir: Path,
                 device: torch.device, dtype: torch.dtype, vae=None):
        self.family = family
        self.cfg = spec["validation"]
        self.eval_cfg = spec["evaluation"]
        self.cache_dir = Path(spec["cacheDir"])
        self.manifest, self.out_dir, self.device, self.dtype = manifest, out_dir, device, dtype
        self.vae = vae
        self.pipe = None
        self.scorer = None
        max_tokens = spec["model"]["textEncoderMaxLength"]

        def embed(text: str):
            return load_file(str(text_entry(manifest, max_tokens, text)))["prompt_embeds"]

        self.prompts = [(p, embed(p)) for p in self.cfg["prompts"]]
        self.negative = embed(self.cfg["negativePrompt"]) if self.prompts else None

    @property
    def enabled(self) -> bool:
        return bool(self.prompts)

    def _pipeline(self, transformer):
        if self.pipe is None:
            model_dir = Path(self.manifest["model_dir"])
            vae = self.vae if self.vae is not None else self.family.load_vae(model_dir, "float32", self.device)
            self.pipe = self.family.validation_pipeline(model_dir, transformer, vae, torch.float32)
        self.pipe.transformer = transformer
        return self.pipe

    @torch.no_grad()
    def run(self, transformer, step: int) -> dict[str, float]:
        folder = self.out_dir / f"step-{step}"
        folder.mkdir(parents=True, exist_ok=True)
        pipe = self._pipeline(transformer)
        was_training = transformer.training
        transformer.eval()
        # Sampling shapes (CFG doubles the batch, other resolutions) would each trigger a
        # recompile of compiled blocks; validation is rare, so it runs them eagerly.
        eager = getattr(torch.compiler, "set_stance", None)
        stance = eager("force_eager") if eager else contextlib.nullcontext()
        records, images, texts = [], [], []
        try:
            with stance:
                for pi, (prompt, embed) in enumerate(self.prompts):
                    (pos, neg), mask = self.family.pad_text([embed, self.negative])
                    pos, neg = pos.to(self.device, self.dtype), neg.to(self.device, self.dtype)
                    mask = mask.to(self.device)
                    for w, h in parse_resolutions(self.cfg["resolutions"]):
                        image = self._render(pipe, pos, neg, mask, w, h)
                        name = f"p{pi}-{w}x{h}.png"
                        image.save(folder / name)
                        records.append({"file": name, "prompt": prompt, "width": w, "height": h})
                        images.append(image)
                        texts.append(prompt)
        finally:
            transformer.train(was_training)
        metrics: dict[str, float] = {}
        if self.eval_cfg["clipScore"]:
            scores = self._clip().score(images, texts)
            for rec, s in zip(records, scores):
                rec["clip_score"] = s
            metrics["validation/clip_score"] = sum(scores) / len(scores)
        atomic_write_json(folder / "images.json", {"step": step, "guidance": self.cfg["guidance"],
                                                    "steps": self.cfg["inferenceSteps"], "seed": self.cfg["seed"],
                                                    "images": records, **metrics})
        return metrics

    def _render(self, pipe, pos, neg, mask, width: int, height: int):
        """One image from precomputed embeddings, with the same seed at every validation."""
        gen = torch.Generator(device="cpu").manual_seed(self.cfg["seed"])
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            return self.family.render(pipe, pos, neg, mask, width=width, height=height,
                                      steps=self.cfg["inferenceSteps"], guidance=self.cfg["guidance"], generator=gen)

    def _clip(self):
        from runner.evaluation.clip_score import ClipScorer

        if self.scorer is None:
            self.scorer = ClipScorer(self.eval_cfg["clipModel"], device=str(self.device), cache_dir=self.cache_dir)
        return self.scorer


def latest_images(out_dir: Path) -> list[Path]:
    steps = sorted((int(p.name.split("-")[1]), p) for p in out_dir.glob("step-*") if p.is_dir())
    return sorted(steps[-1][1].glob("*.png")) if steps else []

