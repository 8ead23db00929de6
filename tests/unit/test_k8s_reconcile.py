"""The operator's pure state machine, as tables: every transition, suspend/resume, delete, an
operator restart in every stage, and pods that are OOMKilled, evicted or cannot pull their image."""
from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from runner.k8s import status as st
from runner.k8s.reconcile import Observed, Outcome, reconcile, role_of

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


def trainingjob(generation: int = 1, **spec_changes) -> dict:
    doc = yaml.safe_load((REPO / "k8s" / "example-trainingjob.yaml").read_text())
    doc["metadata"].update(namespace="ml", uid="uid-1", generation=generation, resourceVersion="7",
                           creationTimestamp="2026-01-01T11:59:00Z", managedFields=[{"manager": "kubectl"}])
    doc["spec"].update(spec_changes)
    return doc


# --- a tiny in-memory cluster: what the thin layer and the Job controller would do -----------

def merged(target: dict, patch: dict) -> dict:
    """RFC 7386: a JSON merge patch applied, as the API server applies the operator's status patch."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


class Cluster:
    def __init__(self, tj: dict):
        self.tj, self.children, self.pods, self.progress = tj, {}, {"cache": [], "train": []}, None
        self.created: list[str] = []
        self.workloads: dict[str, dict] = {}  # Kueue's, by the role of their Job

    def observed(self) -> Observed:
        return Observed(copy.deepcopy(self.children), copy.deepcopy(self.pods), self.progress,
                        workloads=copy.deepcopy(self.workloads))

    def step(self, now: datetime = T0) -> Outcome:
        out = reconcile(copy.deepcopy(self.tj), self.observed(), now)
        for obj in out.create:
            self.children[role_of(obj)] = copy.deepcopy(obj)
            self.created.append(f"{obj['kind']}/{obj['metadata']['name']}")
        for role, patch in out.patch:
            self.children[role]["spec"].update(patch["spec"])
        for role, patch in out.workload_patch:
            self.workloads[role] = merged(self.workloads[role], patch)
        old = self.tj.get("status") or {}
        self.tj["status"] = merged(old, st.merge_patch(old, out.status))  # what operator.apply sends
        assert self.tj["status"] == out.status
        return out

    def job_status(self, role: str, **status) -> None:
        self.children[role]["status"] = status

    def finish(self, role: str, ok: bool = True, reason: str = "BackoffLimitExceeded") -> None:
        cond = {"type": "Complete" if ok else "Failed", "status": "True"}
        if not ok:
            cond.update(reason=reason, message="Job has reached the specified backoff limit")
        self.job_status(role, conditions=[cond], succeeded=1 if ok else 0, failed=0 if ok else 4)

    @property
    def state(self) -> str:
        return self.tj["status"]["state"]

    def condition(self, type_: str) -> dict:
        return next(c for c in self.tj["status"]["conditions"] if c["type"] == type_)


def pod(name: str, phase: str = "Running", index: int = 0, terminated: dict | None = None, waiting: dict | None = None,
        conditions: list | None = None, reason: str | None = None, message: str | None = None) -> dict:
    status: dict = {"phase": phase, "conditions": conditions or []}
    cs = {"name": "trainer", "image": "ghcr.io/trainingjob/trainingjob:0.1.0-cpu", "state": {}}
    if terminated:
        cs["state"]["terminated"] = terminated
    if waiting:
        cs["state"]["waiting"] = waiting
    status["containerStatuses"] = [cs]
    if reason:
        status["reason"], status["message"] = reason, message
    return {"metadata": {"name": name, "annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
            "status": status}


def run_to_training(cluster: Cluster) -> None:
    cluster.step()
    cluster.job_status("cache", ready=1, active=1)
    cluster.step()
    cluster.finish("cache")
    cluster.step()
    cluster.job_status("train", ready=1, active=1)
    cluster.step()


# --- the happy path -----------------------------------------------------------------------

def test_new_to_caching_to_training_to_succeeded():
    c = Cluster(trainingjob())
    first = c.step()
    assert c.created == ["ConfigMap/smoke-spec", "Job/smoke-cache"]  # apply order; no train Job yet
    assert (c.state, c.tj["status"]["stage"]) == ("Pending", "cache")
    assert c.condition("Cached")["status"] == "False" and c.condition("Running")["status"] == "False"
    assert [e.reason for e in first.events] == ["Created", "Pending"]

    c.job_status("cache", ready=1, active=1)
    out = c.step()
    assert c.state == "Caching"
    assert (c.condition("Running")["status"], c.condition("Running")["reason"]) == ("True", "CacheRunning")
    assert [e.reason for e in out.events] == ["Caching"] and out.create == []

    c.finish("cache")
    out = c.step()
    assert c.created[2:] == ["Service/smoke-train", "Job/smoke-train"]
    assert c.condition("Cached")["status"] == "True" and c.condition("Cached")["reason"] == "CacheComplete"
    assert (c.state, c.tj["status"]["stage"]) == ("Pending", "train")

    c.job_status("train", ready=1, active=1)
    c.progress = {"step": 5, "totalSteps": 20, "steps": "5/20", "loss": 0.5, "eta": "30s", "etaSeconds": 30,
                  "samplesPerSecond": 1.0, "updatedAt": "2026-01-01T12:00:00Z"}
    out = c.step()
    assert c.state == "Training" and c.tj["status"]["progress"]["steps"] == "5/20"
    assert c.condition("Running")["status"] == "True" and c.condition("Running")["reason"] == "Training"

    c.finish("train")
    c.progress = None  # the pod is gone: the last progress read stays
    out = c.step(T0 + timedelta(minutes=5))
    assert c.state == "Succeeded" and c.condition("Complete")["status"] == "True"
    assert c.tj["status"]["progress"]["steps"] == "5/20"
    assert c.tj["status"]["completionTime"] == "2026-01-01T12:05:00Z"
    assert c.tj["status"]["startTime"] == "2026-01-01T12:00:00Z"
    assert [e.reason for e in out.events] == ["Succeeded"]
    assert c.created == ["ConfigMap/smoke-spec", "Job/smoke-cache", "Service/smoke-train", "Job/smoke-train"]


def test_status_follows_the_api_conventions():
    c = Cluster(trainingjob(generation=3))
    c.step()
    status = c.tj["status"]
    assert status["observedGeneration"] == 3
    assert [x["type"] for x in status["conditions"]] == ["Cached", "Running", "Complete", "Failed", "Suspended"]
    for cond in status["conditions"]:
        assert cond["status"] in ("True", "False", "Unknown") and cond["reason"][0].isupper()
        assert " " not in cond["reason"] and cond["observedGeneration"] == 3
    # lastTransitionTime moves only when a condition's status changes.
    c.step(T0 + timedelta(minutes=1))
    assert c.condition("Running")["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    c.job_status("cache", ready=1)
    c.step(T0 + timedelta(minutes=2))
    assert c.condition("Running")["lastTransitionTime"] == "2026-01-01T12:02:00Z"


# --- failures -------------------------------------------------------------------------------

OOM = {"exitCode": 137, "reason": "OOMKilled"}


SHM_COUNTS = "/dev/shm (spec.kubernetes.shmSize, {} here) is memory and counts toward that limit too"
NO_SHM = {"shmSize": None}  # unset: the rendered size, half the example's 4Gi memory request


@pytest.mark.parametrize("stage, terminated, kubernetes, reason, words", [
    ("cache", {"exitCode": 1, "reason": "Error"}, {}, "CacheFailed", ["exited with code 1", "BackoffLimitExceeded"]),
    ("cache", OOM, {}, "OOMKilled", ["exited with code 137 (OOMKilled)", "limits.memory", SHM_COUNTS.format("1Gi")]),
    ("train", {"exitCode": 1, "reason": "Error"}, {}, "TrainingFailed", ["train Job smoke-train failed", "code 1"]),
    ("train", OOM, {}, "OOMKilled", ["(OOMKilled)", SHM_COUNTS.format("1Gi")]),
    ("train", OOM, NO_SHM, "OOMKilled", [SHM_COUNTS.format("2048Mi")]),
    ("train", {"exitCode": 2, "reason": "Error"}, {}, "TrainingFailed", ["PodFailurePolicy", "code 2: bad input"]),
    # Diverged or out of GPU memory: failed at once, said so, and no PodRestarted "resumes" it.
    ("train", {"exitCode": 3, "reason": "Error"}, {}, "TrainingFailed",
     ["PodFailurePolicy", "code 3: training diverged or ran out of GPU memory, not retried"]),
    # The cache stage trains nothing: its exit 3 is out of GPU memory only.
    ("cache", {"exitCode": 3, "reason": "Error"}, {}, "CacheFailed",
     ["PodFailurePolicy", "code 3: the cache stage ran out of GPU memory, not retried"]),
])
def test_a_failed_stage_fails_the_job_and_says_why(stage, terminated, kubernetes, reason, words):
    tj = trainingjob()
    tj["spec"]["kubernetes"].update(kubernetes)
    tj["spec"]["kubernetes"] = {k: v for k, v in tj["spec"]["kubernetes"].items() if v is not None}
    c = Cluster(tj)
    if stage == "train":
        run_to_training(c)
    else:
        c.step()
    c.pods[stage] = [pod(f"smoke-{stage}-0-x", "Failed", terminated=terminated)]
    c.finish(stage, ok=False, reason="PodFailurePolicy" if terminated["exitCode"] in (2, 3) else "BackoffLimitExceeded")
    out = c.step()
    failed = c.condition("Failed")
    assert c.state == "Failed" and failed["status"] == "True" and failed["reason"] == reason
    for word in words:
        assert word in failed["message"]
    assert any(e.type == "Warning" and e.reason == reason for e in out.events)
    assert "PodRestarted" not in [e.reason for e in out.events]
    assert "Job/smoke-train" not in c.created[:2] and (stage == "train" or "Job/smoke-train" not in c.created)
    assert c.step().events == [] and c.step().create == []  # stays failed, quietly


@pytest.mark.parametrize("bad_pod, counted", [
    (pod("smoke-train-0-a", "Failed", terminated=OOM), True),
    (pod("smoke-train-0-b", "Failed", reason="Evicted", message="The node was low on resource: memory."), True),
    (pod("smoke-train-0-c", "Failed", conditions=[{"type": "DisruptionTarget", "status": "True",
                                                   "reason": "PreemptionByScheduler"}]), True),
])
def test_a_killed_or_evicted_train_pod_is_retried_by_the_job(bad_pod, counted):
    """The Job replaces the pod (podFailurePolicy) and the new one resumes from the checkpoint:
    the TrainingJob keeps Training, counts the restart and says so once."""
    c = Cluster(trainingjob())
    run_to_training(c)
    c.pods["train"] = [bad_pod, pod("smoke-train-0-new")]
    out = c.step()
    assert c.state == "Training" and c.tj["status"]["restarts"] == 1
    assert [e.reason for e in out.events] == ["PodRestarted"]
    assert c.step().events == []


def test_image_pull_backoff_is_reported_at_once():
    c = Cluster(trainingjob())
    c.step()
    waiting = {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "ghcr.io/x"'}
    c.pods["cache"] = [pod("smoke-cache-0-a", "Pending", waiting=waiting)]
    out = c.step()
    running = c.condition("Running")
    assert c.state == "Pending" and running["reason"] == "ImagePullBackOff"
    assert "ImagePullBackOff for image ghcr.io/trainingjob/trainingjob:0.1.0-cpu" in running["message"]
    assert [e.reason for e in out.events] == ["ImagePullBackOff"]
    assert c.step().events == []  # one Event per problem, not per reconcile


def test_unschedulable_is_reported_after_a_timeout():
    c = Cluster(trainingjob())
    c.step()
    scheduled = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                 "lastTransitionTime": "2026-01-01T12:00:00Z"}
    c.pods["cache"] = [pod("smoke-cache-0-a", "Pending", conditions=[scheduled])]
    c.step(T0 + timedelta(minutes=1))
    assert c.condition("Running")["reason"] == "PodsPending"
    out = c.step(T0 + timedelta(minutes=6))
    assert c.condition("Running")["reason"] == "Unschedulable"
    assert "unschedulable for 6 min: 0/3 nodes are available" in c.condition("Running")["message"]
    assert [e.reason for e in out.events] == ["Unschedulable"]


SCHEDULED = {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T12:00:00Z"}


def test_a_pod_stuck_in_container_creating_is_reported_after_a_timeout():
    """A 2-node cache Job: pod 0 runs, pod 1 has a node but its volume never attaches."""
    c = Cluster(trainingjob())
    c.step()
    c.job_status("cache", ready=1, active=2)
    stuck = pod("smoke-cache-1-b", "Pending", 1, waiting={"reason": "ContainerCreating"}, conditions=[SCHEDULED])
    stuck["spec"] = {"nodeName": "gpu-7"}
    c.pods["cache"] = [pod("smoke-cache-0-a", "Running", 0), stuck]
    c.step(T0 + timedelta(minutes=5))  # an image pull or an attach may take that long
    assert c.state == "Caching" and c.condition("Running")["reason"] == "CacheRunning"
    out = c.step(T0 + timedelta(minutes=45))
    running = c.condition("Running")
    assert c.state == "Caching" and running["status"] == "False" and running["reason"] == "ContainerCreatingTooLong"
    assert "pod smoke-cache-1-b (index 1) has not started 45 min after it was scheduled on node gpu-7" in running["message"]
    assert "Multi-Attach" in running["message"] and "kubectl describe pod smoke-cache-1-b" in running["message"]
    assert [(e.type, e.reason) for e in out.events] == [("Warning", "ContainerCreatingTooLong")]
    assert c.step(T0 + timedelta(minutes=46)).events == []


def test_a_pod_whose_init_container_runs_is_not_stuck():
    c = Cluster(trainingjob())
    c.step()
    waiting = pod("smoke-cache-0-a", "Pending", waiting={"reason": "PodInitializing"}, conditions=[SCHEDULED])
    waiting["status"]["initContainerStatuses"] = [{"name": "init", "state": {"running": {}}}]
    c.pods["cache"] = [waiting]
    c.step(T0 + timedelta(minutes=45))
    assert c.condition("Running")["reason"] == "PodsPending"


@pytest.mark.parametrize("reason, message, words", [
    ("CreateContainerConfigError", 'secret "hf-token" not found', "a Secret, ConfigMap or key that the pod's env names"),
    ("CreateContainerError", "failed to reserve container name", "failed to reserve container name"),
])
def test_a_container_that_cannot_be_created_is_reported_with_its_cause(reason, message, words):
    c = Cluster(trainingjob())
    c.step()
    c.pods["cache"] = [pod("smoke-cache-0-a", "Pending", waiting={"reason": reason, "message": message})]
    out = c.step()
    running = c.condition("Running")
    assert c.state == "Pending" and running["reason"] == reason
    assert running["message"].startswith(f"pod smoke-cache-0-a (index 0) cannot create its container trainer ({reason}): "
                                         f"{message}")
    assert words in running["message"] and "for image" not in running["message"]
    assert [(e.type, e.reason) for e in out.events] == [("Warning", reason)]


def test_invalid_spec_fails_with_invalid_spec_and_starts_nothing():
    tj = trainingjob()
    del tj["spec"]["kubernetes"]["volumes"]["cache"]
    tj["spec"]["training"]["maxSteps"] = None
    del tj["spec"]["training"]["maxSteps"]
    c = Cluster(tj)
    out = c.step()
    assert out.create == [] and c.state == "Failed"
    failed = c.condition("Failed")
    assert failed["reason"] == "InvalidSpec" and "maxSteps or epochs" in failed["message"]
    assert [e.reason for e in out.events] == ["InvalidSpec"]
    assert c.step().events == []
    # Fixing the spec (a new generation) starts the job.
    c.tj = {**trainingjob(generation=2), "status": c.tj["status"]}
    c.step()
    assert c.created == ["ConfigMap/smoke-spec", "Job/smoke-cache"] and c.state == "Pending"


def test_a_kubernetes_only_problem_is_invalid_spec_too():
    tj = trainingjob()
    tj["spec"]["hardware"]["accelerator"] = "mps"
    tj["spec"]["training"]["mixedPrecision"] = "no"
    c = Cluster(tj)
    assert c.step().create == [] and "has no container image" in c.condition("Failed")["message"]


# --- suspend / resume, Kueue ------------------------------------------------------------------

def test_suspend_and_resume_while_training():
    c = Cluster(trainingjob())
    run_to_training(c)
    c.tj["spec"]["suspend"], c.tj["metadata"]["generation"] = True, 2
    out = c.step()
    assert out.patch == [("train", {"spec": {"suspend": True}})]
    assert c.state == "Suspended"
    assert (c.condition("Suspended")["status"], c.condition("Suspended")["reason"]) == ("True", "Suspended")
    assert [e.reason for e in out.events] == ["Suspended"]
    c.job_status("train", ready=0, active=0)
    c.tj["spec"]["suspend"] = False
    out = c.step()
    assert out.patch == [("train", {"spec": {"suspend": False}})] and [e.reason for e in out.events] == ["Resumed"]


def test_created_suspended_and_the_cache_job_waits():
    c = Cluster(trainingjob(suspend=True))
    c.step()
    assert c.children["cache"]["spec"]["suspend"] is True and c.state == "Suspended"


def test_kueue_admits_the_jobs_the_operator_only_suspends():
    tj = trainingjob()
    tj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] = "gpus"
    c = Cluster(tj)
    c.step()
    c.children["cache"]["spec"]["suspend"] = True  # Kueue's webhook holds the new Job
    out = c.step()
    assert out.patch == [] and c.state == "Suspended"
    assert c.condition("Suspended")["reason"] == "QueueSuspended"
    c.children["cache"]["spec"]["suspend"] = False  # admitted
    c.job_status("cache", ready=1)
    c.step()
    assert c.state == "Caching"


class Kueue:
    """Kueue's part, as its Job reconciler plays it (quota always free): it makes a Workload for
    each unfinished queued Job and admits it; a suspended Job whose Workload is admitted is
    unsuspended (started); a deactivated Workload is evicted and its Job suspended."""

    def __init__(self, cluster: Cluster):
        self.c, self.unsuspended = cluster, 0

    def reconcile(self) -> None:
        for role in ("cache", "train"):
            job = self.c.children.get(role)
            if job is None or "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"] or \
                    st.job_phase(job) in ("complete", "failed"):
                continue
            workload = self.c.workloads.setdefault(role, {
                "metadata": {"name": f"job-{job['metadata']['name']}-1a2b3", "labels": {"kueue.x-k8s.io/job-uid": role}},
                "spec": {"active": True}})
            if workload["spec"].get("active", True):
                if job["spec"].get("suspend"):
                    job["spec"]["suspend"] = False
                    self.unsuspended += 1
            else:
                job["spec"]["suspend"] = True


def kueue_trainingjob(**spec) -> dict:
    tj = trainingjob(**spec)
    tj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] = "gpus"
    return tj


def test_suspending_a_kueue_job_deactivates_its_workload_and_never_fights_kueue():
    c = Cluster(kueue_trainingjob())
    kueue = Kueue(c)
    c.step()
    kueue.reconcile()
    c.job_status("cache", ready=1, active=1)
    c.step()
    assert c.state == "Caching" and c.workloads["cache"]["spec"]["active"] is True

    c.tj["spec"]["suspend"], c.tj["metadata"]["generation"] = True, 2
    for _ in range(5):  # operator, Kueue, operator, ...: the Job stays suspended, nobody undoes anybody
        out = c.step()
        assert out.patch == []  # the queued Job's spec.suspend is Kueue's
        kueue.reconcile()
        c.job_status("cache", ready=0, active=0)
    assert kueue.unsuspended == 0 and c.children["cache"]["spec"]["suspend"] is True
    workload = c.workloads["cache"]
    assert workload["spec"]["active"] is False and workload["metadata"]["annotations"] == {"diffusion.runner.dev/suspended": "true"}
    assert c.state == "Suspended" and c.condition("Suspended")["reason"] == "Suspended"
    assert "Workload job-smoke-cache-1a2b3 is deactivated" in c.condition("Suspended")["message"]

    # Resume: the operator reactivates the Workload it deactivated; Kueue admits and starts the Job.
    c.tj["spec"]["suspend"] = False
    out = c.step()
    assert out.patch == [] and out.workload_patch == [
        ("cache", {"metadata": {"annotations": {"diffusion.runner.dev/suspended": None}}, "spec": {"active": True}})]
    assert c.state == "Suspended" and c.condition("Suspended")["reason"] == "QueueSuspended"  # until admitted
    kueue.reconcile()
    c.job_status("cache", ready=1, active=1)
    out = c.step()
    assert c.state == "Caching" and kueue.unsuspended == 1 and [e.reason for e in out.events] == ["Resumed"]
    assert "annotations" not in c.workloads["cache"]["metadata"] or not c.workloads["cache"]["metadata"]["annotations"]


def test_a_workload_kueue_deactivated_itself_stays_deactivated():
    c = Cluster(kueue_trainingjob())
    c.step()
    Kueue(c).reconcile()
    c.workloads["cache"]["spec"]["active"] = False  # e.g. past its requeue limit (waitForPodsReady)
    c.children["cache"]["spec"]["suspend"] = True
    out = c.step()
    assert out.patch == [] and out.workload_patch == []
    assert c.state == "Suspended" and c.condition("Suspended")["reason"] == "QueueSuspended"
    assert "it deactivated Workload job-smoke-cache-1a2b3" in c.condition("Suspended")["message"]


def test_a_kueue_job_created_suspended_makes_its_jobs_on_resume():
    """Kueue would admit a new queued Job at once, suspended or not."""
    c = Cluster(kueue_trainingjob(suspend=True))
    c.step()
    assert c.created == ["ConfigMap/smoke-spec"] and c.state == "Suspended"
    c.tj["spec"]["suspend"] = False
    out = c.step()
    assert c.created == ["ConfigMap/smoke-spec", "Job/smoke-cache"] and [e.reason for e in out.events][:1] == ["Created"]


def test_before_kueue_made_the_workload_the_queued_job_itself_is_suspended():
    c = Cluster(kueue_trainingjob())
    c.step()
    c.tj["spec"]["suspend"] = True
    assert c.step().patch == [("cache", {"spec": {"suspend": True}})]


def test_resume_without_kueue_is_not_reported_as_held_by_a_queue():
    """The Job controller clears the Job's Suspended condition a moment after the resume."""
    c = Cluster(trainingjob())
    run_to_training(c)
    c.tj["spec"]["suspend"] = True
    c.step()
    c.job_status("train", ready=0, active=0, conditions=[{"type": "Suspended", "status": "True",
                                                          "reason": "JobSuspended"}])
    c.step()
    c.tj["spec"]["suspend"] = False
    out = c.step()
    assert out.patch == [("train", {"spec": {"suspend": False}})]
    assert c.state == "Pending" and c.condition("Suspended")["status"] == "False"
    assert "QueueSuspended" not in {cond["reason"] for cond in c.tj["status"]["conditions"]}
    assert [e.reason for e in out.events] == ["Resumed"]


