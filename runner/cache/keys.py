"""Cache keys: pure functions of everything that changes the cached bytes.

A text embedding depends on the text encoder's content (the fingerprint of its text-encoder
and tokenizer files), its dtype, the max token count and the caption. A latent depends on
the VAE's content, its dtype, the source image's content digest and the whole crop plan
(resolution, downsample, resize, crop window and offset, target size). Change any of them
and the key changes, so a stale entry can never be read back; keep them and the entry is
reused, wherever the same bytes come from (a re-download, a copy, another path or name).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from runner.files import file_digest

# Bump when the on-disk layout of an entry changes.
CACHE_FORMAT = 1


def _digest(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class EncoderIdentity:
    """An encoder as the cache manifest records it. Only `fingerprint` (its files' content) and
    `dtype` go into keys; `model` and `revision` say where it came from, for people reading the
    manifest: the same bytes under another name, path or revision encode the same."""

    model: str
    revision: str
    fingerprint: str
    dtype: str

    def key_fields(self) -> dict[str, str]:
        return {"fingerprint": self.fingerprint, "dtype": self.dtype}


def text_key(encoder: EncoderIdentity, max_tokens: int, caption: str) -> str:
    return _digest({"format": CACHE_FORMAT, "kind": "t5", "encoder": encoder.key_fields(),
                    "max_tokens": max_tokens, "caption": caption})


def latent_key(vae: EncoderIdentity, source_digest: str, crop_plan: dict[str, Any]) -> str:
    return _digest({"format": CACHE_FORMAT, "kind": "vae", "vae": vae.key_fields(),
                    "source": source_digest, "crop": crop_plan})


def entry_path(root: Path, key: str) -> Path:
    """Two-level fan-out keeps directories small for 10k+ entries."""
    return root / key[:2] / f"{key}.safetensors"


# A Hub cache blob named like this is an LFS object, and its name is the sha256 of its bytes.
_SHA256_NAME = re.compile(r"[0-9a-f]{64}")


def content_id(path: Path, digest: Callable[[Path], str]) -> str:
    """The sha256 of a file's bytes. In a Hugging Face cache snapshot each file is a symlink to
    `blobs/<etag>`, and an LFS file's etag (every weights file's) is its sha256: read from the
    name, so a multi-GB file is not read at all. Anything else is hashed by `digest`."""
    target = Path(path).resolve()
    if target.parent.name == "blobs" and _SHA256_NAME.fullmatch(target.name):
        return target.name
    return digest(target)


def component_fingerprint(component_dir: Path, digest: Callable[[Path], str] = file_digest) -> str:
    """Content identity of a diffusers/transformers component folder: the relative path and
    sha256 of every file. Same bytes give the same fingerprint whatever their mtimes or folder
    (a pod that downloads the same revision again, a copy); one changed byte gives a new one.
    Pass `digest=DigestMemo(...).digest` so a local folder's weights are hashed once, not on
    every run. Hidden files are left out: `hf download --local-dir` keeps per-download
    metadata under `.cache/`, which the loaders never read."""
    if not component_dir.is_dir():
        raise FileNotFoundError(f"{component_dir}: model component folder not found")
    h = hashlib.sha256()
    for path in sorted(p for p in component_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(component_dir)
        if any(part.startswith(".") for part in rel.parts):
            continue
        h.update(f"{rel.as_posix()}\0{content_id(path, digest)}\n".encode())
    return h.hexdigest()[:32]
