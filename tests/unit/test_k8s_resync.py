"""The operator's periodic resync (runner/k8s/resync.py): which TrainingJobs it syncs again, that
nothing the cluster does ends it, that a round syncs several jobs at once (one sync per job at a
time), and the Events it posts itself (kopf.event works only inside kopf's handlers)."""
from __future__ import annotations

import asyncio
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest
import urllib3
from kubernetes.client.rest import ApiException

from runner.k8s import progress
from runner.k8s import resync as rs
from runner.k8s.metrics import OperatorMetrics
from runner.k8s.reconcile import Event


def tj(name: str, state: str | None = None, deleting: bool = False) -> dict:
    meta = {"namespace": "ml", "name": name, "uid": f"uid-{name}"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    return {"apiVersion": "diffusion.runner.dev/v1alpha1", "kind": "TrainingJob", "metadata": meta,
            "status": {"state": state} if state else {}}


def sample(metrics: OperatorMetrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_resync_syncs_the_unfinished_and_counts_every_state():
    listed = [tj("new"), tj("training", "Training"), tj("done", "Succeeded"), tj("broken", "Failed"),
              tj("going", "Training", deleting=True)]
    states, due = rs.resync_due(listed)
    assert due == [("ml", "new"), ("ml", "training")]
    assert states == {("ml", "new"): None, ("ml", "training"): "Training", ("ml", "done"): "Succeeded",
                      ("ml", "broken"): "Failed", ("ml", "going"): "Training"}


def test_a_listing_forgets_the_states_of_trainingjobs_gone_meanwhile():
    metrics = OperatorMetrics()
    metrics.observe_state(("ml", "deleted-while-the-watch-was-down"), "Training")
    metrics.observe_all({("ml", "a"): "Training", ("ml", "b"): None})
    assert metrics.states == {("ml", "a"): "Training"}
    assert metrics.jobs.labels("Training")._value.get() == 1


def test_events_name_the_trainingjob_and_the_operator():
    body = rs.event_body(tj("smoke"), Event("Warning", "ImagePullBackOff", "x" * 2000),
                         datetime(2026, 1, 1, 12, tzinfo=timezone.utc))
    assert body["involvedObject"] == {"apiVersion": "diffusion.runner.dev/v1alpha1", "kind": "TrainingJob",
                                      "namespace": "ml", "name": "smoke", "uid": "uid-smoke"}
    assert body["metadata"] == {"namespace": "ml", "generateName": "smoke."}
    assert (body["type"], body["reason"], body["source"]) == ("Warning", "ImagePullBackOff",
                                                              {"component": "trainingjob-operator"})
    assert len(body["message"]) <= 1024 and body["firstTimestamp"] == body["lastTimestamp"] == "2026-01-01T12:00:00Z"


# What the kubernetes client raises when the API server cannot be reached or does not answer:
# none of urllib3's is an OSError; TLS errors come as ApiException(status=0).
DROPPED = {
    "refused": urllib3.exceptions.MaxRetryError(None, "/apis", "connection refused"),
    "read timeout": urllib3.exceptions.ReadTimeoutError(None, "/apis", "read timed out"),
    "reset": urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")),
    "tls": ApiException(status=0, reason="SSLError\ncertificate verify failed"),
    "socket": ConnectionRefusedError(111, "Connection refused"),
}


def run_resync(lister, run, seconds: float, interval: float = 0.01) -> tuple[OperatorMetrics, bool]:
    """resync_forever for `seconds` with `lister` for list_trainingjobs; (metrics, still running)."""
    metrics = OperatorMetrics()

    async def main() -> bool:
        task = asyncio.create_task(rs.resync_forever((), metrics, run))
        await asyncio.sleep(seconds)
        alive = not task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return alive

    mp = pytest.MonkeyPatch()
    mp.setattr(progress, "PROGRESS_INTERVAL_S", interval)
    mp.setattr(rs, "list_trainingjobs", lister)
    try:
        return metrics, asyncio.run(main())
    finally:
        mp.undo()


@pytest.mark.parametrize("error", [*DROPPED.values(), ApiException(status=503), RuntimeError("our bug")],
                         ids=[*DROPPED, "503", "bug"])
def test_nothing_the_listing_raises_ends_the_resync(error):
    """A dropped connection used to end the task for good: no progress, no stuck-pod reports."""
    calls, synced = [], []

    def lister(namespaces):
        calls.append(namespaces)
        if len(calls) == 1:
            raise error
        return [tj("training", "Training")]

    metrics, alive = run_resync(lister, lambda *args: synced.append(args), 0.3)
    assert alive and len(calls) >= 2 and ("ml", "training", "resync") in synced
    kind = "internal" if isinstance(error, RuntimeError) else "api" if getattr(error, "status", 0) else "connection"
    assert sample(metrics, "trainingjob_operator_errors_total", kind=kind) >= 1
    assert sample(metrics, "trainingjob_operator_resync_duration_seconds_count") >= 2


def test_one_jobs_failed_sync_does_not_stop_the_others():
    synced = []

    def run(namespace, name, trigger):
        synced.append(name)
        if name == "a":
            raise DROPPED["refused"]

    run_resync(lambda ns: [tj("a"), tj("b")], run, 0.1)
    assert "a" in synced and "b" in synced


def test_a_round_syncs_several_jobs_at_once_and_is_timed():
    """One at a time, a sync's API calls and a 3 s scrape of a rank-0 pod that does not answer
    made a round of 100 jobs take minutes."""
    active, most, lock = [0], [0], threading.Lock()

    def run(namespace, name, trigger):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.1)
        with lock:
            active[0] -= 1

    listed = [tj(f"job{i}") for i in range(3 * rs.RESYNC_CONCURRENCY)]
    metrics = OperatorMetrics()
    pool = ThreadPoolExecutor(rs.RESYNC_CONCURRENCY)
    mp = pytest.MonkeyPatch()
    mp.setattr(rs, "list_trainingjobs", lambda namespaces: listed)
    started = time.monotonic()
    try:
        asyncio.run(rs.resync_round((), metrics, run, pool))
    finally:
        mp.undo()
        pool.shutdown()
    took = time.monotonic() - started
    assert most[0] == rs.RESYNC_CONCURRENCY
    assert took < 0.1 * len(listed) / 2, took  # sequential: 2.4 s; 8 at a time: 0.3 s

    metrics, _ = run_resync(lambda ns: listed, run, 1.0)
    assert sample(metrics, "trainingjob_operator_resync_duration_seconds_count") >= 1
    assert sample(metrics, "trainingjob_operator_resync_duration_seconds_sum") >= 0.3


def test_rounds_start_every_interval_not_an_interval_after_the_last_ended():
    """README: 'every 15 s'. A round that takes most of the interval does not stretch it."""
    starts = []

    def lister(namespaces):
        starts.append(time.monotonic())
        return [tj("slow")]

    run_resync(lister, lambda *args: time.sleep(0.4), 1.75, interval=0.5)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps and max(gaps) < 0.75, gaps  # sleeping a full interval after each round: 0.9 s


def test_a_job_is_synced_by_one_thread_at_a_time_and_its_lock_goes_with_the_last():
    locks, inside, overlaps = rs.JobLocks(), {"a": 0, "b": 0}, []
    both_in = threading.Barrier(2, timeout=5)

    def sync(name: str, meet: bool) -> None:
        with locks.hold(("ml", name)):
            inside[name] += 1
            if inside[name] > 1:
                overlaps.append(name)
            if meet:
                both_in.wait()  # a and b at once: different jobs do not wait for each other
            time.sleep(0.02)
            inside[name] -= 1

    threads = [threading.Thread(target=sync, args=("a", i == 0)) for i in range(4)]
    threads.append(threading.Thread(target=sync, args=("b", True)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert overlaps == [] and len(locks) == 0

    with pytest.raises(RuntimeError), locks.hold(("ml", "gone")):
        raise RuntimeError("a sync that failed")
    assert len(locks) == 0


def test_metrics_states_are_safe_to_change_from_several_threads():
    """observe_state runs in kopf's handler threads, observe_all in the resync task: publishing
    iterated the states while another thread changed them."""
    metrics, errors, stop = OperatorMetrics(), [], threading.Event()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)

    def hammer(offset: int) -> None:
        try:
            i = 0
            while not stop.is_set():
                metrics.observe_state(("ml", f"job{offset + i % 500}"), "Training" if i % 3 else None)
                i += 1
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    def listing() -> None:
        try:
            while not stop.is_set():
                metrics.observe_all({("ml", f"job{i}"): "Pending" for i in range(50)})
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=hammer, args=(k * 1000,)) for k in range(3)] + [threading.Thread(target=listing)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        sys.setswitchinterval(interval)
    assert errors == []
    with metrics._lock:
        counts = {s: sum(1 for v in metrics.states.values() if v == s) for s in ("Training", "Pending")}
    assert {s: metrics.jobs.labels(s)._value.get() for s in counts} == counts