# --- delete, restarts, terminal -----------------------------------------------------------------

def test_delete_creates_and_reports_nothing():
    c = Cluster(trainingjob())
    run_to_training(c)
    c.tj["metadata"]["deletionTimestamp"] = "2026-01-01T12:10:00Z"
    before = copy.deepcopy(c.tj["status"])
    out = c.step()
    assert out.create == [] and out.patch == [] and out.events == [] and c.tj["status"] == before
    # Deletion cascades through the API server's garbage collector: every child is owned.
    assert all(ch["metadata"]["ownerReferences"][0]["uid"] == "uid-1" for ch in c.children.values())


def snapshots():
    """The cluster at each stage, as an operator that just restarted would find it."""
    def at(n_steps, setup=None):
        c = Cluster(trainingjob())
        c.step()
        for change in [lambda c: c.job_status("cache", ready=1), lambda c: c.finish("cache"),
                       lambda c: c.job_status("train", ready=1), lambda c: c.finish("train")][:n_steps]:
            change(c)
            c.step()
        return c

    def failed_in_training():
        c = at(3)
        c.finish("train", ok=False)
        c.step()
        return c
    return {"pending": at(0), "caching": at(1), "cached": at(2), "training": at(3), "succeeded": at(4),
            "failed": failed_in_training()}


