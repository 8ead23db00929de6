"""The torchrun launcher's pure parts: topology from spec + environment, the torchrun command
line, exit codes, cache shards per node, and which node writes the cache manifest."""
from __future__ import annotations

import pytest

from runner.launch import torchrun
from runner.launch.nodes import node_shards_done
from runner.launch.torchrun import (
    Topology,
    cache_shard,
    exit_code,
    not_restarted_message,
    restart_helps,
    topology,
    torchrun_argv,
)


def hw(gpus: int = 1, nodes: int = 1) -> dict:
    return {"accelerator": "cpu", "gpusPerNode": gpus, "nodes": nodes}


@pytest.mark.parametrize("gpus, nodes, stage, env, expected", [
    (2, 1, "train", {}, Topology(nproc=2)),
    (2, 1, "cache", {}, Topology(nproc=2)),
    # A pod of a multi-node train Job: its index, pod 0's stable name, its own IP for peers.
    (4, 2, "train", {"JOB_COMPLETION_INDEX": "1", "MASTER_ADDR": "tj-train-0.tj-train", "POD_IP": "10.1.2.3"},
     Topology(nproc=4, nnodes=2, node_rank=1, endpoint="tj-train-0.tj-train:29500", local_addr="10.1.2.3")),
    (1, 3, "train", {"JOB_COMPLETION_INDEX": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "4242"},
     Topology(nproc=1, nnodes=3, node_rank=0, endpoint="127.0.0.1:4242")),
    # Cache pods never rendezvous with each other: their shards are independent.
    (4, 2, "cache", {"JOB_COMPLETION_INDEX": "1", "MASTER_ADDR": "x"}, Topology(nproc=4, nnodes=1, node_rank=1)),
    # One node: no MASTER_ADDR needed, and one given is ignored (the local rendezvous picks a free port).
    (8, 1, "train", {"MASTER_ADDR": "elsewhere", "MASTER_PORT": "29500"}, Topology(nproc=8)),
])
def test_topology(gpus, nodes, stage, env, expected):
    assert topology(hw(gpus, nodes), stage, env) == expected


def test_multi_node_without_a_master_address_says_what_to_set():
    with pytest.raises(torchrun.LaunchError, match="MASTER_ADDR.*JOB_COMPLETION_INDEX"):
        topology(hw(2, 2), "train", {"JOB_COMPLETION_INDEX": "0"})


def _flags(argv: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)


def test_single_node_argv_uses_a_free_local_port_and_tees_prefixed_logs():
    argv = torchrun_argv(Topology(nproc=2), ["runner", "run", "s.yaml", "--stage", "train"], run_id="job",
                         log_dir="/out/logs", role="trainer", max_restarts=0)
    flags = _flags(argv)
    assert flags["nproc-per-node"] == "2" and flags["max-restarts"] == "0"
    assert flags["rdzv-backend"] == "c10d" and flags["rdzv-endpoint"] == "localhost:0"  # port 0 = any free one
    assert flags["tee"] == "3" and flags["log-dir"] == "/out/logs"
    assert int(flags["shutdown-timeout"]) == torchrun.SHUTDOWN_TIMEOUT_S
    assert "nnodes" not in flags and "local-addr" not in flags
    assert argv[-6:] == ["--module", "runner", "run", "s.yaml", "--stage", "train"]


@pytest.mark.parametrize("rank, is_host", [(0, "true"), (1, "false"), (3, "false")])
def test_multi_node_argv_meets_at_pod_zero(rank, is_host):
    topo = Topology(nproc=4, nnodes=4, node_rank=rank, endpoint="tj-train-0.tj-train:29500", local_addr="10.0.0.9")
    flags = _flags(torchrun_argv(topo, ["runner"], run_id="uid-123", log_dir="/l", role="trainer", max_restarts=3))
    assert flags["nnodes"] == "4" and flags["rdzv-backend"] == "c10d"
    assert flags["rdzv-endpoint"] == "tj-train-0.tj-train:29500" and flags["rdzv-id"] == "uid-123"
    conf = dict(kv.split("=") for kv in flags["rdzv-conf"].split(","))
    assert conf["is_host"] == is_host  # only pod 0 serves the rendezvous store
    assert int(conf["join_timeout"]) >= 600  # scheduling N GPU pods takes a while
    assert flags["local-addr"] == "10.0.0.9" and flags["max-restarts"] == "3"


