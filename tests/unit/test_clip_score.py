"""CLIP score: known answers on fixed embeddings, and torchmetrics' CLIPScore on a tiny CLIP."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.functional.multimodal import clip_score as torchmetrics_clip_score
from transformers import CLIPModel, CLIPProcessor

from runner.evaluation import ClipScorer
from runner.evaluation.clip_score import clip_scores
from runner.models.tiny.clip import build_tiny_clip

PROMPTS = [
    "a photo of a cat",
    "an astronaut riding a horse on the moon",
    "a cup of coffee on a wooden table",
    "a pile of gold coins",
]
# A random-weight CLIP's image and text embeddings each cluster around one direction, so the
# sign of nearly every cosine is a property of the seed. With seed 3 these pairs give both
# signs, so both the scaled cosine and the clamp at 0 are compared (each test checks it still does).
SEED = 3


def _images() -> list:
    colors = ["red", "blue", "green"]
    images = [Image.new("RGB", (64, 48), c) for c in colors]
    # one gradient, non-square, non-RGB input
    return images + [Image.linear_gradient("L").resize((80, 40))]


def _all_pairs() -> tuple[list, list[str]]:
    pairs = [(image, prompt) for image in _images() for prompt in PROMPTS]
    return [i for i, _ in pairs], [p for _, p in pairs]


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", seed=SEED)


@pytest.fixture(scope="session")
def scorer(clip_dir: Path) -> ClipScorer:
    return ClipScorer(str(clip_dir))


# ----------------------------------------------------------------------------- the formula

@pytest.mark.parametrize("image, text, expected", [
    ([1.0, 0.0, 0.0], [0.6, 0.8, 0.0], 60.0),            # unit vectors: 100 * cos
    ([3.0, 4.0], [4.0, 3.0], 96.0),                      # not normalised: cos = 24 / 25
    ([2.0, 0.0], [5.0, 0.0], 100.0),                     # same direction, any length
    ([1.0, 1.0], [1.0, 0.0], 100.0 / math.sqrt(2.0)),
    ([1.0, 0.0], [0.0, 1.0], 0.0),                       # orthogonal
    ([1.0, 0.0], [-0.6, 0.8], 0.0),                      # cos = -0.6: clamped, never negative
    ([1.0, 2.0], [-1.0, -2.0], 0.0),                     # opposite
])
def test_clip_scores_known_answers(image, text, expected) -> None:
    (score,) = clip_scores(torch.tensor([image]), torch.tensor([text]))
    assert score == pytest.approx(expected, abs=1e-4)


def test_clip_scores_pairs_rows() -> None:
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    assert clip_scores(image, text) == pytest.approx([100.0, 0.0, 0.0], abs=1e-4)


# ----------------------------------------------------------------------------- against torchmetrics

class _ProjectedFeatures(torch.nn.Module):
    """The model as torchmetrics 1.9 expects it. It was written for transformers 4, whose
    get_{image,text}_features return the projected embedding; transformers 5 returns a
    ModelOutput. This computes CLIP's projection of the pooled output directly, so the reference
    shares no code with ClipScorer's own handling of those return types."""

    def __init__(self, clip: CLIPModel):
        super().__init__()
        self.clip = clip
        self.config = clip.config

    def get_image_features(self, pixel_values):
        return self.clip.visual_projection(self.clip.vision_model(pixel_values=pixel_values).pooler_output)

    def get_text_features(self, input_ids, attention_mask=None):
        pooled = self.clip.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.clip.text_projection(pooled)


def _torchmetrics_scores(clip_dir: Path, images: list, prompts: list[str]) -> list[float]:
    """torchmetrics' CLIPScore of each (image, prompt) pair on its own: it clamps the mean of
    what it is given, so one pair at a time is the per-pair score."""
    model = _ProjectedFeatures(CLIPModel.from_pretrained(clip_dir).eval())
    processor = CLIPProcessor.from_pretrained(clip_dir)
    scores = []
    for image, prompt in zip(images, prompts):
        pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)  # uint8 [3, H, W]
        with torch.no_grad():
            score = torchmetrics_clip_score(pixels, prompt, model_name_or_path=lambda: (model, processor))
        scores.append(float(score))
    return scores


def test_matches_torchmetrics(clip_dir: Path, scorer: ClipScorer) -> None:
    images, prompts = _all_pairs()
    expected = _torchmetrics_scores(clip_dir, images, prompts)
    assert any(s > 1.0 for s in expected) and any(s == 0.0 for s in expected), expected
    assert scorer.score(images, prompts) == pytest.approx(expected, abs=1e-3)


# ----------------------------------------------------------------------------- batching, pairing, truncation

def test_scores_do_not_depend_on_batching_or_order(clip_dir: Path, scorer: ClipScorer) -> None:
    images, prompts = _all_pairs()
    scores = scorer.score(images, prompts)
    assert any(s > 1.0 for s in scores)
    assert scorer.score(images[::-1], prompts[::-1]) == pytest.approx(scores[::-1], abs=1e-4)
    one_by_one = ClipScorer(str(clip_dir), batch_size=1).embed(images, prompts)
    for a, b in zip(scorer.embed(images, prompts), one_by_one):
        assert torch.allclose(a, b, atol=1e-5)


def test_long_prompts_are_truncated_at_77_tokens(scorer: ClipScorer) -> None:
    long_prompt = " ".join(["a very detailed photo of a cat"] * 60)  # far over 77 tokens
    image = _images()[0]
    _, text = scorer.embed([image] * 3, [long_prompt, long_prompt + " and a dog", "a very detailed photo"])
    assert scorer.max_length == 77
    assert torch.allclose(text[0], text[1], atol=1e-6)  # words past token 77 are dropped ...
    assert not torch.allclose(text[0], text[2], atol=1e-3)  # ... the first 77 are kept


def test_input_validation(scorer: ClipScorer) -> None:
    assert scorer.score([], []) == []
    with pytest.raises(ValueError, match="one prompt per image"):
        scorer.score(_images(), PROMPTS[:2])
    with pytest.raises(ValueError, match="batch_size"):
        ClipScorer("unused", batch_size=0)


def test_builtin_ref(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cache_dir"):
        ClipScorer("builtin:tiny-clip")
    builtin = ClipScorer("builtin:tiny-clip", cache_dir=tmp_path)
    assert (tmp_path / "builtin" / "tiny-clip" / "config.json").is_file()
    # The builtin is the seed-0 build: the same embeddings as building it directly.
    direct = ClipScorer(str(build_tiny_clip(tmp_path / "direct", seed=0)))
    images, prompts = _all_pairs()
    for a, b in zip(builtin.embed(images, prompts), direct.embed(images, prompts)):
        assert torch.equal(a, b)
