"""buckets.stratified_sample: a smoke's images spread over the real run's aspect buckets (pure)."""
from __future__ import annotations

from collections import Counter

import pytest

from runner.data.buckets import stratified_sample


def items(**counts: int) -> list[tuple[str, int]]:
    """(bucket, i) pairs: items(a=3, b=1) -> [("a", 0), ("a", 1), ("a", 2), ("b", 0)]."""
    return [(bucket, i) for bucket, n in counts.items() for i in range(n)]


def bucket(item) -> str:
    return item[0]


def per_bucket(chosen) -> dict[str, int]:
    return dict(Counter(bucket(x) for x in chosen))


@pytest.mark.parametrize("counts, n, expected", [
    ({"512x512": 12, "768x512": 3, "512x768": 2}, 8, {"512x512": 5, "768x512": 2, "512x768": 1}),
    # every bucket first, even a single-image one, before proportions
    ({"512x512": 100, "768x512": 1}, 2, {"512x512": 1, "768x512": 1}),
    ({"512x512": 100, "768x512": 1}, 5, {"512x512": 4, "768x512": 1}),
    # more buckets than n: the largest get one
    ({"512x512": 5, "768x512": 3, "512x768": 1}, 2, {"512x512": 1, "768x512": 1}),
    # n covers everything: all of it
    ({"512x512": 2, "768x512": 1}, 8, {"512x512": 2, "768x512": 1}),
    ({"512x512": 4}, 0, {}),
])
def test_quotas_follow_bucket_sizes(counts, n, expected):
    chosen = stratified_sample(items(**counts), n, key=bucket)
    assert per_bucket(chosen) == expected
    assert len(chosen) == min(n, sum(counts.values()))


def test_deterministic_for_a_seed_and_in_input_order():
    pool = items(**{"512x512": 30, "768x512": 10})
    a = stratified_sample(pool, 6, key=bucket, seed=1)
    assert a == stratified_sample(pool, 6, key=bucket, seed=1)
    assert a == sorted(a, key=pool.index)
    assert any(stratified_sample(pool, 6, key=bucket, seed=s) != a for s in range(2, 6))
    assert len(set(a)) == 6


def test_uses_the_planned_bucket_of_preflight_items_by_default():
    class Planned:  # the attribute preflight's PlannedItem carries
        def __init__(self, bucket):
            self.bucket = bucket

    pool = [Planned("1024x1024")] * 3 + [Planned("1216x832")]
    assert sorted(p.bucket for p in stratified_sample(pool, 2)) == ["1024x1024", "1216x832"]


def test_negative_n_is_refused():
    with pytest.raises(ValueError, match="n must be >= 0"):
        stratified_sample(items(a=1), -1, key=bucket)
