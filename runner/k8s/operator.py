"""`trainingjob operator`: thin kopf handlers around the pure reconcile().

kopf does the watching and retries; every trigger (a TrainingJob created, changed or found at
start-up, a child Job changing, the periodic resync) runs the same `sync`: read the TrainingJob
and its children with the official kubernetes client, call reconcile(), then create what is
missing, patch, write the status and post the Events. No torch is imported on this path.

No finalizer: deleting a TrainingJob never waits for the operator (its children go with it
through their ownerReferences, the garbage collector's work). Hence no kopf timer, which always
puts kopf's finalizer on each object: progress and pod problems, which change without a Job
event, are looked at by one operator-level task that lists the TrainingJobs (resync.py).

Errors: a spec error of a job not yet started is permanent (status Failed/InvalidSpec,
kopf.PermanentError: no retry until the spec changes; a started job runs the spec it started
with, see reconcile.py); API hiccups (429, 5xx, conflicts, refused or dropped connections,
timeouts, TLS errors) are temporary (kopf.TemporaryError: retried after a delay).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone

import kopf
import kubernetes
from kubernetes.client.rest import ApiException

from runner.exitcodes import EXIT_INVALID
from runner.k8s import build, health, options, progress
from runner.k8s import status as st
from runner.k8s.build import Options
from runner.k8s.metrics import OperatorMetrics
from runner.k8s.reconcile import Event, Observed, Outcome, kueue_managed, reconcile, started_document
from runner.k8s.resync import (API_ERRORS, PLURAL, JobLocks, error_kind, event_body, group_version, items,
                               resync_forever)

RETRY_DELAY_S = 10
PODMONITOR = ("monitoring.coreos.com", "v1", "podmonitors")
# v1beta1: served by every Kueue release so far (next to v1beta2 in the newest).
KUEUE_WORKLOADS = ("kueue.x-k8s.io", "v1beta1", "workloads")
KUEUE_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"  # Kueue's, on the Workload it makes for a Job
WORKLOADS_FORBIDDEN = "KueueWorkloadsForbidden"  # the Event reason when the RBAC lacks Workloads
# The finalizer kopf adds for handlers that need one. Earlier versions of this operator had such
# a handler (a per-object timer) and left it on every TrainingJob. No handler here needs one, so
# kopf removes its finalizer from each TrainingJob it sees; named here so that it is this one.
KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"
logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- reading

def _owned(objs: list[dict], tj: dict) -> list[dict]:
    """Children of this TrainingJob (the selector is repeated here: the label is the contract,
    and the controller ownerReference guards against a same-named predecessor's leftovers)."""
    name, uid = tj["metadata"]["name"], tj["metadata"].get("uid")
    return [o for o in objs if o["metadata"].get("labels", {}).get(build.label_job()) == name
            and any(r.get("uid") == uid and r.get("controller") for r in o["metadata"].get("ownerReferences") or [])]


def observe(tj: dict, opts: Options, now: datetime) -> Observed:
    ns, name = tj["metadata"]["namespace"], tj["metadata"]["name"]
    selector = f"{build.label_job()}={name}"
    core, batch = kubernetes.client.CoreV1Api(), kubernetes.client.BatchV1Api()
    listed = {"config": items(core.list_namespaced_config_map(ns, label_selector=selector)),
              "service": items(core.list_namespaced_service(ns, label_selector=selector)),
              "job": items(batch.list_namespaced_job(ns, label_selector=selector))}
    if opts.pod_monitor:
        listed["monitor"] = items(kubernetes.client.CustomObjectsApi().list_namespaced_custom_object(
            *PODMONITOR[:2], ns, PODMONITOR[2], label_selector=selector))
    found = {role: _owned(objs, tj) for role, objs in listed.items()}
    # Labelled as this job's but not controlled by it: e.g. applied from `trainingjob render`.
    # Creating one of those names would only meet a 409, every sync.
    foreign = tuple(sorted(f"{o['kind']}/{o['metadata']['name']}" for role, objs in listed.items()
                           for o in objs if o not in found[role]))
    children = {role: objs[0] for role, objs in found.items() if objs and role != "job"}
    for job in found["job"]:
        children[job["metadata"]["labels"].get("app.kubernetes.io/component", "")] = job
    # Only the pods of the Jobs found above (by their uid): not a deleted predecessor's.
    pods = st.pods_by_stage(items(core.list_namespaced_pod(ns, label_selector=selector)), children)
    return Observed(children, pods, read_progress(tj, children, pods["train"], now), foreign,
                    workloads=observe_workloads(tj, children, now))


def observe_workloads(tj: dict, children: dict[str, dict], now: datetime) -> dict[str, dict]:
    """The Kueue Workload of each unfinished Kueue-managed Job, by the Job's role: Kueue labels
    it with the Job's uid and makes the Job its controller. None listed without such a Job, so a
    cluster without Kueue is never asked for Workloads."""
    ns = tj["metadata"]["namespace"]
    queued = {job["metadata"]["uid"]: role for role, job in children.items()
              if role in ("cache", "train") and kueue_managed(job) and job["metadata"].get("uid")
              and st.job_phase(job) not in ("complete", "failed")}
    if not queued:
        return {}
    try:
        listed = items(kubernetes.client.CustomObjectsApi().list_namespaced_custom_object(
            *KUEUE_WORKLOADS[:2], ns, KUEUE_WORKLOADS[2],
            label_selector=f"{KUEUE_JOB_UID_LABEL} in ({','.join(sorted(queued))})"))
    except ApiException as e:
        if e.status == 404:  # a queue label, but no Kueue installed
            return {}
        if e.status == 403:  # the RBAC of an older release: the job gets its status all the same
            post_event(tj, Event("Warning", WORKLOADS_FORBIDDEN, st.clip(
                f"cannot list Kueue Workloads in namespace {ns} (403 Forbidden): the operator's ClusterRole "
                f"lacks the rule for {KUEUE_WORKLOADS[2]}.{KUEUE_WORKLOADS[0]} (verbs list and patch) that "
                "k8s/rbac.yaml has; apply it again (kubectl apply -k k8s/). Until then spec.suspend cannot "
                "deactivate this job's Workloads, and Kueue may unsuspend its Jobs")), now, once=True)
            return {}
        raise
    return {queued[ref["uid"]]: workload for workload in listed
            for ref in workload["metadata"].get("ownerReferences") or []
            if ref.get("controller") and ref.get("uid") in queued}


def read_progress(tj: dict, children: dict[str, dict], pods: list[dict], now: datetime) -> dict | None:
    """Scrape rank 0's /metrics while the train Job runs (see runner/k8s/progress.py for why),
    read against the spec the job runs (its ConfigMap's), not a later edit."""
    doc = started_document(tj, children)
    port = (doc["spec"].get("metrics") or {}).get("port", 9090) if doc else None
    if not port or st.job_phase(children.get("train")) != "running":
        return None
    for pod in pods:
        index = pod["metadata"].get("annotations", {}).get("batch.kubernetes.io/job-completion-index")
        ip = pod.get("status", {}).get("podIP")
        if index == "0" and ip and pod["status"].get("phase") == "Running":
            text = progress.scrape(ip, port)
            if text:
                return progress.progress(progress.parse(text), doc["spec"], st.timestamp(now))
    return None


# ----------------------------------------------------------------------------- writing

def _create(obj: dict) -> None:
    ns = obj["metadata"]["namespace"]
    kind = obj["kind"]
    try:
        if kind == "ConfigMap":
            kubernetes.client.CoreV1Api().create_namespaced_config_map(ns, obj)
        elif kind == "Service":
            kubernetes.client.CoreV1Api().create_namespaced_service(ns, obj)
        elif kind == "Job":
            kubernetes.client.BatchV1Api().create_namespaced_job(ns, obj)
        else:
            kubernetes.client.CustomObjectsApi().create_namespaced_custom_object(*PODMONITOR[:2], ns, PODMONITOR[2], obj)
    except ApiException as e:
        if e.status != 409:  # 409: it exists already (a concurrent or earlier sync made it)
            raise


def post_event(tj: dict, event: Event, now: datetime, once: bool = False) -> None:
    """Post an Event about the TrainingJob; an Event lost is no reason to redo the sync. `once`:
    under a name of its own (the job's uid and the reason), so that repeating it each sync is
    refused (409) while the first is kept (the API server drops Events after an hour)."""
    ns, name, uid = tj["metadata"]["namespace"], tj["metadata"]["name"], tj["metadata"].get("uid") or ""
    fixed = ".".join(filter(None, (name, uid[:8], event.reason.lower()))) if once else None
    try:
        kubernetes.client.CoreV1Api().create_namespaced_event(ns, event_body(tj, event, now, name=fixed))
    except API_ERRORS as e:
        if not (once and isinstance(e, ApiException) and e.status == 409):
            logger.warning("Event %s of TrainingJob %s/%s not posted: %s", event.reason, ns, name, e)


def apply(tj: dict, outcome: Outcome, observed: Observed, now: datetime | None = None) -> None:
    ns, name = tj["metadata"]["namespace"], tj["metadata"]["name"]
    now = now or datetime.now(timezone.utc)
    for obj in outcome.create:
        _create(obj)
    for role, patch in outcome.patch:
        kubernetes.client.BatchV1Api().patch_namespaced_job(observed.children[role]["metadata"]["name"], ns, patch)
    for role, patch in outcome.workload_patch:
        kubernetes.client.CustomObjectsApi().patch_namespaced_custom_object(
            *KUEUE_WORKLOADS[:2], ns, KUEUE_WORKLOADS[2], observed.workloads[role]["metadata"]["name"], patch)
    # A merge patch keeps what it omits: a key the new status drops (completionTime) goes as null.
    patch = st.merge_patch(tj.get("status") or {}, outcome.status)
    if patch:
        group, version = group_version()
        kubernetes.client.CustomObjectsApi().patch_namespaced_custom_object_status(
            group, version, ns, PLURAL, name, {"status": patch})
    for event in outcome.events:
        post_event(tj, event, now)


def sync(namespace: str, name: str, opts: Options, metrics: OperatorMetrics, trigger: str) -> Outcome | None:
    """One reconcile of one TrainingJob, from reading to writing."""
    group, version = group_version()
    try:
        try:
            tj = kubernetes.client.CustomObjectsApi().get_namespaced_custom_object(group, version, namespace,
                                                                                   PLURAL, name)
        except ApiException as e:
            if e.status == 404:
                metrics.observe_state((namespace, name), None)
                return None
            raise
        now = datetime.now(timezone.utc)
        observed = observe(tj, opts, now)
        outcome = reconcile(tj, observed, now, opts)
        apply(tj, outcome, observed, now)
    except Exception as e:
        kind = error_kind(e)
        metrics.errors.labels(kind).inc()
        metrics.reconciles.labels(trigger, "error").inc()
        if kind == "connection":  # refused, reset, timed out, TLS: urllib3's errors or status 0
            raise kopf.TemporaryError(f"Kubernetes API unreachable: {e}; retrying", delay=RETRY_DELAY_S) from e
        if kind == "api" and (e.status in (409, 429) or e.status >= 500):
            raise kopf.TemporaryError(f"Kubernetes API {e.status} {e.reason}; retrying", delay=RETRY_DELAY_S) from e
        if kind == "api":
            raise kopf.PermanentError(f"Kubernetes API refused: {e.status} {e.reason}: {e.body}") from e
        raise  # our bug: kopf logs it (and retries a change handler)
    metrics.reconciles.labels(trigger, "ok").inc()
    metrics.observe_state((namespace, name), outcome.status.get("state"))
    return outcome


def _invalid(outcome: Outcome | None) -> str | None:
    for c in (outcome.status.get("conditions", []) if outcome else []):
        if c["type"] == "Failed" and c["status"] == "True" and c["reason"] == "InvalidSpec":
            return c["message"]
    return None


# ----------------------------------------------------------------------------- kopf wiring

def make_registry(opts: Options, metrics: OperatorMetrics, namespaces: Sequence[str] = (), health_port: int = 0,
                  locks: JobLocks | None = None) -> kopf.OperatorRegistry:
    """kopf's handlers, the resync task, and /healthz on `health_port` (0: none). `locks`: one
    sync of a job at a time (given by tests, to look at)."""
    registry = kopf.OperatorRegistry()
    group, version = group_version()
    on = dict(registry=registry)
    locks = JobLocks() if locks is None else locks

    def run(namespace: str, name: str, trigger: str) -> Outcome | None:
        with locks.hold((namespace, name)):
            return sync(namespace, name, opts, metrics, trigger)

    @kopf.on.startup(**on)
    async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_):
        # Kopf's bookkeeping goes to annotations, so status holds only what the CRD documents.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=group)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=group)
        settings.persistence.finalizer = KOPF_FINALIZER
        # Namespaces are given or all are watched; no need to list them (nor the RBAC for it).
        settings.scanning.disabled = True
        settings.posting.level = logging.WARNING  # kopf's own log lines stay out of the Events
        if health_port:  # first: a port in use stops the operator before anything runs
            try:
                memo["health"] = await health.serve_health(health_port, lambda: (
                    "the resync task has ended" if memo.get("resync") and memo["resync"].done() else None))
            except OSError as e:
                raise kopf.PermanentError(f"--health-port {health_port}: {e}") from e
        memo["resync"] = asyncio.create_task(resync_forever(namespaces, metrics, run))

    @kopf.on.cleanup(**on)
    async def stop(memo: kopf.Memo, **_):
        if memo.get("health"):
            await memo["health"].cleanup()
        task = memo.get("resync")
        if task:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @kopf.on.login(**on)
    def login(**kwargs):
        return kopf.login_via_client(**kwargs)

    # None of these needs a finalizer (kopf adds one only for timers, daemons and on.delete
    # handlers that are not optional).
    @kopf.on.resume(group, version, PLURAL, **on)
    @kopf.on.create(group, version, PLURAL, **on)
    @kopf.on.update(group, version, PLURAL, field="spec", **on)
    def on_change(namespace: str, name: str, reason: str, **_):
        message = _invalid(run(namespace, name, str(reason)))
        if message:
            raise kopf.PermanentError(f"InvalidSpec: {message}")

    @kopf.on.event("batch", "v1", "jobs", labels={"app.kubernetes.io/managed-by": opts.managed_by}, **on)
    def on_job(namespace: str, labels: dict, type: str | None, **_):
        owner = labels.get(build.label_job())
        if owner and type in ("MODIFIED", "DELETED"):
            run(namespace, owner, "job")

    @kopf.on.event(group, version, PLURAL, **on)
    def on_gone(namespace: str, name: str, type: str | None, **_):
        if type == "DELETED":  # gone already: the children follow through their ownerReferences
            metrics.observe_state((namespace, name), None)

    return registry


