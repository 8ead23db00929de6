"""Reading child Jobs and pods, and writing conditions, per the Kubernetes API conventions.

Pure functions over plain dicts (what the API returns). Conditions follow metav1.Condition:
type, status True/False/Unknown, CamelCase reason, a message for people, lastTransitionTime
(kept while the status stays the same) and observedGeneration.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable

from runner.exitcodes import EXIT_INVALID, EXIT_NOT_RETRYABLE
from runner.spec import errors

CONDITION_TYPES = ("Cached", "Running", "Complete", "Failed", "Suspended")
MESSAGE_LIMIT = 1024  # Events cap messages at 1 KiB; conditions stay readable in `kubectl describe`
# Scheduling that takes a moment is normal (autoscalers, Kueue); past this it is news.
UNSCHEDULABLE_AFTER_S = 300
# A pod on a node whose containers have not started this long after it was scheduled is stuck in
# ContainerCreating: mostly a volume that cannot be attached (a ReadWriteOnce claim attached to
# another node: Multi-Attach) or mounted (an NFS server that does not answer). The kubelet says
# ContainerCreating while it pulls the image too, and a first pull of a large image on a slow
# registry can take minutes: hence minutes, not seconds.
CONTAINER_CREATING_AFTER_S = 600
CONTAINER_CREATING_TOO_LONG = "ContainerCreatingTooLong"  # the condition reason
IMAGE_PULL_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName")
# The kubelet could not make the container: a Secret, ConfigMap or key the env names is missing
# (CreateContainerConfigError), or the runtime refused it (CreateContainerError). No image problem.
CREATE_CONTAINER_REASONS = ("CreateContainerConfigError", "CreateContainerError")
# Waiting reasons of a container that has not started yet and reports no error.
STARTING_REASONS = ("ContainerCreating", "PodInitializing")
# The Running reasons that say a pod cannot start (each reported once as a Warning Event).
STUCK_REASONS = (*IMAGE_PULL_REASONS, *CREATE_CONTAINER_REASONS, CONTAINER_CREATING_TOO_LONG, "Unschedulable")
# The Job controller labels its pods with the Job's uid (the second name before Kubernetes 1.27).
CONTROLLER_UID_LABELS = ("batch.kubernetes.io/controller-uid", "controller-uid")
# The runner's own exit codes (runner/exitcodes.py) that fail a Job at once, in a failure message,
# by stage: the cache stage trains nothing, so its exit 3 can only be the GPU's memory.
_SAME_WAY = "not retried since a retry would fail the same way; the pod's log names the spec fields to change"
EXIT_MEANINGS = {
    EXIT_INVALID: {"cache": "bad input, not retried", "train": "bad input, not retried"},
    EXIT_NOT_RETRYABLE: {"cache": f"the cache stage ran out of GPU memory, {_SAME_WAY}",
                         "train": f"training diverged or ran out of GPU memory, {_SAME_WAY}"},
}


def timestamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def clip(message: str) -> str:
    """A condition or event message cut to the API's limit."""
    return errors.clip(message, MESSAGE_LIMIT)


def condition(old: Iterable[dict[str, Any]], type_: str, status: bool | None, reason: str, message: str,
              now: datetime, generation: int | None) -> dict[str, Any]:
    """A condition; lastTransitionTime moves only when its status changes."""
    value = "Unknown" if status is None else ("True" if status else "False")
    previous = next((c for c in old if c.get("type") == type_), None)
    since = previous["lastTransitionTime"] if previous and previous.get("status") == value and \
        previous.get("lastTransitionTime") else timestamp(now)
    out = {"type": type_, "status": value, "reason": reason, "message": clip(message), "lastTransitionTime": since}
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: what changed, and null for
    each key `new` no longer has (a merge patch leaves an omitted key as it was)."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key in old and old[key] == value:
            continue
        both_maps = isinstance(value, dict) and isinstance(old.get(key), dict)
        patch[key] = merge_patch(old[key], value) if both_maps else value
    return patch


