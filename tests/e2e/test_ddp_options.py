"""spec.training.ddp through the real train stage: two gloo workers launched by torchrun, with
gradient checkpointing, gradient accumulation (no_sync) and clipping on. Other DDP options give
the same weights as the defaults. (tests/unit/test_ddp_options.py: the wrapper's attributes
and several buckets on a larger model.)"""
from __future__ import annotations

import pytest
import torch

from tests.e2e.conftest import assert_clean
from tests.e2e.train_state import exported_weights, quiet_env, run, runner_with_cache, shared_cache

pytestmark = pytest.mark.e2e

BASE = ("spec.hardware.gpusPerNode=2", "spec.training.batchSize=1", "spec.training.maxSteps=2",
        "spec.training.checkpointEvery=2", "spec.training.gradientCheckpointing=true",
        "spec.training.maxGradNorm=0.5", "spec.validation.prompts=[]", "spec.tracking.tensorboard=false")
OTHER = ("spec.training.ddp.bucketCapMB=1", "spec.training.ddp.gradientAsBucketView=false",
         "spec.training.ddp.findUnusedParameters=true")


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_model):
    return shared_cache(tmp_path_factory, tiny_model)


def _train(tmp_path, tiny_model, cache, name: str, *sets: str):
    runner = runner_with_cache(tmp_path / name, tiny_model, cache)
    proc = run(runner, *BASE, *sets, env=quiet_env(runner))
    assert_clean(proc)
    return proc.stdout, exported_weights(runner.out)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def test_other_bucket_view_and_unused_search_train_the_same_with_accumulation(tmp_path, tiny_model, cache):
    log, defaults = _train(tmp_path, tiny_model, cache, "defaults", "spec.training.gradientAccumulationSteps=2")
    assert ("data parallel: DistributedDataParallel over 2 processes, bucketCapMB 25, gradientAsBucketView true, "
            "staticGraph false, findUnusedParameters false") in log
    log, other = _train(tmp_path, tiny_model, cache, "other", "spec.training.gradientAccumulationSteps=2", *OTHER)
    assert "bucketCapMB 1, gradientAsBucketView false, staticGraph false, findUnusedParameters true" in log
    assert _same(other, defaults) == []


def test_static_graph_trains_the_same_with_gradient_checkpointing(tmp_path, tiny_model, cache):
    _, defaults = _train(tmp_path, tiny_model, cache, "defaults")
    log, static = _train(tmp_path, tiny_model, cache, "static", "spec.training.ddp.staticGraph=true")
    assert "staticGraph true" in log
    assert _same(static, defaults) == []
