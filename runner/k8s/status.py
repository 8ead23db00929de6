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
IMAGE_PULL_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError")
# The Job controller labels its pods with the Job's uid (the second name before Kubernetes 1.27).
CONTROLLER_UID_LABELS = ("batch.kubernetes.io/controller-uid", "controller-uid")
# The runner's own exit codes (runner/exitcodes.py) that fail a Job at once, in a failure message.
EXIT_MEANINGS = {
    EXIT_INVALID: "bad input, not retried",
    EXIT_NOT_RETRYABLE: "training diverged or ran out of GPU memory, not retried since a retry would fail the "
                        "same way; the pod's log names the spec fields to change",
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
    """absent, suspended, pending (no pod running yet), running, complete or failed."""
    if job is None:
        return "absent"
    if job_condition(job, "Complete"):
        return "complete"
    if job_condition(job, "Failed"):
        return "failed"
    if job.get("spec", {}).get("suspend") or job_condition(job, "Suspended"):
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


def failed_pod_message(pod: dict) -> str:
    """Why one pod failed: exit code and reason (OOMKilled), or its eviction."""
    status = pod.get("status", {})
    if status.get("reason") == "Evicted" or any(c.get("type") == "DisruptionTarget" and c.get("status") == "True"
                                                 for c in status.get("conditions", []) or []):
        return f"pod {_name(pod)} (index {_index(pod)}) was evicted: {status.get('message', 'disrupted')}"
    state = terminated(pod)
    if state:
        why = f" ({state['reason']})" if state.get("reason") and state.get("reason") != "Error" else ""
        meaning = f": {EXIT_MEANINGS[state.get('exitCode')]}" if state.get("exitCode") in EXIT_MEANINGS else ""
        return f"pod {_name(pod)} (index {_index(pod)}) exited with code {state.get('exitCode')}{why}{meaning}"
    return f"pod {_name(pod)} (index {_index(pod)}) failed: {status.get('reason') or status.get('message', '')}"


def is_oom_killed(pod: dict) -> bool:
    return (terminated(pod) or {}).get("reason") == "OOMKilled"


def stuck_pod(pods: Iterable[dict], now: datetime) -> tuple[str, str] | None:
    """(reason, message) for a pod that cannot start: an image it cannot pull, or no node for
    it after UNSCHEDULABLE_AFTER_S. None when every pod is fine."""
    for pod in pods:
        status = pod.get("status", {})
        if status.get("phase") not in (None, "Pending"):
            continue
        for cs in status.get("containerStatuses", []) or []:
            waiting = cs.get("state", {}).get("waiting") or {}
            if waiting.get("reason") in IMAGE_PULL_REASONS:
                return waiting["reason"], (f"pod {_name(pod)}: {waiting['reason']} for image "
                                           f"{cs.get('image', '?')}: {waiting.get('message', '')}").rstrip(": ")
        for c in status.get("conditions", []) or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
                since = parse_time(c.get("lastTransitionTime"))
                waited = (now - since).total_seconds() if since else 0
                if waited >= UNSCHEDULABLE_AFTER_S:
                    return "Unschedulable", (f"pod {_name(pod)} unschedulable for {int(waited // 60)} min: "
                                             f"{c.get('message', '')}").rstrip(": ")
    return None


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
