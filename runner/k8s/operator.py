"""`trainingjob operator`: thin kopf handlers around the pure reconcile().

kopf does the watching, retries and timers; every trigger (a TrainingJob created, changed or
found at start-up, a child Job changing, the progress timer) runs the same `sync`: read the
TrainingJob and its children with the official kubernetes client, call reconcile(), then create
what is missing, patch, write the status and post the Events. No torch is imported on this path.

Errors: a spec error of a job not yet started is permanent (status Failed/InvalidSpec,
kopf.PermanentError: no retry until the spec changes; a started job runs the spec it started
with, see reconcile.py); API hiccups (429, 5xx, conflicts, timeouts) are temporary
(kopf.TemporaryError: retried after a delay).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import kopf
import kubernetes
from kubernetes.client.rest import ApiException

from runner.exitcodes import EXIT_INVALID
from runner.k8s import build, progress
from runner.k8s import status as st
from runner.k8s.build import Options
from runner.k8s.reconcile import TERMINAL, Observed, Outcome, reconcile, started_document
from runner.launch import images
from runner.spec import schema as schema_mod

PLURAL = schema_mod.KIND.lower() + "s"
RETRY_DELAY_S = 10
PODMONITOR = ("monitoring.coreos.com", "v1", "podmonitors")


def group_version() -> tuple[str, str]:
    return schema_mod.api_group(), schema_mod.api_version().split("/", 1)[1]


@dataclass
class OperatorMetrics:
    """The operator's own Prometheus metrics: reconciles, errors, TrainingJobs by state."""

    registry: Any = None
    states: dict[tuple[str, str], str] = field(default_factory=dict)

    def __post_init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        self.reconciles = Counter("trainingjob_operator_reconciles", "Reconciles run, by trigger and result",
                                  ["trigger", "result"], registry=self.registry)
        self.errors = Counter("trainingjob_operator_errors", "Reconcile errors, by kind", ["kind"],
                              registry=self.registry)
        self.jobs = Gauge("trainingjob_operator_trainingjobs", "TrainingJobs by state", ["state"],
                          registry=self.registry)

    def observe_state(self, key: tuple[str, str], state: str | None) -> None:
        if state is None:
            self.states.pop(key, None)
        else:
            self.states[key] = state
        for s in ("Pending", "Caching", "Training", "Succeeded", "Failed", "Suspended"):
            self.jobs.labels(s).set(sum(1 for v in self.states.values() if v == s))


# ----------------------------------------------------------------------------- reading

