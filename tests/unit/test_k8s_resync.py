"""The operator's periodic resync (runner/k8s/operator.py): which TrainingJobs it syncs again,
and the Events it posts itself (kopf.event works only inside kopf's handlers)."""
from __future__ import annotations

from datetime import datetime, timezone

from runner.k8s import operator as op
from runner.k8s.reconcile import Event


def tj(name: str, state: str | None = None, deleting: bool = False) -> dict:
    meta = {"namespace": "ml", "name": name, "uid": f"uid-{name}"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    return {"apiVersion": "diffusion.runner.dev/v1alpha1", "kind": "TrainingJob", "metadata": meta,
            "status": {"state": state} if state else {}}


def test_resync_syncs_the_unfinished_and_counts_every_state():
    listed = [tj("new"), tj("training", "Training"), tj("done", "Succeeded"), tj("broken", "Failed"),
              tj("going", "Training", deleting=True)]
    states, due = op.resync_due(listed)
    assert due == [("ml", "new"), ("ml", "training")]
    assert states == {("ml", "new"): None, ("ml", "training"): "Training", ("ml", "done"): "Succeeded",
                      ("ml", "broken"): "Failed", ("ml", "going"): "Training"}


def test_a_listing_forgets_the_states_of_trainingjobs_gone_meanwhile():
    metrics = op.OperatorMetrics()
    metrics.observe_state(("ml", "deleted-while-the-watch-was-down"), "Training")
    metrics.observe_all({("ml", "a"): "Training", ("ml", "b"): None})
    assert metrics.states == {("ml", "a"): "Training"}
    assert metrics.jobs.labels("Training")._value.get() == 1


def test_events_name_the_trainingjob_and_the_operator():
    body = op.event_body(tj("smoke"), Event("Warning", "ImagePullBackOff", "x" * 2000),
                         datetime(2026, 1, 1, 12, tzinfo=timezone.utc))
    assert body["involvedObject"] == {"apiVersion": "diffusion.runner.dev/v1alpha1", "kind": "TrainingJob",
                                      "namespace": "ml", "name": "smoke", "uid": "uid-smoke"}
    assert body["metadata"] == {"namespace": "ml", "generateName": "smoke."}
    assert (body["type"], body["reason"], body["source"]) == ("Warning", "ImagePullBackOff",
                                                              {"component": "trainingjob-operator"})
    assert len(body["message"]) <= 1024 and body["firstTimestamp"] == body["lastTimestamp"] == "2026-01-01T12:00:00Z"
