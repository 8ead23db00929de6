"""The data-parallel launcher's per-worker environment (torch.distributed env://)."""
from __future__ import annotations

import copy

import pytest

from runner.stages.run import worker_env


@pytest.mark.parametrize("local_rank, gpus, nodes, node_rank, rank, world", [
    (0, 1, 1, 0, 0, 1),
    (0, 2, 1, 0, 0, 2),
    (1, 2, 1, 0, 1, 2),
    (3, 4, 2, 0, 3, 8),
    (0, 4, 2, 1, 4, 8),
    (3, 4, 2, 1, 7, 8),
    (5, 8, 4, 2, 21, 32),
    (7, 8, 4, 3, 31, 32),
])
def test_ranks(local_rank: int, gpus: int, nodes: int, node_rank: int, rank: int, world: int) -> None:
    env = worker_env({}, local_rank=local_rank, gpus=gpus, nodes=nodes, node_rank=node_rank)
    assert env["RANK"] == str(rank)
    assert env["WORLD_SIZE"] == str(world)
    assert env["LOCAL_RANK"] == str(local_rank)
    assert env["LOCAL_WORLD_SIZE"] == str(gpus)
    assert env["NODE_RANK"] == str(node_rank) == env["GROUP_RANK"]
    assert env["PYTHONUNBUFFERED"] == "1"
    assert all(isinstance(v, str) for v in env.values())


def test_all_ranks_of_a_job_are_unique_and_dense() -> None:
    gpus, nodes = 4, 3
    ranks = sorted(int(worker_env({}, local_rank=lr, gpus=gpus, nodes=nodes, node_rank=nr)["RANK"])
                   for nr in range(nodes) for lr in range(gpus))
    assert ranks == list(range(gpus * nodes))


@pytest.mark.parametrize("base, addr, port", [
    ({}, "127.0.0.1", "29500"),
    ({"MASTER_ADDR": "job-0.job-svc"}, "job-0.job-svc", "29500"),
    ({"MASTER_PORT": "12345"}, "127.0.0.1", "12345"),
    ({"MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "23456"}, "10.0.0.7", "23456"),
])
def test_master_address(base: dict, addr: str, port: str) -> None:
    env = worker_env(base, local_rank=0, gpus=2, nodes=1, node_rank=0)
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == (addr, port)


@pytest.mark.parametrize("base, expected", [
    ({"OMP_NUM_THREADS": "3"}, "3"),
    ({"OMP_NUM_THREADS": "1"}, "1"),
])
def test_omp_threads_kept(base: dict, expected: str) -> None:
    assert worker_env(base, local_rank=0, gpus=8, nodes=1, node_rank=0)["OMP_NUM_THREADS"] == expected


@pytest.mark.parametrize("gpus", [1, 2, 8, 1024])
def test_omp_threads_default_is_positive(gpus: int) -> None:
    threads = int(worker_env({}, local_rank=0, gpus=gpus, nodes=1, node_rank=0)["OMP_NUM_THREADS"])
    assert threads >= 1


def test_pure_keeps_base_and_does_not_mutate_it() -> None:
    base = {"PATH": "/usr/bin", "HF_HOME": "/cache/hf", "RANK": "99", "WORLD_SIZE": "99"}
    snapshot = copy.deepcopy(base)
    a = worker_env(base, local_rank=1, gpus=2, nodes=1, node_rank=0)
    b = worker_env(base, local_rank=1, gpus=2, nodes=1, node_rank=0)
    assert base == snapshot  # input untouched
    assert a == b and a is not base
    assert a["PATH"] == "/usr/bin" and a["HF_HOME"] == "/cache/hf"
    assert (a["RANK"], a["WORLD_SIZE"]) == ("1", "2")  # stale values in the parent env are overridden


def test_does_not_read_os_environ(monkeypatch) -> None:
    monkeypatch.setenv("MASTER_ADDR", "from-os-environ")
    monkeypatch.setenv("MASTER_PORT", "1")
    env = worker_env({}, local_rank=0, gpus=1, nodes=1, node_rank=0)
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("127.0.0.1", "29500")


def _wandb_spec(enabled: bool, key_env: str = "WANDB_API_KEY") -> dict:
    return {"tracking": {"wandb": {"enabled": enabled, "project": "p", "apiKeyEnv": key_env}}}


def test_tracker_problems_name_the_missing_key_and_never_its_value(monkeypatch):
    from runner.stages.run import tracker_problems

    assert tracker_problems(_wandb_spec(False)) == []
    monkeypatch.delenv("MY_WANDB", raising=False)
    problems = tracker_problems(_wandb_spec(True, "MY_WANDB"))
    assert any("MY_WANDB is empty" in p for p in problems)
    monkeypatch.setenv("MY_WANDB", "secret-value-123")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    problems = tracker_problems(_wandb_spec(True, "MY_WANDB"))
    assert not any("secret-value-123" in p for p in problems)
    assert not any("is empty" in p for p in problems)
    import os

    assert os.environ["WANDB_API_KEY"] == "secret-value-123"


@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_cache_shards_partition_the_keys(count):
    import hashlib

    from runner.stages.cache import Shard

    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(400)]
    owners = [[i for i in range(count) if Shard(i, count).owns(k)] for k in keys]
    assert all(len(o) == 1 for o in owners)  # every entry is encoded by exactly one worker
    if count > 1:
        sizes = [sum(o == [i] for o in owners) for i in range(count)]
        assert min(sizes) > 400 / count / 2  # and the work is spread