def cluster_problem() -> str | None:
    """Why no cluster can be reached with the credentials kopf's login (login_via_client) would
    use: in a pod its service account, elsewhere the kubeconfig; None when there are some.
    Without this, kopf retries the login every minute with a traceback each time."""
    from kubernetes.config import ConfigException

    try:
        kubernetes.config.load_incluster_config()
        return None
    except ConfigException:
        pass
    try:
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # None: ~/.kube/config
        return None
    except (ConfigException, OSError) as e:
        return (f"no Kubernetes credentials: not in a pod with a service account, and no usable kubeconfig "
                f"({e}); set KUBECONFIG or run it in the cluster (k8s/operator.yaml)")


def main(args: argparse.Namespace) -> int:
    from runner.observe.serve import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    opts, problems = options.from_args(args)  # the same flags, and checks, as `render`
    if problems:
        print("\n".join(f"error: {p}" for p in problems), file=sys.stderr)
        return EXIT_INVALID
    if problem := cluster_problem():
        print(f"error: operator: {problem}", file=sys.stderr)
        return EXIT_INVALID
    metrics = OperatorMetrics()
    if args.metrics_port:
        serve(args.metrics_port, metrics.registry)  # IPv6 and IPv4, like the trainer's
    # /healthz is served by the startup handler (runner/k8s/health.py: IPv6 and IPv4), not kopf.
    kopf.run(registry=make_registry(opts, metrics, args.namespace, args.health_port), standalone=True,
             clusterwide=not args.namespace, namespaces=args.namespace)
    return 0
