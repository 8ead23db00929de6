"""The operator's real kopf handlers and the official kubernetes client against an in-process
HTTP Kubernetes API (kmock): objects created and their order, status written, Events posted,
progress read from a real /metrics endpoint, a restarted operator that converges, deleting with
no operator running (no finalizer), suspending through Kueue's Workload (and a Workload list the
RBAC refuses), /healthz over IPv6 and IPv4, and no per-job lock left behind by a deleted job.

Nothing here sleeps and then asserts that something did not happen: a test waits for a positive
sign that the operator has looked (a resync reconcile counted, a resync round timed), then
asserts."""
from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.request
from pathlib import Path

import kopf
import kubernetes
import pytest
import yaml

from runner.k8s import operator as op
from runner.k8s import progress
from runner.k8s.build import Options
from runner.k8s.resync import JobLocks
from runner.spec import schema as schema_mod
from tests.integration.kmock_cluster import Cluster

REPO = Path(__file__).resolve().parents[2]
NS = "ml"
GROUP, VERSION = schema_mod.api_group(), schema_mod.api_version().split("/")[1]
VERBS = {"list", "watch", "get", "create", "patch", "update", "delete"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Operator:
    """`trainingjob operator`'s registry, run by kopf in a thread (as KopfRunner would)."""

    def __init__(self, metrics: op.OperatorMetrics | None = None, health_port: int = 0,
                 locks: JobLocks | None = None):
        self.metrics, self.stop = metrics or op.OperatorMetrics(), threading.Event()
        self.health_port, self.locks = health_port, locks
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        registry = op.make_registry(Options(), self.metrics, health_port=self.health_port, locks=self.locks)
        asyncio.run(kopf.operator(registry=registry, clusterwide=True, standalone=True, stop_flag=self.stop))

    def sample(self, name: str, **labels) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def resyncs(self) -> float:
        """Reconciles the resync has run (of unfinished jobs)."""
        return self.sample("trainingjob_operator_reconciles_total", trigger="resync", result="ok")

    def rounds(self) -> float:
        """Resync rounds done (each lists every TrainingJob, finished ones too)."""
        return self.sample("trainingjob_operator_resync_duration_seconds_count")

    def wait_for_resyncs(self, more: int = 2) -> None:
        """Until `more` further resync reconciles have run: with one job, at least one of them
        started after this call, so it saw everything done before."""
        target = self.resyncs() + more
        wait_for(lambda: self.resyncs() >= target)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the operator did not stop"


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    resources = {f"{GROUP}/{VERSION}/trainingjobs": {"kind": "TrainingJob", "namespaced": True, "verbs": VERBS,
                                                     "singular": "trainingjob", "subresources": {"status"}},
                 "kueue.x-k8s.io/v1beta1/workloads": {"kind": "Workload", "namespaced": True, "verbs": VERBS,
                                                      "singular": "workload", "subresources": {"status"}}}
    with Cluster(tmp_path, resources) as c:
        # kopf's login and our handlers both load the kubeconfig through the kubernetes client.
        monkeypatch.setenv("KUBECONFIG", str(c.kubeconfig))
        monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(c.kubeconfig))
        kubernetes.config.load_kube_config(config_file=str(c.kubeconfig))
        monkeypatch.setattr(progress, "PROGRESS_INTERVAL_S", 1)
        yield c


def wait_for(what, timeout: float = 30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what.__doc__ or what}")


def trainingjob(name: str = "smoke") -> dict | None:
    """The TrainingJob as the API has it; None once it is gone."""
    try:
        return kubernetes.client.CustomObjectsApi().get_namespaced_custom_object(GROUP, VERSION, NS, "trainingjobs", name)
    except kubernetes.client.ApiException as e:
        if e.status == 404:
            return None
        raise


def tj_status(name: str = "smoke") -> dict:
    return trainingjob(name).get("status") or {}


def example(name: str = "smoke", **labels) -> dict:
    doc = yaml.safe_load((REPO / "k8s" / "example-trainingjob.yaml").read_text())
    doc["metadata"].update(namespace=NS, name=name)
    doc["metadata"].setdefault("labels", {}).update(labels)
    return doc


def set_job_status(name: str, **status) -> None:
    kubernetes.client.BatchV1Api().patch_namespaced_job_status(name, NS, {"status": status})


def serve_trainer_metrics() -> tuple[int, object]:
    """A real prometheus_client endpoint with runner.observe's series, as rank 0 would serve it."""
    from runner.observe.metrics import Metrics

    port = free_port()
    metrics = Metrics("smoke", port)
    metrics.train_progress(5, 20, 0.25, 2.0)
    return port, metrics


