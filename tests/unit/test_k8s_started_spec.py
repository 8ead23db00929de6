"""A started TrainingJob runs one spec, the one its ConfigMap got when it started: an edit is
never half-applied (only spec.suspend acts), an invalid edit does not fail it, a finished job
stays as it finished; and what the status and failure reasons say about the pods it runs."""
from __future__ import annotations

import copy
from datetime import timedelta

import pytest
import yaml

from runner.k8s import build
from runner.k8s import status as st
from runner.k8s.build import Options, Owner
from runner.k8s.reconcile import started_document, validated
from tests.unit.test_k8s_reconcile import OOM, T0, Cluster, pod, run_to_training, trainingjob


def spec_in_configmap(c: Cluster) -> dict:
    return yaml.safe_load(c.children["config"]["data"][build.SPEC_FILE])["spec"]


def env_names(job: dict) -> set[str]:
    return {e["name"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}


# --- the snapshot builds what the spec builds ------------------------------------------------

def _multi_node(doc):
    doc["spec"]["hardware"]["nodes"] = 2


def _data_volume(doc):
    doc["spec"]["kubernetes"]["volumes"]["data"] = {"claimName": "datasets", "readOnly": True}
    doc["spec"]["datasets"].append({"name": "mine", "type": "local", "path": "photos/set-1",
                                    "vaeCacheDir": "vae/mine"})


def _kueue(doc):
    doc["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] = "gpus"


@pytest.mark.parametrize("change", [lambda doc: None, _multi_node, _data_volume, _kueue])
def test_children_built_from_the_configmap_are_the_children_built_from_the_spec(change):
    tj = trainingjob()
    change(tj)
    doc, problems = validated(tj)
    assert problems == []
    owner = Owner("smoke", "uid-1")
    fresh = build.build_children(doc, Options(), owner)
    config = fresh[0]
    snapshot = started_document(tj, {"config": config})
    assert build.pod_document(snapshot)["spec"] == snapshot["spec"]  # idempotent on its own output
    assert build.build_children(snapshot, Options(), owner) == fresh


# --- edits of a started job -------------------------------------------------------------------

def _more_nodes_and_steps(spec):
    spec["hardware"]["nodes"] = 2
    spec["training"]["maxSteps"] = 40


def _no_output_volume(spec):  # refused by the operator's Kubernetes checks
    del spec["kubernetes"]["volumes"]["output"]


EDITS = {  # edit, fields named in the Event, whether the edited spec is invalid
    "nodes and maxSteps": (_more_nodes_and_steps, "spec.hardware, spec.training", False),
    "invalid: no output volume": (_no_output_volume, "spec.kubernetes", True),
}


def _at(stage: str) -> Cluster:
    c = Cluster(trainingjob())
    c.step()
    c.job_status("cache", ready=1, active=1)
    c.step()
    if stage in ("training", "succeeded"):
        c.finish("cache")
        c.step()
        c.job_status("train", ready=1, active=1)
        c.step()
    if stage == "succeeded":
        c.finish("train")
        c.step()
    return c


@pytest.mark.parametrize("edit", list(EDITS))
@pytest.mark.parametrize("stage, state", [("caching", "Caching"), ("training", "Training"),
                                          ("succeeded", "Succeeded")])
def test_an_edit_of_a_started_job_is_reported_once_and_not_applied(stage, state, edit):
    change, fields, invalid = EDITS[edit]
    c = _at(stage)
    before_status, before_config = copy.deepcopy(c.tj["status"]), spec_in_configmap(c)
    change(c.tj["spec"])
    c.tj["metadata"]["generation"] = 2
    out = c.step(T0 + timedelta(minutes=1))
    assert c.state == state and c.condition("Failed")["status"] == "False"
    assert "completionTime" not in c.tj["status"] or stage == "succeeded"
    assert c.tj["status"]["specHash"] == before_status["specHash"] and c.tj["status"]["observedGeneration"] == 2
    assert [(e.type, e.reason) for e in out.events] == [("Warning", "SpecChangeIgnored")]
    message = out.events[0].message
    assert message.startswith(f"{fields} changed after the job started")
    assert "delete and re-create the TrainingJob to run a changed spec" in message and "spec.suspend" in message
    assert ("not valid" in message) == invalid
    assert out.create == [] and out.patch == [] and spec_in_configmap(c) == before_config
    assert c.step(T0 + timedelta(minutes=2)).events == []  # once, not on every reconcile
    if stage == "caching":  # the train Job comes from the spec the job started with
        c.finish("cache")
        c.step()
        train = c.children["train"]
        assert train["spec"]["completions"] == 1 and "MASTER_ADDR" not in env_names(train)
        assert c.tj["status"]["specHash"] == before_status["specHash"]


def test_suspend_still_applies_with_other_edits_and_is_not_reported():
    c = _at("training")
    _more_nodes_and_steps(c.tj["spec"])
    c.tj["spec"]["suspend"], c.tj["metadata"]["generation"] = True, 2
    out = c.step()
    assert out.patch == [("train", {"spec": {"suspend": True}})] and c.state == "Suspended"
    ignored = [e for e in out.events if e.reason == "SpecChangeIgnored"]
    assert len(ignored) == 1 and "spec.suspend changed" not in ignored[0].message


def test_an_edit_reverted_before_the_operator_saw_it_is_not_reported():
    c = _at("caching")
    c.tj["metadata"]["generation"] = 3  # edited and reverted: a new generation, the same spec
    assert c.step().events == []


def test_a_finished_job_stays_as_it_is_when_the_validator_gets_stricter():
    """An operator upgrade that refuses more (here: the same spec, now invalid) resumes every job:
    a finished one keeps its state, conditions and times, quietly."""
    c = _at("succeeded")
    before = copy.deepcopy(c.tj["status"])
    del c.tj["spec"]["kubernetes"]["volumes"]["cache"]  # the generation stays: as if the rules changed
    out = c.step(T0 + timedelta(hours=1))
    assert c.tj["status"] == before and out.events == [] and out.create == []


def test_a_started_job_an_older_operator_marked_invalid_returns_to_what_its_jobs_say():
    c = _at("caching")
    c.tj["status"] = {**c.tj["status"], "state": "Failed", "completionTime": "2026-01-01T12:00:30Z",
                      "conditions": [st.condition([], t, t == "Failed", "InvalidSpec", "x", T0, 1)
                                     for t in st.CONDITION_TYPES]}
    c.step(T0 + timedelta(minutes=1))
    assert c.state == "Caching" and c.condition("Failed")["status"] == "False"
    assert "completionTime" not in c.tj["status"]


def test_invalid_then_fixed_before_it_started_drops_the_completion_time():
    tj = trainingjob()
    del tj["spec"]["kubernetes"]["volumes"]["output"]
    c = Cluster(tj)
    c.step()
    assert c.state == "Failed" and c.tj["status"]["completionTime"]
    c.tj = {**trainingjob(generation=2), "status": c.tj["status"]}
    c.step(T0 + timedelta(minutes=1))
    assert c.state == "Pending" and "completionTime" not in c.tj["status"]


# --- why a Job failed -------------------------------------------------------------------------

def _failed(name: str, code: int, reason: str, finished: str) -> dict:
    return pod(name, "Failed", terminated={"exitCode": code, "reason": reason,
                                           "finishedAt": f"2026-01-01T12:0{finished}:00Z"})


EXIT2 = "PodFailurePolicy"
BACKOFF = "BackoffLimitExceeded"


@pytest.mark.parametrize("pods, job_reason, reason, words, absent", [
    # An OOM kill the Job retried, then exit 2 (FailJob): the exit 2 failed the Job.
    ([_failed("a", 137, "OOMKilled", "1"), _failed("b", 2, "Error", "2")], EXIT2, "CacheFailed",
     ["pod b (index 0) exited with code 2"], ["OOMKilled", "limits.memory"]),
    # FailJob wins even when an OOM-killed pod of another index finished later.
    ([_failed("b", 2, "Error", "2"), _failed("a", 137, "OOMKilled", "3")], EXIT2, "CacheFailed",
     ["code 2"], ["limits.memory"]),
    # Backoff: the last to finish, not the last listed.
    ([_failed("late", 1, "Error", "5"), _failed("early", 137, "OOMKilled", "1")], BACKOFF, "CacheFailed",
     ["pod late (index 0) exited with code 1"], ["OOMKilled"]),
    ([_failed("late", 137, "OOMKilled", "5"), _failed("early", 1, "Error", "1")], BACKOFF, "OOMKilled",
     ["pod late (index 0) exited with code 137 (OOMKilled)", "limits.memory"], []),
    # Exit 3 (FailJob) wins over a peer's later exit 1 (it lost that rank). The cache stage
    # trains nothing: its exit 3 is out of GPU memory, never a divergence.
    ([_failed("oom", 3, "Error", "1"), _failed("peer", 1, "Error", "2")], EXIT2, "CacheFailed",
     ["pod oom (index 0) exited with code 3: the cache stage ran out of GPU memory, not retried",
      "names the spec fields to change"], ["pod peer", "diverged"]),
])
def test_the_failure_reason_is_the_pod_failure_that_failed_the_job(pods, job_reason, reason, words, absent):
    c = Cluster(trainingjob())
    c.step()
    c.pods["cache"] = pods
    c.finish("cache", ok=False, reason=job_reason)
    out = c.step()
    failed = c.condition("Failed")
    assert c.state == "Failed" and failed["reason"] == reason
    for word in words:
        assert word in failed["message"]
    for word in absent:
        assert word not in failed["message"]
    assert [(e.type, e.reason) for e in out.events] == [("Warning", reason)]  # no PodRestarted for a failed Job


# --- whose pods ---------------------------------------------------------------------------------

def _labelled(name: str, **labels) -> dict:
    return {"metadata": {"name": name, "labels": labels}, "status": {"phase": "Failed"}}


def test_only_the_pods_of_the_current_jobs_count():
    children = {"cache": {"metadata": {"uid": "cache-2"}}, "train": {"metadata": {"uid": "train-2"}},
                "config": {"metadata": {"uid": "cm"}}}
    pods = [_labelled("new-cache", **{"batch.kubernetes.io/controller-uid": "cache-2"}),
            _labelled("new-train", **{"batch.kubernetes.io/controller-uid": "train-2"}),
            _labelled("older-cluster", **{"controller-uid": "train-2"}),
            _labelled("predecessor", **{"batch.kubernetes.io/controller-uid": "train-1"}),
            _labelled("no-uid"), _labelled("the-configmap", **{"controller-uid": "cm"})]
    found = st.pods_by_stage(pods, children)
    assert {k: [p["metadata"]["name"] for p in v] for k, v in found.items()} == {
        "cache": ["new-cache"], "train": ["new-train", "older-cluster"]}
    assert st.pods_by_stage(pods, {}) == {"cache": [], "train": []}


def test_a_predecessors_failed_pods_are_no_restarts():
    c = Cluster(trainingjob())
    run_to_training(c)
    c.children["train"]["metadata"]["uid"] = "train-2"
    stale = pod("smoke-train-0-old", "Failed", terminated=OOM)
    stale["metadata"]["labels"] = {"batch.kubernetes.io/controller-uid": "train-1"}
    c.pods = st.pods_by_stage([stale], c.children)  # as operator.observe sorts them
    out = c.step()
    assert c.tj["status"]["restarts"] == 0 and out.events == []


# --- the status patch ---------------------------------------------------------------------------

@pytest.mark.parametrize("old, new, patch", [
    ({"a": 1}, {"a": 1}, {}),
    ({"a": 1, "completionTime": "t"}, {"a": 2}, {"a": 2, "completionTime": None}),
    ({"p": {"x": 1, "y": 2}}, {"p": {"x": 1}}, {"p": {"y": None}}),
    ({"c": [1, 2]}, {"c": [1]}, {"c": [1]}),  # lists are replaced whole
    ({}, {"p": {"x": 1}}, {"p": {"x": 1}}),
])
def test_merge_patch_names_what_changed_and_nulls_what_went(old, new, patch):
    assert st.merge_patch(old, new) == patch


def test_operator_apply_removes_a_dropped_status_key(monkeypatch):
    from runner.k8s import operator as op
    from runner.k8s.reconcile import Observed, Outcome

    sent = []

    class Api:
        def patch_namespaced_custom_object_status(self, *args):
            sent.append(args[-1])

    monkeypatch.setattr(op.kubernetes.client, "CustomObjectsApi", Api)
    tj = {"metadata": {"namespace": "ml", "name": "smoke"},
          "status": {"state": "Failed", "completionTime": "2026-01-01T12:00:00Z"}}
    op.apply(tj, Outcome(status={"state": "Pending"}), Observed())
    assert sent == [{"status": {"state": "Pending", "completionTime": None}}]
