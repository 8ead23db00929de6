"""Prometheus metrics over real HTTP: the series of names.py, one registry per instance, no
catch-all, cache progress as it goes (also summed from cache workers), and promtool's lint."""
from __future__ import annotations

import ast
import json
import math
import os
import socket
import sys
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from runner.cache.stage import CacheReport
from runner.observe import names as N
from runner.observe.metrics import Metrics
from runner.observe.runlog import read as read_log
from tests.observe_tools import free_port, promtool_check_metrics, sample, scrape

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def served():
    m = Metrics("x", port=free_port())
    yield m
    m.close()


def _port(m: Metrics) -> int:
    return m.server.server_address[1]


def exercise(m: Metrics) -> None:
    """Every call a run makes, in a run's order."""
    m.set_stage("cache")
    m.cache_planned("latent", total=10, todo=4)
    m.cache_done("latent", 4)
    m.cache_planned("text", total=3, todo=3)
    m.cache_done("text", 3)
    m.set_stage("train")
    m.train_started(total_steps=20, start_step=0, device=None)
    for step in (1, 2, 3):
        m.step_done(step, epoch=0, seconds=0.02 * step, samples=4)  # a global batch of 4
    m.train_progress(3, 20, 0.25, 12.5, lr=1e-4, grad_norm=0.75)
    m.checkpoint_saved(3, 1.5)
    m.validation_done(3, 4.0, {"validation/clip_score": 21.5})


def test_serves_every_series_of_names_py(served: Metrics) -> None:
    exercise(served)
    text = scrape(_port(served))
    j = {"trainingjob": "x"}
    assert sample(text, N.TRAIN_STEPS, **j) == 3.0
    assert sample(text, N.TRAIN_PLANNED_STEPS, **j) == 20.0
    assert sample(text, N.TRAIN_EPOCH, **j) == 0.0
    assert sample(text, N.TRAIN_LOSS, **j) == 0.25
    assert sample(text, N.TRAIN_LEARNING_RATE, **j) == 1e-4
    assert sample(text, N.TRAIN_GRAD_NORM, **j) == 0.75
    assert sample(text, N.TRAIN_SAMPLES_PER_SECOND, **j) == 12.5  # kept next to the counter rate() reads
    assert sample(text, N.TRAIN_SAMPLES, **j) == 12.0
    assert sample(text, N.TRAIN_STEP_DURATION + "_count", **j) == 3.0
    assert sample(text, N.TRAIN_STEP_DURATION + "_sum", **j) == pytest.approx(0.12)
    assert sample(text, N.TRAIN_STEP_DURATION + "_bucket", le="0.05", **j) == 2.0
    assert sample(text, N.CHECKPOINT_DURATION + "_count", **j) == 1.0
    assert sample(text, N.VALIDATION_DURATION + "_count", **j) == 1.0
    assert sample(text, N.VALIDATION_CLIP_SCORE, **j) == 21.5
    assert sample(text, N.CACHE_ITEMS, kind="latent", **j) == 10.0
    assert sample(text, N.CACHE_ITEMS_DONE, kind="latent", **j) == 10.0
    assert sample(text, N.CACHE_ITEMS_ENCODED, kind="latent", **j) == 4.0
    assert sample(text, N.CACHE_ITEMS_DONE, kind="text", **j) == 3.0
    assert sample(text, N.STAGE, stage="train", **j) == 1.0
    assert sample(text, N.STAGE, stage="cache", **j) == 0.0
    assert time.time() - 60 < sample(text, N.LAST_PROGRESS, **j) <= time.time()
    eta = sample(text, N.TRAIN_ETA, **j)
    assert eta is not None and 0 <= eta < 60
    # Every family of names.py is declared; on the CPU the GPU memory ones carry no sample.
    for s in N.SERIES:
        assert f"# TYPE {s.name} {s.type}" in text, s.name
    assert N.GPU_MEMORY_ALLOCATED + "{" not in text and N.GPU_MEMORY_PEAK + "{" not in text


