"""The operator's periodic resync, and what it shares with the handlers in operator.py.

Progress and pod problems (an image that cannot be pulled, a pod that never gets a node) change
without a Job event, so one operator-level task lists the TrainingJobs every PROGRESS_INTERVAL_S
and syncs each unfinished one: not a kopf timer per object, which needs kopf's finalizer.

The task must outlive anything the cluster does: nothing but cancelling it ends it. A listing
that fails (the API server restarting, a dropped connection, a timeout) is logged and counted,
and the next round lists again.

A round syncs up to RESYNC_CONCURRENCY TrainingJobs at once: each sync makes about six API calls
and may wait up to progress.SCRAPE_TIMEOUT_S for a rank-0 pod that does not answer, so one at a
time a hundred jobs would take minutes a round. Each job is still synced by one thread at a time
(JobLocks), whatever triggered it.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import kubernetes
import urllib3
from kubernetes.client.rest import ApiException

from runner.k8s import progress
from runner.k8s import status as st
from runner.k8s.metrics import OperatorMetrics
from runner.k8s.reconcile import TERMINAL, Event
from runner.spec import schema as schema_mod

PLURAL = schema_mod.KIND.lower() + "s"
REPORTER = "trainingjob-operator"  # the Events' source, the From column of `kubectl describe`
RESYNC_CONCURRENCY = 8  # TrainingJobs synced at once by a resync round (threads)
# What the kubernetes client raises when the API cannot be reached or does not answer: urllib3's
# errors (MaxRetryError once its retries of a refused or reset connection are spent,
# ReadTimeoutError, ProtocolError), which are not OSErrors, besides the OSErrors themselves.
# TLS failures come as ApiException with status 0 (connection_error says so).
API_ERRORS = (ApiException, OSError, urllib3.exceptions.HTTPError)
logger = logging.getLogger(__name__)


def group_version() -> tuple[str, str]:
    return schema_mod.api_group(), schema_mod.api_version().split("/", 1)[1]


def items(result: Any) -> list[dict]:
    """The items of a list call, as plain dicts (what the API returns)."""
    api = kubernetes.client.ApiClient()
    return [i if isinstance(i, dict) else api.sanitize_for_serialization(i)
            for i in (result["items"] if isinstance(result, dict) else result.items)]


def error_kind(e: BaseException) -> str:
    """The errors{kind} label of an exception: connection (the API was not reached, or did not
    answer), api (it answered with an error status) or internal (anything else: our bug)."""
    if isinstance(e, ApiException):
        return "api" if e.status else "connection"  # status 0: a TLS error, or no response at all
    return "connection" if isinstance(e, API_ERRORS) else "internal"


def event_body(tj: dict, event: Event, now: datetime, name: str | None = None) -> dict:
    """A core/v1 Event about the TrainingJob. Posted with the client, not kopf.event(), which
    works only inside kopf's handlers of that object, not in the resync task. `name`: a fixed
    name, for an Event to post once (a second create is refused with 409) rather than per sync."""
    meta, when = tj["metadata"], st.timestamp(now)
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"namespace": meta["namespace"], **({"name": name} if name else
                                                            {"generateName": f"{meta['name']}."})},
            "involvedObject": {"apiVersion": tj["apiVersion"], "kind": tj["kind"], "namespace": meta["namespace"],
                               "name": meta["name"], "uid": meta.get("uid")},
            "type": event.type, "reason": event.reason, "message": st.clip(event.message),
            "source": {"component": REPORTER}, "reportingComponent": REPORTER,
            "reportingInstance": os.environ.get("HOSTNAME") or REPORTER,
            "firstTimestamp": when, "lastTimestamp": when, "count": 1}


class JobLocks:
    """One sync of a TrainingJob at a time: kopf's handlers of a TrainingJob, the Job events and
    the resync run in threads of their own, and two syncs could both post the same transition's
    Event. A job's lock exists only while a sync holds it or waits for it, so deleted
    TrainingJobs leave none behind (the garbage collector's Job events come after the
    TrainingJob's DELETED event and sync it once more)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], tuple[threading.Lock, list[int]]] = {}

    @contextlib.contextmanager
    def hold(self, key: tuple[str, str]) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.setdefault(key, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with lock:
                yield
        finally:
            with self._guard:
                users[0] -= 1
                if not users[0]:
                    del self._locks[key]

    def __len__(self) -> int:
        with self._guard:
            return len(self._locks)


def list_trainingjobs(namespaces: Sequence[str]) -> list[dict]:
    """Every TrainingJob the operator watches: cluster-wide, or in each of its namespaces (then
    the ClusterRole may be bound per namespace, where a cluster-wide list is refused)."""
    api, (group, version) = kubernetes.client.CustomObjectsApi(), group_version()
    if not namespaces:
        return items(api.list_cluster_custom_object(group, version, PLURAL))
    return [tj for ns in namespaces for tj in items(api.list_namespaced_custom_object(group, version, ns, PLURAL))]


def resync_due(listed: list[dict]) -> tuple[dict[tuple[str, str], str | None], list[tuple[str, str]]]:
    """(state of each listed TrainingJob, those to sync again): not finished, not being deleted."""
    states, due = {}, []
    for tj in listed:
        meta = tj["metadata"]
        key, state = (meta["namespace"], meta["name"]), (tj.get("status") or {}).get("state")
        states[key] = state
        if state not in TERMINAL and not meta.get("deletionTimestamp"):
            due.append(key)
    return states, due


async def resync_round(namespaces: Sequence[str], metrics: OperatorMetrics, run: Callable[[str, str, str], Any],
                       pool: ThreadPoolExecutor) -> None:
    """List the TrainingJobs, then sync each unfinished one in `pool` (its threads bound how many
    at once). A listing that fails raises; one job's failed sync (counted by sync) is logged and
    the others go on."""
    loop = asyncio.get_running_loop()
    listed = await loop.run_in_executor(pool, list_trainingjobs, namespaces)
    states, due = resync_due(listed)
    metrics.observe_all(states)

    async def one(namespace: str, name: str) -> None:
        try:
            await loop.run_in_executor(pool, run, namespace, name, "resync")
        except Exception as e:  # noqa: BLE001 (one job's trouble does not stop the others' resync)
            logger.warning("resync of TrainingJob %s/%s: %s", namespace, name, e)

    await asyncio.gather(*(one(namespace, name) for namespace, name in due))


async def resync_forever(namespaces: Sequence[str], metrics: OperatorMetrics,
                         run: Callable[[str, str, str], Any]) -> None:
    """A round every PROGRESS_INTERVAL_S, from the start of one to the start of the next (a round
    that takes longer is followed by the next at once). Only cancelling ends it."""
    pool = ThreadPoolExecutor(max_workers=RESYNC_CONCURRENCY, thread_name_prefix="resync")
    try:
        took = 0.0
        while True:
            await asyncio.sleep(max(progress.PROGRESS_INTERVAL_S - took, 0))
            started = time.monotonic()
            try:
                await resync_round(namespaces, metrics, run, pool)
            except Exception as e:  # noqa: BLE001 (whatever it was, the next round tries again)
                kind = error_kind(e)
                metrics.errors.labels(kind).inc()
                logger.log(logging.ERROR if kind == "internal" else logging.WARNING,
                           "resync round failed (%s error): %s; trying again next round", kind, e,
                           exc_info=kind == "internal")
            took = time.monotonic() - started
            metrics.resync_seconds.observe(took)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a sync under way finishes in its thread
