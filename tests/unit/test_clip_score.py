"""CLIP score (torchmetrics definition) on the tiny offline CLIP model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")

from runner.evaluation import ClipScorer  # noqa: E402
from runner.models.tiny import build_tiny_clip  # noqa: E402

PROMPTS = [
    "a photo of a cat",
    "an astronaut riding a horse on the moon",
    "a cup of coffee on a wooden table",
    "a pile of gold coins",
]


def _images() -> list:
    colors = ["red", "blue", "green", "white"]
    images = [Image.new("RGB", (64, 48), c) for c in colors]
    # one gradient, non-square, non-RGB input
    grad = Image.linear_gradient("L").resize((80, 40))
    return images[:3] + [grad]


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="session")
def scorer(clip_dir: Path) -> ClipScorer:
    return ClipScorer(str(clip_dir))


def test_scores_are_finite_and_in_range(scorer: ClipScorer) -> None:
    scores = scorer.score(_images(), PROMPTS)
    assert len(scores) == len(PROMPTS)
    assert all(isinstance(s, float) and math.isfinite(s) and 0.0 <= s <= 100.0 for s in scores)
    assert any(s > 0 for s in scores)


def test_matches_torchmetrics_definition(scorer: ClipScorer) -> None:
    images, prompts = _images(), PROMPTS
    inputs = scorer.processor(
        text=prompts, images=[im.convert("RGB") for im in images], return_tensors="pt", padding=True, truncation=True
    )
    with torch.no_grad():
        out = scorer.model(**inputs)
    cos = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds, dim=-1)
    expected = (100 * cos).clamp(min=0).tolist()
    assert scorer.score(images, prompts) == pytest.approx(expected, abs=1e-4)


def test_same_pair_same_score(scorer: ClipScorer) -> None:
    image = _images()[1]
    a = scorer.score([image, image], [PROMPTS[1], PROMPTS[1]])
    assert a[0] == pytest.approx(a[1], abs=1e-5)
    assert scorer.score([image], [PROMPTS[1]])[0] == pytest.approx(a[0], abs=1e-5)


def test_prompt_order_matters(scorer: ClipScorer) -> None:
    images = _images()
    forward = scorer.score(images, PROMPTS)
    backward = scorer.score(images, PROMPTS[::-1])
    assert forward != pytest.approx(backward, abs=1e-3)


def test_batching_does_not_change_scores(clip_dir: Path, scorer: ClipScorer) -> None:
    small = ClipScorer(str(clip_dir), batch_size=1)
    assert small.score(_images(), PROMPTS) == pytest.approx(scorer.score(_images(), PROMPTS), abs=1e-4)


def test_long_prompts_are_truncated(scorer: ClipScorer) -> None:
    long_prompt = " ".join(["a very detailed photo of a cat"] * 60)  # > 77 tokens
    (score,) = scorer.score([_images()[0]], [long_prompt])
    assert math.isfinite(score) and 0.0 <= score <= 100.0
    assert scorer.max_length == 77


def test_input_validation(scorer: ClipScorer) -> None:
    assert scorer.score([], []) == []
    with pytest.raises(ValueError, match="one prompt per image"):
        scorer.score(_images(), PROMPTS[:2])
    with pytest.raises(ValueError, match="batch_size"):
        ClipScorer("unused", batch_size=0)


def test_builtin_ref(tmp_path: Path, clip_dir: Path) -> None:
    with pytest.raises(ValueError, match="cache_dir"):
        ClipScorer("builtin:tiny-clip")
    s = ClipScorer("builtin:tiny-clip", cache_dir=tmp_path)
    assert (tmp_path / "builtin" / "tiny-clip" / "config.json").is_file()
    # same seed -> same model as the fixture's build
    assert s.score(_images(), PROMPTS) == pytest.approx(ClipScorer(str(clip_dir)).score(_images(), PROMPTS))
