"""Write the fine-tuned model as a complete diffusers pipeline folder, atomically."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from runner.files import replace_dir


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # weights of unchanged components cost no extra disk
    except OSError:
        shutil.copy2(src, dst)


def export_pipeline(base_dir: Path, transformer, dest: Path) -> Path:
    """`dest` = the base pipeline with its transformer replaced by `transformer`.

    Built in a temp folder and renamed, so `dest` is always either the previous complete
    export or the new one. Loads with `PixArtSigmaPipeline.from_pretrained(dest)`."""
    base_dir = Path(base_dir)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for entry in base_dir.iterdir():
        if entry.name in ("transformer", ".cache") or entry.name.startswith("."):
            continue
        if entry.is_dir():
            shutil.copytree(entry, tmp / entry.name, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry.resolve()), str(tmp / entry.name))
    transformer.save_pretrained(tmp / "transformer", safe_serialization=True)
    return replace_dir(tmp, dest)
