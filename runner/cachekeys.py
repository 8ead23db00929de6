"""Cache keys: pure functions of everything that changes the cached bytes.

A text embedding depends on the text encoder (model id, revision, the component's
fingerprint), its dtype, the max token count and the caption. A latent depends on the VAE
(same), its dtype, the source image's content digest and the whole crop plan (resolution,
downsample, resize, crop window and offset, target size). Change any of them and the key
changes, so a stale entry can never be read back; keep them and the entry is reused.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Bump when the on-disk layout of an entry changes.
CACHE_FORMAT = 1


def _digest(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class EncoderIdentity:
    """What identifies an encoder's weights: where it came from and what is on disk."""

    model: str
    revision: str
    fingerprint: str
    dtype: str


def text_key(encoder: EncoderIdentity, max_tokens: int, caption: str) -> str:
    return _digest({"format": CACHE_FORMAT, "kind": "t5", "encoder": encoder.__dict__,
                    "max_tokens": max_tokens, "caption": caption})


def latent_key(vae: EncoderIdentity, source_digest: str, crop_plan: dict[str, Any]) -> str:
    return _digest({"format": CACHE_FORMAT, "kind": "vae", "vae": vae.__dict__,
                    "source": source_digest, "crop": crop_plan})


def entry_path(root: Path, key: str) -> Path:
    """Two-level fan-out keeps directories small for 10k+ entries."""
    return root / key[:2] / f"{key}.safetensors"


def component_fingerprint(component_dir: Path) -> str:
    """Fingerprint a local diffusers/transformers component folder (config bytes plus name,
    size and mtime of each file) without reading multi-GB weights. A component rewritten in
    place changes size or mtime, so its caches are invalidated."""
    h = hashlib.sha256()
    if not component_dir.is_dir():
        raise FileNotFoundError(f"{component_dir}: model component folder not found")
    for path in sorted(p for p in component_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(component_dir).as_posix()
        st = path.stat()
        h.update(rel.encode())
        if path.suffix == ".json" and st.st_size < 1_000_000:
            h.update(path.read_bytes())
        else:
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    # A Hub snapshot folder name is the commit hash: include it when present.
    parts = component_dir.resolve().parts
    if "snapshots" in parts:
        h.update(parts[parts.index("snapshots") + 1].encode())
    return h.hexdigest()[:32]
