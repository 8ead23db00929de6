"""The operator's real kopf handlers and the official kubernetes client against an in-process
HTTP Kubernetes API (kmock): objects created and their order, status written, Events posted,
progress read from a real /metrics endpoint, and a restarted operator that converges."""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import kopf
import kubernetes
import pytest
import yaml

from runner.k8s import operator as op
from runner.k8s import progress
from runner.k8s.build import Options
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

    def __init__(self, metrics: op.OperatorMetrics):
        self.metrics, self.stop = metrics, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(kopf.operator(registry=op.make_registry(Options(), self.metrics), clusterwide=True,
                                  standalone=True, stop_flag=self.stop))

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
                                                     "singular": "trainingjob", "subresources": {"status"}}}
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


def tj_status(name: str = "smoke") -> dict:
    return kubernetes.client.CustomObjectsApi().get_namespaced_custom_object(
        GROUP, VERSION, NS, "trainingjobs", name).get("status") or {}


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

            # Training: rank 0's pod serves /metrics; the timer reads it into status.progress.
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
            time.sleep(1.5)
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