def _items(result: Any) -> list[dict]:
    api = kubernetes.client.ApiClient()
    return [i if isinstance(i, dict) else api.sanitize_for_serialization(i)
            for i in (result["items"] if isinstance(result, dict) else result.items)]


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
    listed = {"config": _items(core.list_namespaced_config_map(ns, label_selector=selector)),
              "service": _items(core.list_namespaced_service(ns, label_selector=selector)),
              "job": _items(batch.list_namespaced_job(ns, label_selector=selector))}
    if opts.pod_monitor:
        listed["monitor"] = _items(kubernetes.client.CustomObjectsApi().list_namespaced_custom_object(
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
    pods = st.pods_by_stage(_items(core.list_namespaced_pod(ns, label_selector=selector)), children)
    return Observed(children, pods, read_progress(tj, children, pods["train"], now), foreign)


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


def apply(tj: dict, outcome: Outcome, observed: Observed) -> None:
    ns, name = tj["metadata"]["namespace"], tj["metadata"]["name"]
    for obj in outcome.create:
        _create(obj)
    for role, patch in outcome.patch:
        kubernetes.client.BatchV1Api().patch_namespaced_job(observed.children[role]["metadata"]["name"], ns, patch)
    # A merge patch keeps what it omits: a key the new status drops (completionTime) goes as null.
    patch = st.merge_patch(tj.get("status") or {}, outcome.status)
    if patch:
        group, version = group_version()
        kubernetes.client.CustomObjectsApi().patch_namespaced_custom_object_status(
            group, version, ns, PLURAL, name, {"status": patch})
    for event in outcome.events:
        kopf.event(tj, type=event.type, reason=event.reason, message=event.message)


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
        apply(tj, outcome, observed)
    except ApiException as e:
        metrics.errors.labels("api").inc()
        metrics.reconciles.labels(trigger, "error").inc()
        if e.status in (409, 429) or e.status >= 500:
            raise kopf.TemporaryError(f"Kubernetes API {e.status} {e.reason}; retrying", delay=RETRY_DELAY_S)
        raise kopf.PermanentError(f"Kubernetes API refused: {e.status} {e.reason}: {e.body}")
    except OSError as e:  # connection refused, timeouts
        metrics.errors.labels("connection").inc()
        metrics.reconciles.labels(trigger, "error").inc()
        raise kopf.TemporaryError(f"Kubernetes API unreachable: {e}; retrying", delay=RETRY_DELAY_S)
    metrics.reconciles.labels(trigger, "ok").inc()
    metrics.observe_state((namespace, name), outcome.status.get("state"))
    return outcome


def _invalid(outcome: Outcome | None) -> str | None:
    for c in (outcome.status.get("conditions", []) if outcome else []):
        if c["type"] == "Failed" and c["status"] == "True" and c["reason"] == "InvalidSpec":
            return c["message"]
    return None


# ----------------------------------------------------------------------------- kopf wiring

def make_registry(opts: Options, metrics: OperatorMetrics) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    group, version = group_version()
    on = dict(registry=registry)

    @kopf.on.startup(**on)
    def configure(settings: kopf.OperatorSettings, **_):
        # Kopf's bookkeeping goes to annotations, so status holds only what the CRD documents.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=group)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=group)
        # Namespaces are given or all are watched; no need to list them (nor the RBAC for it).
        settings.scanning.disabled = True
        settings.posting.level = logging.WARNING  # kopf's own log lines stay out of the Events

    @kopf.on.login(**on)
    def login(**kwargs):
        return kopf.login_via_client(**kwargs)

    @kopf.on.resume(group, version, PLURAL, **on)
    @kopf.on.create(group, version, PLURAL, **on)
    @kopf.on.update(group, version, PLURAL, field="spec", **on)
    def on_change(namespace: str, name: str, reason: str, **_):
        message = _invalid(sync(namespace, name, opts, metrics, str(reason)))
        if message:
            raise kopf.PermanentError(f"InvalidSpec: {message}")

    @kopf.timer(group, version, PLURAL, interval=progress.PROGRESS_INTERVAL_S, initial_delay=5, **on)
    def refresh(namespace: str, name: str, status: dict, **_):
        """Progress and pod problems change without a Job event: look again, until finished."""
        if status.get("state") not in TERMINAL:
            sync(namespace, name, opts, metrics, "timer")

    @kopf.on.event("batch", "v1", "jobs", labels={"app.kubernetes.io/managed-by": opts.managed_by}, **on)
    def on_job(namespace: str, labels: dict, type: str | None, **_):
        owner = labels.get(build.label_job())
        if owner and type in ("MODIFIED", "DELETED"):
            sync(namespace, owner, opts, metrics, "job")

    @kopf.on.delete(group, version, PLURAL, optional=True, **on)  # optional: no finalizer, GC cascades
    def on_delete(namespace: str, name: str, **_):
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
    if problems := images.reference_problems(args.registry, args.version):
        print("\n".join(f"error: {p}" for p in problems), file=sys.stderr)
        return EXIT_INVALID
    if problem := cluster_problem():
        print(f"error: operator: {problem}", file=sys.stderr)
        return EXIT_INVALID
    opts = Options(registry=args.registry, version=args.version, pod_monitor=args.pod_monitor)
    metrics = OperatorMetrics()
    if args.metrics_port:
        serve(args.metrics_port, metrics.registry)  # IPv6 and IPv4, like the trainer's
    health = f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
    kopf.run(registry=make_registry(opts, metrics), standalone=True, clusterwide=not args.namespace,
             namespaces=args.namespace, liveness_endpoint=health)
    return 0
