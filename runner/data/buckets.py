"""Aspect buckets: grouping, the "is there enough data" check, and the epoch batch sampler.

Every batch holds images of one bucket (one target size), so latents stack without padding.
With data parallelism one *global* batch (batch_size * world_size images, all from the same
bucket) is split across ranks, so every rank runs the same number of steps and all ranks use
the same bucket at the same step.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

T = TypeVar("T")


def bucket_key(target_size: Sequence[int]) -> str:
    """(width, height) -> "WIDTHxHEIGHT", e.g. (192, 128) -> "192x128"."""
    w, h = target_size
    return f"{int(w)}x{int(h)}"


def parse_bucket_key(key: str) -> tuple[int, int]:
    w, _, h = key.partition("x")
    return int(w), int(h)


def _default_key(item: Any) -> str:
    """A `.bucket` string, else `.plan.target_size`, else `.target_size`."""
    bucket = getattr(item, "bucket", None)
    if isinstance(bucket, str):
        return bucket
    plan = getattr(item, "plan", None)
    if plan is not None and getattr(plan, "target_size", None) is not None:
        return bucket_key(plan.target_size)
    size = getattr(item, "target_size", None)
    if size is not None:
        return bucket_key(size)
    raise TypeError(f"cannot find the bucket of {item!r}; pass key=")


def _sort_key(key: str) -> tuple:
    try:
        w, h = parse_bucket_key(key)
        return (0, w * h, w, h, key)
    except ValueError:
        return (1, 0, 0, 0, key)


def group_by_bucket(items: Sequence[T], key: Callable[[T], str] = _default_key) -> dict[str, list[T]]:
    """Items grouped by bucket; buckets ordered by area then width, items in input order."""
    groups: dict[str, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return {k: groups[k] for k in sorted(groups, key=_sort_key)}


@dataclass(frozen=True)
class BucketReport:
    """How many images of a dataset can actually be trained on."""

    name: str
    bucket_counts: dict[str, int]
    batch_size: int
    grad_accum: int
    world_size: int

    @property
    def per_batch(self) -> int:
        """Images one bucket needs to fill one (global) micro-batch."""
        return self.batch_size * self.world_size

    @property
    def required(self) -> int:
        """Images one optimizer step consumes."""
        return self.batch_size * self.grad_accum * self.world_size

    @property
    def dropped(self) -> dict[str, int]:
        """Buckets too small to ever fill a batch."""
        return {k: n for k, n in self.bucket_counts.items() if n < self.per_batch}

    @property
    def usable(self) -> int:
        return sum(n for n in self.bucket_counts.values() if n >= self.per_batch)

    @property
    def batches_per_epoch(self) -> int:
        """Global micro-batches per epoch (each bucket's remainder is left out)."""
        return sum(n // self.per_batch for n in self.bucket_counts.values())

    @property
    def ok(self) -> bool:
        return self.usable >= self.required

    def fixes(self, square_set: bool = False) -> list[str]:
        """The changes to the batch that would let this dataset fill one optimizer step, only
        those not already made: lowering a factor that is 1 helps nothing, and with `square_set`
        (crop: true and cropAspect: square) all images already share one bucket."""
        fixes = ["add images"]
        if not self.bucket_counts:  # no image reached a bucket: the batch is not what stops it
            return fixes
        if self.batch_size > 1:
            fixes.append("lower spec.training.batchSize")
        if self.grad_accum > 1:
            fixes.append("lower spec.training.gradientAccumulationSteps")
        if self.world_size > 1:
            fixes.append("train on fewer GPUs")
        if self.dropped and len(self.bucket_counts) > 1 and not square_set:
            fixes.append("use cropAspect: square (with crop: true) so all images share one bucket")
        return fixes

    def message(self, cause: str | None = None, fixes: Sequence[str] | None = None) -> str | None:
        """None when one optimizer step fills; else the counts, then `cause` (why images are
        missing, e.g. the skipped ones, named), then `fixes` (default: self.fixes())."""
        if self.ok:
            return None
        factors = f"batchSize {self.batch_size} x gradientAccumulationSteps {self.grad_accum}"
        factors += f" x {self.world_size} GPU{'s' if self.world_size != 1 else ''}"
        total = sum(self.bucket_counts.values())
        if self.bucket_counts:
            counts = ", ".join(f"{k}: {n}" for k, n in sorted(self.bucket_counts.items(), key=lambda kv: _sort_key(kv[0])))
        else:
            counts = "none"
        text = (f"dataset {self.name!r} has {self.usable} usable image(s) but one optimizer step needs "
                f"{self.required} ({factors}); images per bucket: {counts}")
        if self.dropped:
            text += (f"; buckets with fewer than {self.per_batch} image(s) (batchSize x GPUs) can never fill a "
                     f"batch and are dropped ({sum(self.dropped.values())} of {total} image(s))")
        if cause:
            text += f"; {cause}"
        fixes = self.fixes() if fixes is None else fixes
        return f"{text}. Fix: {_or_list(fixes)}"


def _or_list(items: Sequence[str]) -> str:
    """["a", "b", "c"] -> "a, b or c"."""
    items = list(dict.fromkeys(items))
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def bucket_report(name: str, bucket_counts: dict[str, int], batch_size: int, grad_accum: int,
                  world_size: int) -> BucketReport:
    for label, value in (("batch_size", batch_size), ("grad_accum", grad_accum), ("world_size", world_size)):
        if value < 1:
            raise ValueError(f"{label} must be >= 1, got {value}")
    return BucketReport(name=name, bucket_counts=dict(bucket_counts), batch_size=batch_size,
                        grad_accum=grad_accum, world_size=world_size)


def check_dataset_size(name: str, bucket_counts: dict[str, int], batch_size: int, grad_accum: int,
                       world_size: int) -> str | None:
    """None if the dataset fills at least one optimizer step, else a message saying why not
    and what to change. Buckets smaller than batch_size*world_size are not counted."""
    return bucket_report(name, bucket_counts, batch_size, grad_accum, world_size).message()


# ----------------------------------------------------------------------------- sampler

def _rng(seed: int, epoch: int) -> random.Random:
    digest = hashlib.sha256(f"bucket-batches:{seed}:{epoch}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def global_bucket_batches(bucket_to_indices: dict[str, list[int]], batch_size: int, world_size: int,
                          seed: int, epoch: int) -> list[tuple[str, list[int]]]:
    """The epoch's global batches as (bucket, batch_size*world_size indices), same on every rank."""
    if batch_size < 1 or world_size < 1:
        raise ValueError(f"batch_size and world_size must be >= 1, got {batch_size} and {world_size}")
    rng = _rng(seed, epoch)
    size = batch_size * world_size
    batches: list[tuple[str, list[int]]] = []
    for key in sorted(bucket_to_indices, key=_sort_key):
        indices = list(bucket_to_indices[key])
        rng.shuffle(indices)
        for start in range(0, len(indices) - size + 1, size):
            batches.append((key, indices[start:start + size]))
    rng.shuffle(batches)
    return batches


def bucket_batches_with_keys(bucket_to_indices: dict[str, list[int]], batch_size: int, world_size: int,
                             rank: int, seed: int, epoch: int) -> list[tuple[str, list[int]]]:
    """This rank's batches with their bucket keys."""
    if not 0 <= rank < max(world_size, 1):
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    lo, hi = rank * batch_size, (rank + 1) * batch_size
    return [(key, batch[lo:hi]) for key, batch in
            global_bucket_batches(bucket_to_indices, batch_size, world_size, seed, epoch)]


def bucket_batches(bucket_to_indices: dict[str, list[int]], batch_size: int, world_size: int, rank: int,
                   seed: int, epoch: int) -> list[list[int]]:
    """This rank's batches for one epoch.

    Indices are shuffled within each bucket and the batch order is shuffled, both determined
    by (seed, epoch) alone. Each global batch (batch_size*world_size indices) comes from one
    bucket; incomplete global batches are dropped; rank r takes slice [r*batch_size,
    (r+1)*batch_size) of each, so all ranks get the same number of batches, disjoint indices,
    and the same bucket at each step."""
    return [batch for _, batch in
            bucket_batches_with_keys(bucket_to_indices, batch_size, world_size, rank, seed, epoch)]


# ----------------------------------------------------------------------------- smoke sample

def stratified_sample(items: Sequence[T], n: int, key: Callable[[T], str] = _default_key, seed: int = 0) -> list[T]:
    """Up to `n` items spread over their buckets in proportion to each bucket's size, every
    bucket getting one first while `n` allows (so a smoke run meets each aspect the real run
    will): the largest buckets get theirs first when there are more buckets than `n`.
    Which items of a bucket are taken depends on (seed, input order) alone; the result keeps
    the input order."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n >= len(items):
        return list(items)
    groups = group_by_bucket(list(range(len(items))), key=lambda i: key(items[i]))
    by_size = sorted(groups, key=lambda b: (-len(groups[b]), _sort_key(b)))
    quota = {b: 0 for b in groups}
    for b in by_size[:n]:
        quota[b] = 1
    left = n - sum(quota.values())
    if left:
        # Largest remainder over what each bucket can still give, proportional to its size.
        spare = {b: len(groups[b]) - quota[b] for b in groups}
        total = sum(spare.values())
        shares = {b: left * spare[b] / total for b in groups}
        for b in groups:
            quota[b] += int(shares[b])
        rest = n - sum(quota.values())
        for b in sorted(groups, key=lambda b: (-(shares[b] - int(shares[b])), _sort_key(b)))[:rest]:
            quota[b] += 1
    rng = _rng(seed, 0)
    chosen: list[int] = []
    for b in groups:
        members = list(groups[b])
        rng.shuffle(members)
        chosen += members[:quota[b]]
    return [items[i] for i in sorted(chosen)]