def test_operator_runs_cache_then_train_and_writes_status(cluster):
    metrics_port, trainer = serve_trainer_metrics()
    doc = yaml.safe_load((REPO / "k8s" / "example-trainingjob.yaml").read_text())
    doc["metadata"]["namespace"] = NS
    doc["spec"]["metrics"]["port"] = metrics_port
    api = kubernetes.client.CustomObjectsApi()
    operator_metrics = op.OperatorMetrics()
    try:
        with Operator(operator_metrics):
            created = api.create_namespaced_custom_object(GROUP, VERSION, NS, "trainingjobs", doc)
            uid = created["metadata"]["uid"]

            # New: the spec ConfigMap and the cache Job, in that order, and no train Job yet.
            wait_for(lambda: tj_status().get("stage") == "cache")
            assert cluster.emulator.created[1:] == [("ConfigMap", "smoke-spec"), ("Job", "smoke-cache")]
            for obj in cluster.objects("v1/configmaps") + cluster.objects("batch/v1/jobs"):
                ref = obj["metadata"]["ownerReferences"][0]
                assert (ref["uid"], ref["controller"], ref["blockOwnerDeletion"]) == (uid, True, True)
                assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "trainingjob-operator"
            status = tj_status()
            assert status["state"] == "Pending" and status["observedGeneration"] == 1

            # The Job controller's part, played by hand: pods run, then the cache Job completes.
            set_job_status("smoke-cache", ready=1, active=1)
            wait_for(lambda: tj_status().get("state") == "Caching")
            set_job_status("smoke-cache", ready=0, active=0, succeeded=1,
                           conditions=[{"type": "Complete", "status": "True"}])
            wait_for(lambda: ("Job", "smoke-train") in cluster.emulator.created)
            assert cluster.emulator.created[3:] == [("Service", "smoke-train"), ("Job", "smoke-train")]
            # The status is written after the creates: wait for it rather than race it.
            wait_for(lambda: {c["type"]: c["status"] for c in tj_status()["conditions"]}["Cached"] == "True")

            # Training: rank 0's pod serves /metrics; each sync reads it into status.progress.
            # Next to it, a failed rank 0 of a deleted same-named TrainingJob's Job (another uid),
            # still terminating: neither a restart nor a progress source.
            train_uid = next(j["metadata"]["uid"] for j in cluster.objects("batch/v1/jobs")
                             if j["metadata"]["name"] == "smoke-train")
            for pod_name, job_uid, phase in (("smoke-train-0-old00", "uid-of-a-deleted-job", "Failed"),
                                             ("smoke-train-0-abcde", train_uid, "Running")):
                kubernetes.client.CoreV1Api().create_namespaced_pod(NS, {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": pod_name, "namespace": NS,
                                 "labels": {"diffusion.runner.dev/job": "smoke", "diffusion.runner.dev/stage": "train",
                                            "batch.kubernetes.io/controller-uid": job_uid},
                                 "annotations": {"batch.kubernetes.io/job-completion-index": "0"}},
                    "spec": {"containers": [{"name": "trainer", "image": "x"}]},
                    "status": {"phase": phase, "podIP": "127.0.0.1"}})
            set_job_status("smoke-train", ready=1, active=1)
            progress_seen = wait_for(lambda: tj_status().get("progress"))
            assert tj_status()["state"] == "Training" and tj_status()["restarts"] == 0
            assert progress_seen["steps"] == "5/20" and progress_seen["loss"] == 0.25
            # ETA from samples/s: 15 steps x 2 samples per step / 2.0 samples/s.
            assert progress_seen["etaSeconds"] == 15 and progress_seen["eta"] == "15s"
            # No Job event from here on: the periodic resync reads the next steps.
            trainer.train_progress(8, 20, 0.2, 2.0)
            wait_for(lambda: tj_status()["progress"]["step"] == 8)

            set_job_status("smoke-train", ready=0, active=0, succeeded=1,
                           conditions=[{"type": "Complete", "status": "True"}])
            wait_for(lambda: tj_status().get("state") == "Succeeded")
            done = tj_status()
            assert {c["type"]: c["status"] for c in done["conditions"]} == {
                "Cached": "True", "Running": "False", "Complete": "True", "Failed": "False", "Suspended": "False"}
            assert done["completionTime"] and done["startTime"]

            events = wait_for(lambda: [e for e in cluster.objects("v1/events")
                                       if e.get("involvedObject", {}).get("name") == "smoke"
                                       and e.get("reason") == "Succeeded"] and cluster.objects("v1/events"))
            reasons = [e["reason"] for e in events if e.get("involvedObject", {}).get("name") == "smoke"]
            for reason in ("Created", "Pending", "Caching", "Training", "Succeeded"):
                assert reason in reasons, reasons
            assert "PodRestarted" not in reasons, reasons

        # A restarted operator (resume handlers, a fresh kopf) finds everything in place.
        before, status_before = list(cluster.emulator.created), tj_status()
        with Operator(op.OperatorMetrics()) as again:
            wait_for(lambda: again.metrics.reconciles.labels("resume", "ok")._value.get() >= 1)
            # A finished job is not resynced; two rounds listed it (and the first round's syncs
            # of anything else were done by the second's start).
            wait_for(lambda: again.rounds() >= 2)
            assert again.metrics.jobs.labels("Succeeded")._value.get() == 1
        assert cluster.emulator.created == before and tj_status() == status_before
    finally:
        trainer.close()
    # The operator's own metrics: reconciles, errors, jobs by state (a real exposition).
    from prometheus_client import generate_latest

    text = generate_latest(operator_metrics.registry).decode()
    assert 'trainingjob_operator_trainingjobs{state="Succeeded"} 1.0' in text
    assert "trainingjob_operator_reconciles_total" in text and "trainingjob_operator_errors_total" in text


