"""The operator's thin layer around reconcile() (runner/k8s/operator.py), with the kubernetes
client replaced by fakes: how sync classifies API errors for kopf's retries, and a Kueue
Workload list that the RBAC refuses."""
from __future__ import annotations

import logging
from datetime import datetime, timezone

import kopf
import pytest
import urllib3
from kubernetes.client.rest import ApiException

from runner.k8s import operator as op
from runner.k8s.build import Options
from runner.k8s.metrics import OperatorMetrics

NOW = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)


def sample(metrics: OperatorMetrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


class Raising:
    """CustomObjectsApi whose every call raises `error`."""

    error: BaseException

    def __getattr__(self, name):
        def call(*args, **kwargs):
            raise self.error
        return call


@pytest.mark.parametrize("error, outcome, kind", [
    # Refused, reset or timed out: urllib3's errors, none of them an OSError.
    (urllib3.exceptions.MaxRetryError(None, "/apis", "connection refused"), kopf.TemporaryError, "connection"),
    (urllib3.exceptions.ReadTimeoutError(None, "/apis", "read timed out"), kopf.TemporaryError, "connection"),
    (urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")),
     kopf.TemporaryError, "connection"),
    (ConnectionRefusedError(111, "Connection refused"), kopf.TemporaryError, "connection"),
    # How the client reports a TLS error: no HTTP status at all, not a refusal.
    (ApiException(status=0, reason="SSLError\ncertificate verify failed"), kopf.TemporaryError, "connection"),
    (ApiException(status=503, reason="Service Unavailable"), kopf.TemporaryError, "api"),
    (ApiException(status=409, reason="Conflict"), kopf.TemporaryError, "api"),
    (ApiException(status=429, reason="Too Many Requests"), kopf.TemporaryError, "api"),
    (ApiException(status=403, reason="Forbidden"), kopf.PermanentError, "api"),
    (KeyError("metadata"), KeyError, "internal"),  # our bug: raised as it is, counted
], ids=["refused", "read-timeout", "reset", "socket", "tls", "503", "409", "429", "403", "bug"])
def test_sync_retries_what_a_retry_can_fix_and_counts_every_error(monkeypatch, error, outcome, kind):
    Raising.error = error
    monkeypatch.setattr(op.kubernetes.client, "CustomObjectsApi", Raising)
    metrics = OperatorMetrics()
    with pytest.raises(outcome) as raised:
        op.sync("ml", "smoke", Options(), metrics, "resync")
    if outcome is kopf.TemporaryError:
        assert raised.value.delay == op.RETRY_DELAY_S
    assert sample(metrics, "trainingjob_operator_errors_total", kind=kind) == 1
    assert sample(metrics, "trainingjob_operator_reconciles_total", trigger="resync", result="error") == 1


def queued_job(uid: str = "job-uid") -> dict:
    return {"metadata": {"name": "smoke-cache", "uid": uid, "labels": {"kueue.x-k8s.io/queue-name": "gpus"}},
            "spec": {}, "status": {"ready": 1, "active": 1}}


def test_a_workload_list_the_rbac_refuses_leaves_the_job_its_status_and_says_which_rule(monkeypatch, caplog):
    """An upgrade that did not apply k8s/rbac.yaml again: the 403 used to fail the whole sync,
    so a Kueue-labelled job got no status at all."""
    posted = []

    class Core:
        def create_namespaced_event(self, ns, body):
            posted.append(body)
            if len(posted) > 1:  # the same name again
                raise ApiException(status=409, reason="AlreadyExists")

    Raising.error = ApiException(status=403, reason="Forbidden")
    monkeypatch.setattr(op.kubernetes.client, "CustomObjectsApi", Raising)
    monkeypatch.setattr(op.kubernetes.client, "CoreV1Api", Core)
    tj = {"apiVersion": "diffusion.runner.dev/v1alpha1", "kind": "TrainingJob",
          "metadata": {"namespace": "ml", "name": "smoke", "uid": "0123456789abcdef"}}
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # two syncs: one Event, under one name, and no complaint about the second
            assert op.observe_workloads(tj, {"cache": queued_job()}, NOW) == {}
    assert caplog.records == []
    event = posted[0]
    assert posted[1]["metadata"] == event["metadata"] == {"namespace": "ml",
                                                          "name": "smoke.01234567.kueueworkloadsforbidden"}
    assert (event["type"], event["reason"]) == ("Warning", op.WORKLOADS_FORBIDDEN)
    for words in ("403", "workloads.kueue.x-k8s.io", "list and patch", "k8s/rbac.yaml"):
        assert words in event["message"]
    assert len(event["message"]) <= 1024


def test_a_workload_list_that_fails_otherwise_still_fails_the_sync(monkeypatch):
    Raising.error = ApiException(status=500, reason="Internal Server Error")
    monkeypatch.setattr(op.kubernetes.client, "CustomObjectsApi", Raising)
    tj = {"metadata": {"namespace": "ml", "name": "smoke", "uid": "u"}}
    with pytest.raises(ApiException):
        op.observe_workloads(tj, {"cache": queued_job()}, NOW)
