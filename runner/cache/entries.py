"""Cache entries on disk: one safetensors file per latent or text embedding, written whole
(temp file, rename) and checked when read, so a torn or missing one is simply encoded again;
and the batching of entries for the encoders."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from runner.files import atomic_write_bytes


def entry_metadata(path: Path) -> dict[str, str] | None:
    """An entry's metadata, or None when it is missing or unreadable (its header does not parse,
    or its data is shorter than the header says: a torn file). Such an entry is re-encoded."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {}) if list(f.keys()) else None
    except Exception:  # noqa: BLE001 - any unreadable entry is simply re-encoded
        return None


def write_entry(path: Path, tensors: dict[str, Any], metadata: dict[str, str]) -> int:
    """Returns the bytes written (for the metrics). Not synced one by one: an entry verifies
    itself when read (entry_metadata), and run_cache flushes them all before any manifest."""
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, data, durable=False)
    return len(data)


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i: i + size]


def bucket_batches(entries: Sequence[Any], bucket: Callable[[Any], str], size: int) -> list[Sequence[Any]]:
    """`entries` grouped by bucket, in bucket order, cut into batches of at most `size`: a VAE
    batch stacks images, so each holds one shape."""
    by_bucket: dict[str, list] = {}
    for entry in entries:
        by_bucket.setdefault(bucket(entry), []).append(entry)
    return [batch for name in sorted(by_bucket) for batch in chunks(by_bucket[name], size)]
