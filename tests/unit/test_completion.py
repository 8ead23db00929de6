"""When a job counts as finished (so that its rerun does nothing), as tables."""
from __future__ import annotations

from pathlib import Path

import pytest

from runner.spec.load import load_spec
from runner.spec.plan import cache_fingerprint, job_paths
from runner.train.completion import is_finished, planned_total_steps


@pytest.mark.parametrize("recorded, newest, total, exported, finished", [
    (20, 20, 20, True, True),
    (None, 20, 20, True, False),   # killed during the export or the Hub push: no record yet
    (20, 20, 20, False, False),    # the export was deleted
    (20, 20, 30, True, False),     # maxSteps (or epochs) raised: train the difference
    (20, 20, 10, True, False),     # lowered: not this job's end either
    (20, 16, 20, True, False),     # the final checkpoint is damaged: resume from 16
    (20, 24, 20, True, False),     # a newer checkpoint from a later, longer run
    (20, None, 20, True, False),   # no usable checkpoint at all
    (20, 20, None, True, False),   # the cache does not match the spec (yet)
])
def test_is_finished(recorded, newest, total, exported, finished) -> None:
    assert is_finished(recorded, newest, total, exported) is finished


# ----------------------------------------------------------------------------- planned_total_steps

SMOKE = Path(__file__).resolve().parents[2] / "examples" / "smoke.yaml"


def _spec(tmp_path: Path, *sets: str) -> dict:
    return load_spec(SMOKE, [f"spec.cacheDir={tmp_path / 'cache'}", f"spec.output.dir={tmp_path / 'out'}",
                             *sets]).spec.to_dict()


@pytest.mark.parametrize("sets, trained_on_cache, total", [
    # 6 images in two buckets of 3, batch 2: 2 steps per epoch, so epochs 2 plan 4 (under maxSteps 20).
    (("spec.training.epochs=2",), True, 4),
    # Another resolution has no cache yet: the steps are counted in the data the finished run trained on.
    (("spec.training.epochs=2", "spec.datasets.0.resolution=192"), True, 4),
    # A record from before the record named its cache: only the spec's own cache counts, and there is none.
    (("spec.training.epochs=2", "spec.datasets.0.resolution=192"), False, None),
    # maxSteps alone: no cache is needed to know the end.
    (("spec.datasets.0.resolution=192",), False, 20),
])
def test_planned_total_steps_counts_the_data_the_run_trained_on(tmp_path: Path, sets, trained_on_cache, total) -> None:
    from runner.files import atomic_write_json
    from tests.unit.test_training_data import _write_cache

    trained = _spec(tmp_path, "spec.training.epochs=2")
    fingerprint = cache_fingerprint(trained)
    atomic_write_json(job_paths(trained).manifest(fingerprint),
                      {**_write_cache(tmp_path / "cache"), "cache_fingerprint": fingerprint})
    assert planned_total_steps(_spec(tmp_path, *sets), fingerprint if trained_on_cache else None) == total