# ----------------------------------------------------------------------------- Jobs

def job_condition(job: dict | None, type_: str) -> dict | None:
    for c in (job or {}).get("status", {}).get("conditions", []) or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return c
    return None


def job_phase(job: dict | None) -> str:
    """absent, suspended, pending (no pod running yet), running, complete or failed.

    Suspended is what the Job's spec says, not its Suspended condition: right after a resume the
    Job controller has not cleared that condition yet, and the Job is starting, not suspended."""
    if job is None:
        return "absent"
    if job_condition(job, "Complete"):
        return "complete"
    if job_condition(job, "Failed"):
        return "failed"
    if job.get("spec", {}).get("suspend"):
        return "suspended"
    status = job.get("status", {})
    return "running" if (status.get("ready") or 0) > 0 or (status.get("succeeded") or 0) > 0 else "pending"


def job_failure(job: dict) -> str:
    c = job_condition(job, "Failed") or {}
    return f"{c.get('reason', 'Failed')}: {c.get('message', '')}".rstrip(": ")


# ----------------------------------------------------------------------------- pods

def _index(pod: dict) -> str:
    return pod.get("metadata", {}).get("annotations", {}).get("batch.kubernetes.io/job-completion-index", "?")


def _name(pod: dict) -> str:
    return pod.get("metadata", {}).get("name", "?")


def terminated(pod: dict) -> dict | None:
    """The container's terminated state (this attempt's exit code and reason)."""
    for cs in pod.get("status", {}).get("containerStatuses", []) or []:
        state = cs.get("state", {}).get("terminated") or cs.get("lastState", {}).get("terminated")
        if state:
            return state
    return None


def exit_meaning(code: int | None, stage: str) -> str | None:
    """What one of the runner's exit codes means in this stage (cache, train); None for others."""
    return (EXIT_MEANINGS.get(code) or {}).get(stage)


def failed_pod_message(pod: dict, stage: str) -> str:
    """Why one pod of the stage (cache, train) failed: exit code and reason (OOMKilled), or its
    eviction."""
    status = pod.get("status", {})
    if status.get("reason") == "Evicted" or any(c.get("type") == "DisruptionTarget" and c.get("status") == "True"
                                                 for c in status.get("conditions", []) or []):
        return f"pod {_name(pod)} (index {_index(pod)}) was evicted: {status.get('message', 'disrupted')}"
    state = terminated(pod)
    if state:
        why = f" ({state['reason']})" if state.get("reason") and state.get("reason") != "Error" else ""
        meaning = exit_meaning(state.get("exitCode"), stage)
        meaning = f": {meaning}" if meaning else ""
        return f"pod {_name(pod)} (index {_index(pod)}) exited with code {state.get('exitCode')}{why}{meaning}"
    return f"pod {_name(pod)} (index {_index(pod)}) failed: {status.get('reason') or status.get('message', '')}"


def is_oom_killed(pod: dict) -> bool:
    return (terminated(pod) or {}).get("reason") == "OOMKilled"