@pytest.mark.parametrize("stage", ["pending", "caching", "cached", "training", "succeeded", "failed"])
def test_operator_restart_in_every_stage_converges_without_duplicates(stage):
    c = snapshots()[stage]
    assert c.state == {"pending": "Pending", "caching": "Caching", "cached": "Pending", "training": "Training",
                       "succeeded": "Succeeded", "failed": "Failed"}[stage]
    created = list(c.created)
    status = copy.deepcopy(c.tj["status"])
    out = c.step(T0 + timedelta(seconds=30))
    assert out.create == [] and out.patch == [] and out.events == []
    assert c.created == created and c.tj["status"] == status  # a fixed point


def test_restart_between_two_creates_makes_only_the_missing_child():
    c = Cluster(trainingjob())
    c.step()
    del c.children["cache"]  # the operator died after the ConfigMap and before the Job
    out = c.step()
    assert [o["metadata"]["name"] for o in out.create] == ["smoke-cache"]


@pytest.mark.parametrize("stage, state", [("succeeded", "Succeeded"), ("failed", "Failed")])
def test_a_finished_job_is_never_rerun(stage, state):
    c = snapshots()[stage]
    c.children.clear()  # someone deleted the Jobs
    out = c.step()
    assert out.create == [] and c.state == state


def test_a_dataset_on_no_volume_is_warned_about_once_as_the_cache_job_starts():
    datasets = [{"name": "mine", "type": "local", "path": "/photos/mine"}]  # the example has no data volume
    c = Cluster(trainingjob(datasets=datasets))
    first = c.step()
    assert c.created == ["ConfigMap/smoke-spec", "Job/smoke-cache"]  # a warning, not a refusal
    warnings = [e for e in first.events if e.type == "Warning"]
    assert [e.reason for e in warnings] == ["DatasetNotOnVolume"]
    assert warnings[0].message.startswith("spec.datasets[0].path: /photos/mine is on no volume in the pod")
    c.job_status("cache", ready=1, active=1)
    assert all(e.type != "Warning" for e in c.step().events)  # not again on later reconciles
    assert all(e.reason != "DatasetNotOnVolume" for e in Cluster(trainingjob()).step().events)