def test_invalid_spec_fails_the_job_and_creates_nothing(cluster):
    doc = yaml.safe_load((REPO / "k8s" / "example-trainingjob.yaml").read_text())
    doc["metadata"].update(namespace=NS, name="broken")
    del doc["spec"]["kubernetes"]["volumes"]
    with Operator(op.OperatorMetrics()):
        kubernetes.client.CustomObjectsApi().create_namespaced_custom_object(GROUP, VERSION, NS, "trainingjobs", doc)
        status = wait_for(lambda: tj_status("broken").get("state") == "Failed" and tj_status("broken"))
        failed = next(c for c in status["conditions"] if c["type"] == "Failed")
        assert failed["reason"] == "InvalidSpec" and "volumes.cache.claimName" in failed["message"]
        wait_for(lambda: any(e.get("reason") == "InvalidSpec" for e in cluster.objects("v1/events")))
    assert cluster.emulator.created == [("TrainingJob", "broken")]


def test_delete_needs_no_operator_and_no_trainingjob_carries_a_finalizer(cluster):
    """With the operator scaled to 0 (or deleted with `kubectl delete -k k8s/`), `kubectl delete
    tj` still deletes: the children follow through their ownerReferences."""
    api = kubernetes.client.CustomObjectsApi()
    with Operator() as operator:
        api.create_namespaced_custom_object(GROUP, VERSION, NS, "trainingjobs", example())
        wait_for(lambda: tj_status().get("stage") == "cache")
        operator.wait_for_resyncs()  # resync rounds too (every second in these tests)
        assert not trainingjob()["metadata"].get("finalizers")
    api.delete_namespaced_custom_object(GROUP, VERSION, NS, "trainingjobs", "smoke")
    assert trainingjob() is None


def test_kopfs_finalizer_left_by_an_earlier_operator_is_removed(cluster):
    """Upgrading from a version whose timer made kopf put its finalizer on every TrainingJob:
    a TrainingJob deleted meanwhile (Terminating) goes, and the others lose the finalizer."""
    api = kubernetes.client.CustomObjectsApi()
    for name in ("kept", "deleted"):
        doc = example(name)
        doc["metadata"]["finalizers"] = [op.KOPF_FINALIZER]
        api.create_namespaced_custom_object(GROUP, VERSION, NS, "trainingjobs", doc)
    api.delete_namespaced_custom_object(GROUP, VERSION, NS, "trainingjobs", "deleted")
    assert trainingjob("deleted")["metadata"]["deletionTimestamp"]  # stuck while no operator runs
    with Operator():
        wait_for(lambda: trainingjob("deleted") is None)
        wait_for(lambda: not trainingjob("kept")["metadata"].get("finalizers"))
        wait_for(lambda: tj_status("kept").get("stage") == "cache")