def test_argv_is_what_torchrun_itself_parses():
    """The command line is torchrun's own: its parser accepts it and reads the values back."""
    from torch.distributed.run import parse_args

    topo = Topology(nproc=2, nnodes=2, node_rank=1, endpoint="h:1234", local_addr="127.0.0.1")
    args = parse_args(torchrun_argv(topo, ["runner", "run", "f.yaml"], run_id="r", log_dir="/tmp/l",
                                    role="trainer", max_restarts=3))
    assert (args.nnodes, args.nproc_per_node, args.rdzv_endpoint, args.max_restarts) == ("2", "2", "h:1234", 3)
    assert args.module and args.training_script == "runner" and args.training_script_args == ["run", "f.yaml"]
    assert args.shutdown_timeout == torchrun.SHUTDOWN_TIMEOUT_S and args.local_addr == "127.0.0.1"


def test_argv_for_a_torchrun_without_shutdown_timeout_leaves_the_flag_out():
    """torch 2.11's torchrun refuses --shutdown-timeout (seen on the device: exit 2, "unrecognized
    arguments"); its argv is otherwise the same."""
    topo = Topology(nproc=2)
    old = torchrun_argv(topo, ["runner"], run_id="r", log_dir="/l", role="cache", max_restarts=0, shutdown_timeout=False)
    new = torchrun_argv(topo, ["runner"], run_id="r", log_dir="/l", role="cache", max_restarts=0)
    assert not any(a.startswith("--shutdown-timeout") for a in old)
    assert [a for a in new if not a.startswith("--shutdown-timeout")] == old


def test_the_installed_torchrun_is_asked_whether_it_has_shutdown_timeout():
    """The check reads torch's own launcher config, and agrees with torchrun's parser."""
    from torch.distributed.run import parse_args

    has = torchrun.has_shutdown_timeout()
    assert has == hasattr(parse_args(["x"]), "shutdown_timeout")


@pytest.mark.parametrize("codes, expected", [
    ([0, 0], 0),
    ([1], 1),
    ([143, 143], 143),         # every rank stopped on SIGTERM after the checkpoint
    ([143, -15], 143),         # torchrun SIGTERMed the slower one: still a stop
    ([-9], 137),               # killed (OOM killer) -> 128 + 9
    ([143, 1], 1),             # a real failure wins over the stop it caused
    ([-15, 2], 2),
    ([1, 2], 2),               # bad input wins: the peer's exit 1 (its collective lost a rank) follows from it
    ([-9, 2, 143], 2),         # ... and so do the agent's SIGTERM/SIGKILL to the slower workers
    ([3, 3], 3),               # every rank diverged at the same step (the verdict is all-reduced)
    ([1, 3], 3),               # one rank out of GPU memory, its peer lost it mid collective
    ([-15, 3, 143], 3),        # ... or was stopped by the agent
    ([3, 2], 2),               # bad input still names the cause first
])
def test_exit_code(codes, expected):
    assert exit_code(codes) == expected


@pytest.mark.parametrize("codes, helps", [
    ([1], True),               # a crash: CUDA error, an exception of ours
    ([-9], True),              # the OOM killer
    ([1, -15], True),          # a peer pod evicted: the survivors' collectives fail
    ([2], False),              # bad input: every restart meets it again
    ([2, 1], False),
    ([-15, 2], False),
    ([3], False),              # diverged or out of GPU memory: the restart would very likely meet it again
    ([1, 3], False),
])
def test_a_restart_is_spent_on_crashes_only(codes, helps):
    assert restart_helps(codes) is helps


def test_the_not_restarted_message_names_the_ranks_and_why_nothing_restarted():
    msg = not_restarted_message("tj", "train", 2, [1, 0], max_restarts=3)
    assert msg.startswith("[tj] train stage: bad input, see the error of ranks 0, 1 above (exit 2)")
    assert "not restarted" in msg
    assert "restart" not in not_restarted_message("tj", "cache", 2, [0], max_restarts=0)  # locally there are none
    msg = not_restarted_message("tj", "train", 3, [0], max_restarts=3)
    assert msg.startswith("[tj] train stage: a failure that a retry would repeat, see the error of rank 0 above "
                          "(exit 3)") and "not restarted" in msg


