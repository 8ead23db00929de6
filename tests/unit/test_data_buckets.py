"""runner.data.buckets: grouping, the dataset-size check, and the epoch batch sampler."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from runner.data.buckets import (BucketReport, bucket_batches, bucket_batches_with_keys, bucket_key,
                                 bucket_report, check_dataset_size, group_by_bucket)
from runner.data.transforms import CropPlan


@pytest.mark.parametrize("size,key", [((192, 128), "192x128"), ((1024, 1024), "1024x1024"), ([64, 512], "64x512")])
def test_bucket_key(size, key):
    assert bucket_key(size) == key


@dataclass
class Item:
    name: str
    bucket: str


@dataclass
class Planned:
    name: str
    plan: CropPlan


def test_group_by_bucket_default_key_and_order():
    items = [Item("a", "192x128"), Item("b", "128x128"), Item("c", "192x128"), Item("d", "64x64")]
    groups = group_by_bucket(items)
    assert list(groups) == ["64x64", "128x128", "192x128"]  # by area
    assert [i.name for i in groups["192x128"]] == ["a", "c"]  # input order kept


def test_group_by_bucket_from_plan_and_custom_key():
    mk = lambda t: CropPlan((1, 1), None, t, (0, 0) + t, t)  # noqa: E731
    items = [Planned("x", mk((128, 64))), Planned("y", mk((64, 128))), Planned("z", mk((128, 64)))]
    assert {k: [i.name for i in v] for k, v in group_by_bucket(items).items()} == {"64x128": ["y"], "128x64": ["x", "z"]}
    assert group_by_bucket([1, 2, 3, 4], key=lambda n: "even" if n % 2 == 0 else "odd") == {"even": [2, 4], "odd": [1, 3]}


def test_group_by_bucket_unknown_item():
    with pytest.raises(TypeError, match="key="):
        group_by_bucket([object()])


# name, counts, batch, accum, world -> None or fragments of the message
SIZE_CASES = [
    ("ok-single", {"128x128": 4}, 2, 2, 1, None),
    ("ok-exact", {"128x128": 8}, 2, 2, 2, None),
    ("ok-two-buckets", {"128x128": 2, "192x128": 2}, 2, 2, 1, None),
    ("too-few", {"128x128": 3}, 2, 2, 1, ["3 usable", "needs 4", "batchSize 2 x gradientAccumulationSteps 2 x 1 GPU)",
                                          "128x128: 3"]),
    ("bucket-dropped", {"128x128": 3, "192x128": 1}, 2, 2, 1,
     ["3 usable", "needs 4", "128x128: 3, 192x128: 1", "fewer than 2 image(s)", "dropped (1 of 4"]),
    ("all-dropped-by-world", {"128x128": 3, "256x128": 3}, 2, 1, 2,
     ["0 usable", "needs 4", "x 2 GPUs", "fewer than 4"]),
    ("empty", {}, 1, 1, 1, ["0 usable", "needs 1", "images per bucket: none"]),
]


@pytest.mark.parametrize("name,counts,batch,accum,world,expected", SIZE_CASES, ids=[c[0] for c in SIZE_CASES])
def test_check_dataset_size(name, counts, batch, accum, world, expected):
    msg = check_dataset_size(name, counts, batch, accum, world)
    if expected is None:
        assert msg is None
        return
    assert msg is not None
    assert f"dataset {name!r}" in msg
    for fragment in expected:
        assert fragment in msg, (fragment, msg)
    if not counts:  # nothing reached a bucket: the batch sizes are not the problem
        assert msg.endswith(". Fix: add images"), msg
        return
    assert ". Fix: add images" in msg


# counts, batch, accum, world, square already set -> the fixes offered (only changes not already made)
FIX_CASES = [
    ("nothing-bucketed", {}, 2, 2, 2, False, ["add images"]),
    ("all-factors-1-one-bucket", {"128x128": 0}, 1, 1, 1, False, ["add images"]),
    ("batch-only", {"128x128": 3}, 4, 1, 1, False, ["add images", "lower spec.training.batchSize"]),
    ("accum-only", {"128x128": 3}, 1, 4, 1, False, ["add images", "lower spec.training.gradientAccumulationSteps"]),
    ("gpus", {"128x128": 3}, 1, 1, 4, False, ["add images", "train on fewer GPUs"]),
    ("buckets-dropped", {"128x128": 3, "192x128": 1}, 2, 2, 1, False,
     ["add images", "lower spec.training.batchSize", "lower spec.training.gradientAccumulationSteps",
      "use cropAspect: square (with crop: true) so all images share one bucket"]),
    ("square-already-set", {"128x128": 3, "192x128": 1}, 2, 2, 1, True,
     ["add images", "lower spec.training.batchSize", "lower spec.training.gradientAccumulationSteps"]),
    ("one-bucket-square-cannot-help", {"128x128": 1}, 2, 1, 1, False, ["add images", "lower spec.training.batchSize"]),
]


@pytest.mark.parametrize("counts,batch,accum,world,square,expected", [c[1:] for c in FIX_CASES],
                         ids=[c[0] for c in FIX_CASES])
def test_fixes_offer_only_changes_not_already_made(counts, batch, accum, world, square, expected):
    assert bucket_report("d", counts, batch, accum, world).fixes(square_set=square) == expected


def test_message_puts_the_cause_before_the_fixes():
    msg = bucket_report("d", {"128x128": 1}, 2, 1, 1).message(cause="1 of 2 image(s) skipped: 1 truncated (b.jpg)",
                                                              fixes=["copy b.jpg again", "add images"])
    assert msg.endswith("; 1 of 2 image(s) skipped: 1 truncated (b.jpg). Fix: copy b.jpg again or add images"), msg


def test_bucket_report_numbers():
    r = bucket_report("d", {"a": 5, "b": 3, "c": 9}, batch_size=2, grad_accum=3, world_size=2)
    assert isinstance(r, BucketReport)
    assert (r.per_batch, r.required, r.usable, r.dropped, r.batches_per_epoch) == (4, 12, 14, {"b": 3}, 3)
    assert r.ok and r.message() is None


@pytest.mark.parametrize("bad", [dict(batch_size=0), dict(grad_accum=0), dict(world_size=0)])
def test_bucket_report_rejects_nonpositive(bad):
    kw = dict(batch_size=1, grad_accum=1, world_size=1) | bad
    with pytest.raises(ValueError):
        bucket_report("d", {"a": 1}, **kw)


# ----------------------------------------------------------------------------- sampler

BUCKETS = {"128x128": list(range(0, 11)), "192x128": list(range(11, 18)), "256x128": [18, 19], "64x64": [20]}


@pytest.mark.parametrize("batch,world", [(1, 1), (2, 1), (3, 1), (1, 2), (2, 2), (2, 3), (1, 4), (4, 2)])
def test_every_rank_gets_equal_counts_disjoint_items_same_bucket(batch, world):
    per_rank = [bucket_batches_with_keys(BUCKETS, batch, world, r, seed=7, epoch=3) for r in range(world)]
    g = batch * world
    expected_batches = sum(len(v) // g for v in BUCKETS.values())
    assert all(len(b) == expected_batches for b in per_rank)
    seen: list[int] = []
    for step in range(expected_batches):
        keys = {per_rank[r][step][0] for r in range(world)}
        assert len(keys) == 1  # same bucket on every rank at each step
        key = keys.pop()
        for r in range(world):
            batch_items = per_rank[r][step][1]
            assert len(batch_items) == batch
            assert set(batch_items) <= set(BUCKETS[key])
            seen.extend(batch_items)
    assert len(seen) == len(set(seen))  # disjoint across ranks and steps
    assert len(seen) == expected_batches * g
    # plain API matches
    assert bucket_batches(BUCKETS, batch, world, 0, 7, 3) == [b for _, b in per_rank[0]]


def test_deterministic_for_seed_and_epoch_and_varies_otherwise():
    a = bucket_batches(BUCKETS, 2, 1, 0, seed=1, epoch=0)
    assert a == bucket_batches(BUCKETS, 2, 1, 0, seed=1, epoch=0)
    assert a == bucket_batches({k: BUCKETS[k] for k in reversed(list(BUCKETS))}, 2, 1, 0, seed=1, epoch=0)
    assert a != bucket_batches(BUCKETS, 2, 1, 0, seed=1, epoch=1)
    assert a != bucket_batches(BUCKETS, 2, 1, 0, seed=2, epoch=0)


def test_shuffles_within_bucket_and_batch_order():
    big = {"a": list(range(100)), "b": list(range(100, 200))}
    batches = bucket_batches(big, 4, 1, 0, seed=0, epoch=0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(200))
    assert flat != sorted(flat)
    order = ["a" if b[0] < 100 else "b" for b in batches]
    assert order != sorted(order)  # buckets interleaved, not a then b


def test_drops_incomplete_global_batches_and_small_buckets():
    counts = Counter()
    for epoch in range(30):
        for b in bucket_batches(BUCKETS, 4, 1, 0, seed=0, epoch=epoch):
            counts.update(b)
    assert not ({18, 19, 20} & set(counts))  # buckets of 2 and 1 never fill a batch of 4
    assert set(range(0, 18)) == set(counts)  # remainders rotate across epochs


@pytest.mark.parametrize("batch,world,rank", [(0, 1, 0), (1, 0, 0), (1, 2, 2), (1, 2, -1)])
def test_sampler_rejects_bad_arguments(batch, world, rank):
    with pytest.raises(ValueError):
        bucket_batches(BUCKETS, batch, world, rank, 0, 0)


def test_empty_input():
    assert bucket_batches({}, 2, 2, 1, 0, 0) == []