def test_promtool_accepts_the_exposition(served: Metrics) -> None:
    exercise(served)
    result = promtool_check_metrics(scrape(_port(served)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_names_follow_prometheus_conventions() -> None:
    for s in N.SERIES:
        assert s.name.startswith(N.PREFIX), s.name
        assert s.name.endswith("_total") == (s.type == "counter"), s.name
        assert set(s.labels) <= {"stage", "phase", "rank", "kind"}, f"{s.name}: labels are trainingjob/stage/phase/rank/kind only"
        assert not any(w in s.name for w in ("_ms", "milli", "_mb", "_gb", "kilo")), f"{s.name}: base units"
    # Labels Prometheus attaches to every target (and, through Kubernetes service discovery and
    # the usual relabeling, to a pod's): a series label of that name is renamed exported_<name>
    # without honor_labels, and dashboards would then group by the scrape job.
    target_labels = {"job", "instance", "namespace", "pod", "container", "node", "service", "endpoint"}
    labels = {N.JOB_LABEL} | {label for s in N.SERIES for label in s.labels}
    assert not labels & target_labels, labels & target_labels
    assert N.JOB_LABEL == "trainingjob"
    assert len(N.BY_NAME) == len(N.SERIES)
    assert set(N.PROGRESS.values()) <= set(N.BY_NAME)


def test_names_module_is_standard_library_only() -> None:
    """The operator imports it without the training extras."""
    tree = ast.parse((REPO / "runner/observe/names.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert {m.split(".")[0] for m in imported} <= set(sys.stdlib_module_names) | {"__future__"}


def test_unknown_names_are_refused() -> None:
    m = Metrics("x")
    with pytest.raises(AttributeError):
        m.train_progres(1, 2, 0.5, 1.0)  # a misspelling fails loudly
    with pytest.raises(AttributeError):
        m.loss = 1.0
    with pytest.raises(ValueError, match="cache kind"):
        m.cache_planned("latents", 1, 1)


def test_not_serving_counts_the_same() -> None:
    """Port 0 (or a rank other than 0): the same class and calls, a registry nobody serves."""
    m = Metrics("x", port=0)
    assert m.server is None
    exercise(m)
    assert m.registry.get_sample_value(N.TRAIN_STEPS, {"trainingjob": "x"}) == 3.0
    m.close()
    m.close()


def test_after_a_resume_the_step_gauge_starts_at_the_checkpoint_and_the_counter_at_zero() -> None:
    """A pod that died at step 600 and resumed from checkpoint 500: a counter that came back at
    500 would read as a reset to rate()/increase(), which would count 500 steps that never ran."""
    m = Metrics("x")
    j = {"trainingjob": "x"}
    m.train_started(total_steps=500, start_step=200)
    assert m.registry.get_sample_value(N.TRAIN_STEP, j) == 200.0
    assert m.registry.get_sample_value(N.TRAIN_STEPS, j) == 0.0
    assert m.registry.get_sample_value(N.TRAIN_SAMPLES, j) == 0.0
    m.step_done(201, epoch=3, seconds=0.1, samples=8)
    m.train_progress(201, 500, 0.1, 1.0)  # the same step again adds nothing
    assert m.registry.get_sample_value(N.TRAIN_STEP, j) == 201.0
    assert m.registry.get_sample_value(N.TRAIN_STEPS, j) == 1.0
    assert m.registry.get_sample_value(N.TRAIN_SAMPLES, j) == 8.0  # this process's samples only


def test_eta_is_remaining_steps_times_the_mean_step_time() -> None:
    m = Metrics("x")
    m.train_started(total_steps=100, start_step=50)
    time.sleep(0.2)
    m.step_done(60, epoch=0, seconds=0.02)
    eta = m.registry.get_sample_value(N.TRAIN_ETA, {"trainingjob": "x"})
    assert eta == pytest.approx(40 * 0.2 / 10, rel=0.5)


def test_cache_progress_as_it_goes_and_the_final_report() -> None:
    m = Metrics("x")
    m.cache_planned("latent", total=17, todo=12)
    get = lambda name: m.registry.get_sample_value(name, {"trainingjob": "x", "kind": "latent"})  # noqa: E731
    assert (get(N.CACHE_ITEMS), get(N.CACHE_ITEMS_DONE)) == (17.0, 5.0)
    m.cache_done("latent", 8)
    assert get(N.CACHE_ITEMS_DONE) == 13.0 and get(N.CACHE_ITEMS_ENCODED + "") == 8.0
    assert get(N.CACHE_ENCODE_RATE) > 0
    m.cache_report(CacheReport(text_total=3, text_encoded=0, latents_total=16, latents_encoded=11))  # one undecodable
    assert (get(N.CACHE_ITEMS), get(N.CACHE_ITEMS_DONE)) == (16.0, 16.0)
    # The train stage republishes the manifest's report (a dict).
    t = Metrics("x")
    t.cache_report({"text_total": 3, "text_encoded": 1, "latents_total": 7, "latents_encoded": 7})
    assert t.registry.get_sample_value(N.CACHE_ITEMS_DONE, {"trainingjob": "x", "kind": "text"}) == 3.0


def test_bytes_written_come_from_the_writer_futures() -> None:
    m = Metrics("x")
    with ThreadPoolExecutor(max_workers=2) as pool:
        for n in (100, 250):
            pool.submit(lambda n=n: n).add_done_callback(m.entry_written)
        failing = pool.submit(lambda: 1 / 0)
        failing.add_done_callback(m.entry_written)
    assert m.registry.get_sample_value(N.CACHE_WRITTEN_BYTES, {"trainingjob": "x"}) == 350.0


def test_launching_process_sums_its_cache_workers(tmp_path: Path) -> None:
    """Several GPUs: workers serve nothing and write their counts; the launching process's
    endpoint shows the sum until it plans a kind itself (the final pass)."""
    shards = tmp_path / ".progress" / "x"
    stale = shards / "rank-7.json"
    stale.parent.mkdir(parents=True)
    stale.write_text('{"kinds": {"latent": {"total": 1000, "done": 1000, "encoded": 0, "rate": 0}}, "bytes": 5}')
    os.utime(stale, (time.time() - 3600, time.time() - 3600))  # an earlier run's
    parent = Metrics("x", port=free_port(), cache_shard_dir=shards)
    try:
        workers = [Metrics("x", cache_shard_file=shards / f"rank-{r}.json") for r in range(2)]
        workers[0].cache_planned("latent", total=6, todo=6)
        workers[1].cache_planned("latent", total=4, todo=3)
        workers[0].cache_done("latent", 6)  # finished: written at once
        text = scrape(_port(parent))
        assert sample(text, N.CACHE_ITEMS, trainingjob="x", kind="latent") == 10.0
        assert sample(text, N.CACHE_ITEMS_DONE, trainingjob="x", kind="latent") == 7.0
        assert sample(text, N.CACHE_ITEMS_ENCODED, trainingjob="x", kind="latent") == 6.0
        for w in workers:
            w.close()
        parent.cache_planned("latent", total=10, todo=0)  # the final pass finds everything cached
        assert sample(scrape(_port(parent)), N.CACHE_ITEMS_DONE, trainingjob="x", kind="latent") == 10.0
    finally:
        parent.close()


def _w(kinds: dict, nbytes: int = 0) -> dict:
    return {"kinds": {k: dict(zip(("total", "done", "encoded", "rate"), v)) for k, v in kinds.items()}, "bytes": nbytes}


def _own(latent=(0, 0, 0, 0.0), text=(0, 0, 0, 0.0)) -> dict:
    return {k: dict(zip(("total", "done", "encoded", "rate"), v)) for k, v in (("latent", latent), ("text", text))}


MERGE_CASES = {
    # name: (own, planned, own bytes, workers, expected latent (total, done, encoded), expected bytes)
    "workers only: each its shard, summed": (
        _own(), set(), 0, [_w({"latent": (6, 6, 6, 1.0)}, 10), _w({"latent": (4, 1, 1, 1.0)}, 5)], (10, 7, 7), 15),
    "no worker yet: own zeros": (_own(), set(), 0, [], (0, 0, 0), 0),
    "final pass planned: own totals, workers' encodes kept in the counter": (
        _own(latent=(10, 10, 0, 0.0)), {"latent"}, 3, [_w({"latent": (6, 6, 6, 1.0)}, 10), _w({"latent": (4, 4, 3, 1.0)}, 5)],
        (10, 10, 9), 18),
    "final pass re-encodes one": (
        _own(latent=(10, 10, 1, 0.0)), {"latent"}, 0, [_w({"latent": (6, 6, 6, 1.0)})], (10, 10, 7), 0),
    "a worker that has not planned the kind": (
        _own(), set(), 0, [_w({"latent": (6, 2, 2, 1.0)}), _w({})], (6, 2, 2), 0),
}


@pytest.mark.parametrize("case", MERGE_CASES)
def test_merge_counts_each_shard_once(case: str) -> None:
    from runner.observe.cacheprogress import merge

    own, planned, own_bytes, workers, (total, done, encoded), nbytes = MERGE_CASES[case]
    kinds, got_bytes = merge(own, planned, own_bytes, workers)
    assert (kinds["latent"]["total"], kinds["latent"]["done"], kinds["latent"]["encoded"]) == (total, done, encoded)
    assert got_bytes == nbytes


def test_cache_worker_shares_its_shard_not_the_whole_report(tmp_path: Path) -> None:
    """A worker's CacheReport counts the whole dataset: two workers sharing it showed 2x."""
    shards = tmp_path / "node-0"
    parent = Metrics("x", cache_shard_dir=shards)
    workers = [Metrics("x", cache_shard_file=shards / f"rank-{r}.json") for r in range(2)]
    for w, (total, todo) in zip(workers, ((12, 12), (8, 7))):
        w.cache_planned("latent", total=total, todo=todo)
        w.cache_done("latent", todo)
        w.cache_report(CacheReport(text_total=0, text_encoded=0, latents_total=20, latents_encoded=19))
        w.close()
    get = lambda name: parent.registry.get_sample_value(name, {"trainingjob": "x", "kind": "latent"})  # noqa: E731
    assert (get(N.CACHE_ITEMS), get(N.CACHE_ITEMS_DONE), get(N.CACHE_ITEMS_ENCODED)) == (20.0, 20.0, 19.0)
    parent.close()


def test_cache_counters_never_fall(tmp_path: Path) -> None:
    """Worker files removed (another node's close() did, before files were per node) and the
    switch to the launching process's own final pass keep the counters where they were."""
    shards = tmp_path / ".progress" / "x" / "node-0"
    parent = Metrics("x", cache_shard_dir=shards)
    worker = Metrics("x", cache_shard_file=shards / "rank-0.json")
    worker.cache_planned("latent", total=5, todo=5)
    worker.cache_done("latent", 5)
    pool = ThreadPoolExecutor(max_workers=1)
    pool.submit(lambda: 100).add_done_callback(worker.entry_written)
    pool.shutdown()
    worker.close()
    labels = {"trainingjob": "x", "kind": "latent"}
    seen = [(parent.registry.get_sample_value(N.CACHE_ITEMS_ENCODED, labels),
             parent.registry.get_sample_value(N.CACHE_WRITTEN_BYTES, {"trainingjob": "x"}))]
    (shards / "rank-0.json").unlink()
    seen.append((parent.registry.get_sample_value(N.CACHE_ITEMS_ENCODED, labels),
                 parent.registry.get_sample_value(N.CACHE_WRITTEN_BYTES, {"trainingjob": "x"})))
    parent.cache_planned("latent", total=5, todo=0)  # the final pass finds all cached
    seen.append((parent.registry.get_sample_value(N.CACHE_ITEMS_ENCODED, labels),
                 parent.registry.get_sample_value(N.CACHE_WRITTEN_BYTES, {"trainingjob": "x"})))
    assert seen == [(5.0, 100.0)] * 3
    parent.close()
    assert not (tmp_path / ".progress").exists()  # the hand-over folders are gone


ACTIVITY_CASES = {
    # name: (own, planned, workers, expected)
    "alone": (("running", 50.0), False, [], ("running", 50.0)),
    "in a checkpoint": (("checkpoint", 50.0), False, [], ("checkpoint", 50.0)),
    "waiting for workers: their latest progress": (("starting", 10.0), False, [("running", 40.0), ("running", 90.0)],
                                                   ("running", 90.0)),
    "a worker still loading its encoder": (("starting", 10.0), False, [("running", 90.0), ("starting", 20.0)],
                                           ("starting", 90.0)),
    "own final pass: own": (("running", 95.0), True, [("running", 90.0)], ("running", 95.0)),
}


@pytest.mark.parametrize("case", ACTIVITY_CASES)
def test_latest_activity(case: str) -> None:
    from runner.observe.cacheprogress import latest_activity

    own, planned, workers, expected = ACTIVITY_CASES[case]
    assert latest_activity(own, planned, workers) == expected


def test_long_phases_mark_progress_and_say_what_they_are(monkeypatch) -> None:
    """Checkpoint, validation, export, push: the timestamp moves as each starts and ends, and
    the phase gauge names it, so TrainingJobStalled gives it an hour, not 10 minutes."""
    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    m = Metrics("x")
    labels = {"trainingjob": "x"}
    last = lambda: m.registry.get_sample_value(N.LAST_PROGRESS, labels)  # noqa: E731
    phase = lambda: next(p for p in N.PHASES if m.registry.get_sample_value(N.PHASE, {**labels, "phase": p}) == 1)  # noqa: E731
    m.set_stage("train")
    assert (phase(), last()) == ("starting", 1000.0)  # model load and compile before the first step
    clock[0] = 1100.0
    m.step_done(1, epoch=0, seconds=100.0)
    assert (phase(), last()) == ("running", 1100.0)
    for name in ("checkpoint", "validation", "export", "push"):
        clock[0] += 10
        with m.phase(name):
            assert (phase(), last()) == (name, clock[0])
            clock[0] += 1500  # a long save
        assert (phase(), last()) == ("running", clock[0])
    with pytest.raises(ValueError, match="phase"):
        with m.phase("sleeping"):
            pass


def test_launching_process_shows_its_workers_progress(tmp_path: Path) -> None:
    """Waiting for its cache workers, the endpoint's last progress is theirs, not its own start."""
    shards = tmp_path / "node-0"
    parent = Metrics("x", cache_shard_dir=shards)
    parent.set_stage("cache")
    worker = Metrics("x", cache_shard_file=shards / "rank-0.json")
    worker.set_stage("cache")
    worker.cache_planned("latent", total=4, todo=4)
    labels = {"trainingjob": "x"}
    assert parent.registry.get_sample_value(N.PHASE, {**labels, "phase": "starting"}) == 1.0  # loading the VAE
    time.sleep(0.05)
    worker.cache_done("latent", 1)  # a phase change: shared at once
    assert parent.registry.get_sample_value(N.PHASE, {**labels, "phase": "running"}) == 1.0
    assert parent.registry.get_sample_value(N.LAST_PROGRESS, labels) == \
        json.loads((shards / "rank-0.json").read_text())["progressed"]
    worker.close()
    parent.close()


def test_history_for_the_report(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    refreshed = []
    m = Metrics("x", run_log=log, on_validation=lambda: refreshed.append("v"), on_close=lambda: refreshed.append("c"))
    m.set_stage("train")
    m.train_progress(1, 2, float("nan"), 3.0, lr=0.1)
    m.checkpoint_saved(1, 0.5)
    m.validation_done(1, 2.0, {})
    m.close("interrupted")
    m.close("completed")  # the stage ends once
    events = read_log(log)
    assert [e["event"] for e in events] == ["stage_started", "train", "checkpoint", "validation", "stage_finished"]
    assert events[-1]["ended"] == "interrupted"  # Ctrl-C used to be recorded like a finished stage
    assert math.isnan(float(events[1]["loss"])) and events[1]["lr"] == 0.1
    assert events[2]["step"] == 1  # a resume from an earlier step sets it aside with its timeline
    assert refreshed == ["v", "c"]


@pytest.mark.parametrize("close_with, ended", [((), "failed"), (("completed",), "completed"),
                                                (("stopped",), "stopped"), (("interrupted",), "interrupted")])
def test_a_stage_records_how_it_ended(tmp_path: Path, close_with: tuple, ended: str) -> None:
    """A stage closed without saying it completed (an exception on the way out) did not."""
    m = Metrics("x", run_log=tmp_path / "metrics.jsonl")
    m.set_stage("cache")
    m.close(*close_with)
    last = read_log(tmp_path / "metrics.jsonl")[-1]
    assert (last["event"], last["stage"], last["ended"]) == ("stage_finished", "cache", ended)


def test_an_unknown_ending_is_refused() -> None:
    with pytest.raises(ValueError, match="not one of"):
        Metrics("x").close("done")


def test_instances_do_not_share_state() -> None:
    a, b = Metrics("a", port=free_port()), Metrics("b", port=free_port())
    try:
        a.train_progress(step=5, total=10, loss=1.0, samples_per_second=1.0)
        b.train_progress(step=9, total=90, loss=2.0, samples_per_second=3.0)
        ta, tb = scrape(_port(a)), scrape(_port(b))
        assert sample(ta, N.TRAIN_STEPS, trainingjob="a") == 5.0
        assert sample(tb, N.TRAIN_STEPS, trainingjob="b") == 9.0
        assert 'trainingjob="b"' not in ta and 'trainingjob="a"' not in tb
    finally:
        a.close()
        b.close()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
            s.listen()
        except OSError:
            return False
        return True


def test_close_frees_the_port_for_the_next_stage() -> None:
    """run --stage all serves the cache stage, closes, then serves the train stage on the same port."""
    port = free_port()
    cache = Metrics("x", port=port)
    cache.set_stage("cache")
    scrape(port)
    cache.close()
    assert _port_is_free(port)
    with pytest.raises(urllib.error.URLError):
        scrape(port)
    train = Metrics("x", port=port)
    try:
        train.set_stage("train")
        assert sample(scrape(port), N.STAGE, trainingjob="x", stage="train") == 1.0
    finally:
        train.close()


def test_a_port_in_use_leaves_the_run_without_metrics_and_says_which_field(tmp_path: Path, minimal_spec, capsys) -> None:
    from runner.launch.run import _metrics
    from runner.spec.load import load_spec

    with socket.socket() as taken:  # another run, or a Prometheus server, already listens there
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        m = Metrics("x", port=port)
        assert m.server is None
        assert f"spec.metrics.port {port} is already in use" in m.not_served
        m.close()

        spec = tmp_path / "job.yaml"
        spec.write_text(minimal_spec)
        job = load_spec(spec, [f"spec.metrics.port={port}", f"spec.output.dir={tmp_path / 'out'}",
                               f"spec.cacheDir={tmp_path / 'cache'}"])
        m = _metrics(job, is_main=True)
        m.close()
    err = capsys.readouterr().err
    assert f"warning: spec.metrics.port {port} is already in use" in err
    assert "set spec.metrics.port to a free port, or to 0" in err


def test_a_diverged_run_says_so_and_holds_its_endpoint_for_a_scrape(served: Metrics, capsys) -> None:
    """The loss gauge never holds the NaN (the guard stops first); the diverged gauge does the
    telling, and hold() keeps serving it for the given time."""
    exercise(served)
    assert sample(scrape(_port(served)), N.TRAIN_DIVERGED, trainingjob="x") == 0.0  # present from the start
    served.train_diverged()
    started = time.monotonic()
    served.hold(0.6)
    assert time.monotonic() - started >= 0.6
    text = scrape(_port(served))
    assert sample(text, N.TRAIN_DIVERGED, trainingjob="x") == 1.0
    assert sample(text, N.TRAIN_LOSS, trainingjob="x") == 0.25  # the last finite one: status.progress is JSON
    assert f"keeping /metrics on port {_port(served)} up for 0.6 s" in capsys.readouterr().err


@pytest.mark.parametrize("env, port, seconds", [
    ({}, 9090, 0.0),                                             # a local run exits at once
    ({"JOB_COMPLETION_INDEX": "0"}, 9090, 75.0),                 # a pod holds for a scrape at 1m
    ({"JOB_COMPLETION_INDEX": "0"}, 0, 0.0),                     # nothing served, nothing to hold
    ({"JOB_COMPLETION_INDEX": "0", "TRAININGJOB_METRICS_HOLD_S": "0"}, 9090, 0.0),
    ({"TRAININGJOB_METRICS_HOLD_S": "4"}, 9090, 4.0),
    ({"JOB_COMPLETION_INDEX": "1", "TRAININGJOB_METRICS_HOLD_S": "x"}, 9090, 75.0),  # not a number: the default
    ({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, 9090, 0.0),  # a pod, but no TrainingJob's: nothing scrapes it
])
def test_hold_seconds(env, port, seconds) -> None:
    from runner.observe.metrics import hold_seconds

    assert hold_seconds(env, port) == seconds


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        return resp.read().decode()


def test_metrics_are_served_on_ipv6_and_ipv4() -> None:
    """An IPv6-only cluster gives a pod one IPv6 address: the endpoint binds "::" with
    IPV6_V6ONLY off, so it answers there and on IPv4 alike, whatever the host's
    net.ipv6.bindv6only. prometheus_client's own server bound 0.0.0.0 only."""
    m = Metrics("x", port=free_port())
    try:
        port = _port(m)
        m.set_stage("train")
        assert sample(_get(f"http://127.0.0.1:{port}/metrics"), N.STAGE, trainingjob="x", stage="train") == 1.0
        if not _ipv6_loopback():
            pytest.skip("this machine has no IPv6 loopback (::1): IPv4 checked, IPv6 not")
        assert m.server.socket.family == socket.AF_INET6
        assert m.server.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        assert sample(_get(f"http://[::1]:{port}/metrics"), N.STAGE, trainingjob="x", stage="train") == 1.0
    finally:
        m.close()


def test_a_host_without_ipv6_is_served_on_ipv4(monkeypatch) -> None:
    """A kernel without IPv6 (or booted with ipv6.disable=1) still has socket.has_ipv6 (Python was
    built with it): the AF_INET6 socket itself fails, with EAFNOSUPPORT, and serve() falls back."""
    import errno

    class NoIPv6(socket.socket):
        def __init__(self, family=-1, *args, **kwargs):
            if family == socket.AF_INET6:
                raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))
            super().__init__(family, *args, **kwargs)

    monkeypatch.setattr(socket, "socket", NoIPv6)
    m = Metrics("x", port=free_port())
    try:
        assert m.server.socket.family == socket.AF_INET
        assert f"# TYPE {N.STAGE} gauge" in _get(f"http://127.0.0.1:{_port(m)}/metrics")
    finally:
        m.close()
