"""Evaluation metrics for validation images (CLIP score).

``ClipScorer`` is imported lazily so that importing this package does not pull
in torch/transformers (the light core of the runner must work without them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["ClipScorer"]

if TYPE_CHECKING:  # pragma: no cover
    from .clip_score import ClipScorer


def __getattr__(name: str) -> Any:
    if name == "ClipScorer":
        from .clip_score import ClipScorer

        return ClipScorer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