@pytest.mark.parametrize("env, nodes, expected", [
    ({"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}, 1, (0, 2)),
    ({"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, 1, (1, 2)),
    ({"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "JOB_COMPLETION_INDEX": "2"}, 3, (9, 12)),
    ({"JOB_COMPLETION_INDEX": "1"}, 2, (1, 2)),  # one process per pod: the pod is the shard
    ({}, 1, (0, 1)),
])
def test_cache_shard(env, nodes, expected):
    assert cache_shard(env, nodes) == expected


def test_every_worker_of_every_node_owns_one_distinct_shard():
    nodes, per_node = 3, 4
    shards = {cache_shard({"JOB_COMPLETION_INDEX": str(n), "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": str(per_node)},
                          nodes) for n in range(nodes) for r in range(per_node)}
    assert shards == {(i, nodes * per_node) for i in range(nodes * per_node)}


def test_the_last_node_to_finish_writes_the_manifest(tmp_path):
    def done(node: int, run: str = "run-a") -> bool:
        return node_shards_done(tmp_path, "job", 3, {"JOB_COMPLETION_INDEX": str(node), "TRAININGJOB_RUN_ID": run})

    assert [done(2), done(0), done(1)] == [False, False, True]
    assert done(0)  # a retried pod of the same run sees the others' markers too
    # Markers are per run: a new cache Job does not count the old one's.
    assert [done(0, "run-b"), done(1, "run-b")] == [False, False]


def _wandb_spec(enabled: bool, key_env: str = "WANDB_API_KEY") -> dict:
    return {"tracking": {"wandb": {"enabled": enabled, "project": "p", "apiKeyEnv": key_env}}}


def test_tracker_problems_name_the_missing_key_and_never_its_value(monkeypatch):
    from runner.launch.run import tracker_problems

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

    from runner.cache.stage import Shard

    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(400)]
    owners = [[i for i in range(count) if Shard(i, count).owns(k)] for k in keys]
    assert all(len(o) == 1 for o in owners)  # every entry is encoded by exactly one worker
    if count > 1:
        sizes = [sum(o == [i] for o in owners) for i in range(count)]
        assert min(sizes) > 400 / count / 2  # and the work is spread


@pytest.mark.parametrize("error, cause", [
    (RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:19373. This is typically "
                  "caused by a remote worker crashing."), "RuntimeError: Connection closed by peer"),
    (RuntimeError("[pair.cc:598] Connection reset by peer"), "RuntimeError: Connection reset by peer"),
    (RuntimeError("NCCL error: remote process exited or there was a network error"),
     "RuntimeError: remote process exited"),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), None),  # a bug of ours stays one
    (ValueError("Connection closed by peer"), None),  # not what torch.distributed raises
])
def test_lost_peer_picks_out_a_collective_whose_peer_is_gone(error, cause):
    from runner.launch.outcomes import lost_peer

    assert lost_peer(error) == cause


def test_out_of_gpu_memory_names_the_fields_of_the_stage_it_ran_out_in(tmp_path, minimal_spec):
    """Exit 3 is not retried, so the message is the user's only way on: the spec fields of the
    stage that ran out, with their values, and only the fixes not already made."""
    from runner.launch.outcomes import out_of_gpu_memory
    from runner.spec.load import load_spec

    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(minimal_spec)
    spec = load_spec(spec_file, ["spec.hardware.gpusPerNode=2", "spec.training.ddp.gradientAsBucketView=false",
                                 "spec.model.vaeDtype=float32"]).spec.to_dict()
    train = out_of_gpu_memory(spec, "train")
    assert train.startswith("out of GPU memory in the train stage. To fix it: lower spec.training.batchSize (now ")
    for field in ("spec.training.gradientAccumulationSteps", "spec.training.gradientCheckpointing: true",
                  "spec.training.optimizer: adafactor", "spec.training.ddp.gradientAsBucketView: true",
                  "spec.datasets[].resolution", "would run out of memory at the same point again"):
        assert field in train, field
    cache = out_of_gpu_memory(spec, "cache")
    assert cache.startswith("out of GPU memory in the cache stage. To fix it: lower spec.model.vaeBatchSize (now ")
    assert "spec.model.vaeDtype: bfloat16 (now float32)" in cache and "textEncoderDtype" not in cache  # bf16 already
    assert "spec.training" not in cache and "encodes only the missing ones" in cache
    spec["training"].update(gradientCheckpointing=True, optimizer="adafactor")
    assert "gradientCheckpointing" not in out_of_gpu_memory(spec, "train")  # already done
