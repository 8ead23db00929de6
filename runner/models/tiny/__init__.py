"""Builtin tiny models: real architectures with random weights, built offline on first use.

The smoke job and the tests load these through exactly the same ``from_pretrained`` code
paths as the real checkpoints, so nothing here may be "fake": every component is the real
diffusers / transformers class, only with tiny dimensions and random weights. Nothing is
downloaded, and nothing is trained: the tokenizers ship as files (tokenizers.py).

``builtin:tiny-pixart-sigma`` (pixart_sigma.py)
    A diffusers ``PixArtSigmaPipeline`` folder shaped like
    ``PixArt-alpha/PixArt-Sigma-XL-2-1024-MS``, about 1 MB on disk.
``builtin:tiny-clip`` (clip.py)
    A ``CLIPModel`` plus ``CLIPProcessor``. Its weights are random, so its scores measure
    nothing: its image and text embeddings each cluster around one direction, and the
    built-in seed puts them more than 90 degrees apart, so it scores 0 for nearly every pair.

Each is built under ``<cache_dir>/builtin/<name>`` on first use (build.py: deterministic for a
seed, atomic and safe against concurrent builders) and reused afterwards.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from runner.spec.names import BUILTIN_PREFIX


def _lazy(module: str, function: str) -> Callable[..., Path]:
    """A builder imported on first use (builders import torch; resolving a name must not)."""
    def build(dest: Path, seed: int = 0) -> Path:
        return getattr(importlib.import_module(module), function)(dest, seed=seed)
    return build


BUILTINS: dict[str, Callable[..., Path]] = {
    "tiny-pixart-sigma": _lazy("runner.models.tiny.pixart_sigma", "build_tiny_pixart_sigma"),
    "tiny-clip": _lazy("runner.models.tiny.clip", "build_tiny_clip"),
}


def is_builtin(ref: str) -> bool:
    """True when ``ref`` names a builtin model (``builtin:<name>``)."""
    return isinstance(ref, str) and ref.startswith(BUILTIN_PREFIX)


def resolve_builtin(name: str, cache_dir: Path) -> Path:
    """``builtin:<name>`` (or the bare ``<name>``) as a built folder under ``cache_dir/builtin/``,
    built on first use. Unknown names raise ValueError listing the known ones."""
    key = name[len(BUILTIN_PREFIX):] if is_builtin(name) else name
    if key not in BUILTINS:
        known = ", ".join(BUILTIN_PREFIX + k for k in sorted(BUILTINS))
        raise ValueError(f"unknown builtin model {name!r}; known builtins: {known}")
    return BUILTINS[key](Path(cache_dir) / "builtin" / key)