def stuck_pod(pods: Iterable[dict], now: datetime) -> tuple[str, str] | None:
    """(reason, message) for a pod that cannot start: an image it cannot pull, a container the
    kubelet cannot create (a missing Secret), containers not started CONTAINER_CREATING_AFTER_S
    after the pod got its node (a volume that does not attach or mount), or no node for it after
    UNSCHEDULABLE_AFTER_S. None when every pod is fine. From the pods alone, no Events read."""
    for pod in pods:
        status = pod.get("status", {})
        if status.get("phase") not in (None, "Pending"):
            continue
        containers = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
        for cs in containers:
            waiting = cs.get("state", {}).get("waiting") or {}
            reason, message = waiting.get("reason"), waiting.get("message", "")
            if reason in IMAGE_PULL_REASONS:
                return reason, (f"pod {_name(pod)}: {reason} for image {cs.get('image', '?')}: {message}").rstrip(": ")
            if reason in CREATE_CONTAINER_REASONS:
                hint = ("; a Secret, ConfigMap or key that the pod's env names is missing in this namespace "
                        "(spec.kubernetes.secrets)" if reason == "CreateContainerConfigError" else "")
                return reason, (f"pod {_name(pod)} (index {_index(pod)}) cannot create its container "
                                f"{cs.get('name', '?')} ({reason}): {message or 'no message'}{hint}")
        creating = _not_started_for(pod, containers, now)
        if creating is not None and creating >= CONTAINER_CREATING_AFTER_S:
            node = pod.get("spec", {}).get("nodeName")
            return CONTAINER_CREATING_TOO_LONG, (
                f"pod {_name(pod)} (index {_index(pod)}) has not started {int(creating // 60)} min after it was "
                f"scheduled{f' on node {node}' if node else ''} (ContainerCreating): usually a volume that cannot "
                f"be attached (a ReadWriteOnce claim in use on another node: Multi-Attach) or mounted (an NFS "
                f"server that does not answer), or a very large image still being pulled; the pod's Events "
                f"(FailedAttachVolume, FailedMount) say which: kubectl describe pod {_name(pod)}")
        for c in status.get("conditions", []) or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
                since = parse_time(c.get("lastTransitionTime"))
                waited = (now - since).total_seconds() if since else 0
                if waited >= UNSCHEDULABLE_AFTER_S:
                    return "Unschedulable", (f"pod {_name(pod)} unschedulable for {int(waited // 60)} min: "
                                             f"{c.get('message', '')}").rstrip(": ")
    return None


def _not_started_for(pod: dict, containers: list[dict], now: datetime) -> float | None:
    """Seconds since a scheduled pod got its node while none of its containers has started (each
    waiting without an error, or not reported yet); None for any other pod."""
    if any(cs.get("state", {}).get("running") or cs.get("state", {}).get("terminated") for cs in containers):
        return None
    if any((cs.get("state", {}).get("waiting") or {}).get("reason") not in STARTING_REASONS for cs in containers):
        return None
    scheduled = next((c for c in pod.get("status", {}).get("conditions", []) or []
                      if c.get("type") == "PodScheduled" and c.get("status") == "True"), None)
    since = parse_time((scheduled or {}).get("lastTransitionTime"))
    return (now - since).total_seconds() if since else None


def failed_pods(pods: Iterable[dict]) -> list[dict]:
    return [p for p in pods if p.get("status", {}).get("phase") == "Failed"]


def fatal_pod(failed: list[dict], fail_job_exit_codes: Iterable[int]) -> dict | None:
    """The failed pod that failed its Job: one that exited with a code of the podFailurePolicy's
    FailJob rule, else the last to finish (finishedAt; the API lists pods in no time order)."""
    ordered = sorted(failed, key=lambda p: (terminated(p) or {}).get("finishedAt") or "")  # stable
    codes = set(fail_job_exit_codes)
    fatal = [p for p in ordered if (terminated(p) or {}).get("exitCode") in codes]
    return (fatal or ordered or [None])[-1]


def pods_by_stage(pods: Iterable[dict], children: dict[str, dict]) -> dict[str, list[dict]]:
    """The pods of each current child Job, by its role (cache, train), matched on the Job's uid
    in the pod's controller-uid label: a same-named Job of a deleted TrainingJob has another uid,
    so its pods (terminating for up to the grace period) are not counted."""
    roles = {job["metadata"].get("uid"): role for role, job in children.items()
             if role in ("cache", "train") and job.get("metadata", {}).get("uid")}
    out: dict[str, list[dict]] = {"cache": [], "train": []}
    for pod in pods:
        labels = pod.get("metadata", {}).get("labels") or {}
        uid = next((labels[k] for k in CONTROLLER_UID_LABELS if labels.get(k)), None)
        if uid in roles:
            out[roles[uid]].append(pod)
    return out
