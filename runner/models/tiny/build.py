"""How a builtin tiny model is built: deterministically for a seed (the caller's torch RNG left
untouched), at most once, and safely against concurrent builders. Each build is written into a
temporary folder next to its destination and renamed into place; it is complete only when it
holds the MARKER file, written last (runner.files.build_dir_once)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

from runner.files import BuildMarker, build_dir_once

MARKER = ".tiny-build.json"
# Bump when a recipe changes: cached builds with an older version are rebuilt.
# 2: the tiny CLIP is the plain seeded CLIPModel (version 1 flipped its visual projection).
BUILD_VERSION = 2
BUILT = BuildMarker(MARKER, BUILD_VERSION)


def build_once(dest: Path, *, kind: str, seed: int, required: str, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp)`` in a temp folder next to ``dest`` and rename it into place.

    A ``dest`` that is already complete (its marker, of this version or newer, and the
    ``required`` file) is returned untouched; a stale one (an older BUILD_VERSION, or a folder
    made by hand) is replaced. When several processes race, exactly one rename wins; the others
    discard their temp folder and return the winner's ``dest``."""
    def fill(tmp: Path) -> None:
        build(tmp)
        BUILT.write(tmp, files=[required], builder=kind, seed=seed)

    return build_dir_once(Path(dest), fill, BUILT.is_complete)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global CPU RNG inside, restoring the caller's state after."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