def test_suspending_a_kueue_job_deactivates_its_workload_and_leaves_the_job_to_kueue(cluster):
    api, batch = kubernetes.client.CustomObjectsApi(), kubernetes.client.BatchV1Api()
    with Operator() as operator:
        api.create_namespaced_custom_object(GROUP, VERSION, NS, "trainingjobs",
                                            example(**{"kueue.x-k8s.io/queue-name": "gpus"}))
        job = wait_for(lambda: next((j for j in cluster.objects("batch/v1/jobs")
                                     if j["metadata"]["name"] == "smoke-cache"), None))
        uid = job["metadata"]["uid"]
        # Kueue's part: a Workload for the Job (and one of another Job, which must stay as it is), admitted.
        for name, owner_uid in (("job-smoke-cache-1a2b3", uid), ("job-other-4c5d6", "uid-of-another-job")):
            api.create_namespaced_custom_object("kueue.x-k8s.io", "v1beta1", NS, "workloads", {
                "apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "Workload",
                "metadata": {"name": name, "namespace": NS, "labels": {"kueue.x-k8s.io/job-uid": owner_uid},
                             "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "x",
                                                  "uid": owner_uid, "controller": True}]},
                "spec": {"active": True, "queueName": "gpus"}})
        set_job_status("smoke-cache", ready=1, active=1)
        wait_for(lambda: tj_status().get("state") == "Caching")

        def workload(name: str = "job-smoke-cache-1a2b3") -> dict:
            return api.get_namespaced_custom_object("kueue.x-k8s.io", "v1beta1", NS, "workloads", name)

        api.patch_namespaced_custom_object(GROUP, VERSION, NS, "trainingjobs", "smoke", {"spec": {"suspend": True}})
        wait_for(lambda: workload()["spec"]["active"] is False)
        assert workload()["metadata"]["annotations"]["diffusion.runner.dev/suspended"] == "true"
        wait_for(lambda: tj_status().get("state") == "Suspended")
        operator.wait_for_resyncs()  # syncs that saw it Suspended: the Job's spec.suspend stays Kueue's to set
        assert not batch.read_namespaced_job("smoke-cache", NS).spec.suspend
        assert workload("job-other-4c5d6")["spec"]["active"] is True

        api.patch_namespaced_custom_object(GROUP, VERSION, NS, "trainingjobs", "smoke", {"spec": {"suspend": False}})
        wait_for(lambda: workload()["spec"]["active"] is True)
        assert "diffusion.runner.dev/suspended" not in (workload()["metadata"].get("annotations") or {})


def test_a_workload_list_the_rbac_refuses_still_gives_the_job_its_status(cluster):
    """An upgrade that did not apply k8s/rbac.yaml again: a Kueue-labelled job still gets its
    status, and one Warning Event names the missing rule."""
    cluster.emulator.refused.add(("workloads", "LIST"))
    with Operator() as operator:
        kubernetes.client.CustomObjectsApi().create_namespaced_custom_object(
            GROUP, VERSION, NS, "trainingjobs", example(**{"kueue.x-k8s.io/queue-name": "gpus"}))
        wait_for(lambda: ("Job", "smoke-cache") in cluster.emulator.created)
        set_job_status("smoke-cache", ready=1, active=1)
        wait_for(lambda: tj_status().get("state") == "Caching")
        operator.wait_for_resyncs()  # more syncs meet the 403: still one Event
    warnings = [e for e in cluster.objects("v1/events") if e.get("reason") == op.WORKLOADS_FORBIDDEN]
    assert len(warnings) == 1 and "k8s/rbac.yaml" in warnings[0]["message"]
    assert warnings[0]["involvedObject"]["name"] == "smoke"


def test_liveness_answers_on_ipv6_and_ipv4(cluster):
    """kopf's liveness endpoint at http://0.0.0.0:PORT/healthz was refused on IPv6-only clusters."""
    port = free_port()
    hosts = ["127.0.0.1"]
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        hosts.append("[::1]")
    except OSError:  # a host without IPv6: IPv4 alone
        pass
    with Operator(health_port=port):
        for host in hosts:
            def answers(host=host) -> bool:
                try:
                    with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=2) as response:
                        return response.status == 200
                except OSError:
                    return False
            wait_for(answers)


class CountingLocks(JobLocks):
    """JobLocks that count the syncs that took a lock."""

    def __init__(self) -> None:
        super().__init__()
        self.taken = 0

    def hold(self, key):
        self.taken += 1
        return super().hold(key)


def test_a_deleted_trainingjob_leaves_no_lock_behind(cluster):
    """The garbage collector deletes the Jobs after the TrainingJob: each Job's DELETED event syncs
    it once more (and finds it gone). Such a sync used to leave a lock for good."""
    api, locks = kubernetes.client.CustomObjectsApi(), CountingLocks()
    with Operator(locks=locks):
        api.create_namespaced_custom_object(GROUP, VERSION, NS, "trainingjobs", example())
        wait_for(lambda: tj_status().get("stage") == "cache")
        api.delete_namespaced_custom_object(GROUP, VERSION, NS, "trainingjobs", "smoke")
        wait_for(lambda: trainingjob() is None)
        taken = locks.taken
        # The garbage collector's part, played by hand (kmock has none).
        kubernetes.client.BatchV1Api().delete_namespaced_job("smoke-cache", NS)
        wait_for(lambda: locks.taken > taken)
        wait_for(lambda: len(locks) == 0)