def test_children_applied_from_render_are_not_created_again_nor_reported_created():
    """`trainingjob render | kubectl apply` made the ConfigMap and the cache Job (our labels, no
    ownerReference): creating them would meet a 409 at every sync while the status said
    Pending and an Event said Created. The operator names them instead and creates the rest."""
    tj = trainingjob()
    observed = Observed(foreign=("ConfigMap/smoke-spec", "Job/smoke-cache"))
    out = reconcile(copy.deepcopy(tj), observed, T0)
    assert [f"{o['kind']}/{o['metadata']['name']}" for o in out.create] == []
    warned = [e for e in out.events if e.reason == "ErrResourceExists"]
    assert [e.message.split(" exists")[0] for e in warned] == ["ConfigMap smoke-spec", "Job smoke-cache"]
    assert all(e.type == "Warning" and "delete it" in e.message for e in warned)
    assert not [e for e in out.events if e.reason == "Created"]
    # another object of the same job still gets made
    out = reconcile(copy.deepcopy(tj), Observed(foreign=("ConfigMap/smoke-spec",)), T0)
    assert [f"{o['kind']}/{o['metadata']['name']}" for o in out.create] == ["Job/smoke-cache"]
    assert [e.reason for e in out.events if e.reason in ("Created", "ErrResourceExists")] == ["ErrResourceExists", "Created"]
