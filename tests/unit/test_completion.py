"""When a job counts as finished (so that its rerun does nothing), as a table."""
from __future__ import annotations

import pytest

from runner.train.completion import is_finished


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
