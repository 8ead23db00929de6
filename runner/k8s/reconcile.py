"""The operator's state machine as one pure function:

    reconcile(trainingjob, observed children, now) -> (children to create, patches, status, events)

Level-triggered: the outcome depends only on the TrainingJob and what exists now, so an
operator restarted at any moment recomputes the same answer, creates only what is missing
(deterministic names) and converges. The thin layer in operator.py applies the outcome.

    new -> Caching -> (cache Job failed) Failed
                   -> (cache Job complete) Training -> Succeeded | Failed
    any running state <-> Suspended (spec.suspend); Pending while no pod of the stage runs yet.

Suspending a Job that Kueue manages goes through its Workload (spec.active), never the Job's
own spec.suspend: see _suspend_patches.

A started job runs one spec: the one its ConfigMap (what the pods read) got when the job started.
Every child is built from that snapshot, so a later edit never half-applies; only spec.suspend
still acts, and any other edit is reported once (SpecChangeIgnored). The CRD refuses such edits
too (CEL, runner/k8s/crd.py); this holds where CEL is off. Validation gates starting only: an
invalid edit of a started job is reported, not turned into Failed.

A finished job stays finished: its Jobs are never recreated, even when someone deletes them
(rerunning means deleting the TrainingJob and applying it again). The exception is InvalidSpec
(a job that never started): fixing the spec starts the job.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import yaml

from runner.k8s import build, checks
from runner.k8s import status as st
from runner.k8s.build import KUEUE_PREFIX, Options, Owner
from runner.spec import schema as schema_mod

TERMINAL = ("Succeeded", "Failed")
STATE_REASONS = {"Pending": "PodsPending", "Caching": "CacheRunning", "Training": "Training",
                 "Succeeded": "Succeeded", "Suspended": "Suspended"}
# Kueue admits the batch/v1 Jobs that carry its queue label (build.py passes the TrainingJob's on).
KUEUE_QUEUE_LABEL = KUEUE_PREFIX + "queue-name"
# Set on a Workload whose spec.active the operator turned false for spec.suspend. Only such a one
# is reactivated on resume: Kueue deactivates Workloads itself too (past its requeue limit), and
# so may an administrator, and those stay as they are.
SUSPENDED_ANNOTATION = f"{schema_mod.api_group()}/suspended"


@dataclass(frozen=True)
class Observed:
    """What exists now: children by role (config, monitor, cache, service, train), the pods of
    each stage's Job, the progress read from the trainer (None when not read), and the Kueue
    Workload of each Kueue-managed Job, by the Job's role (absent until Kueue made one)."""

    children: dict[str, dict] = field(default_factory=dict)
    pods: dict[str, list[dict]] = field(default_factory=dict)
    progress: dict[str, Any] | None = None
    foreign: tuple[str, ...] = ()  # "Kind/name" labelled as this job's children but not controlled by it
    workloads: dict[str, dict] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class Outcome:
    create: list[dict] = field(default_factory=list)                # in apply order
    patch: list[tuple[str, dict]] = field(default_factory=list)     # (role, merge patch of its Job)
    workload_patch: list[tuple[str, dict]] = field(default_factory=list)  # (role, merge patch of its Job's Workload)
    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)


def kueue_managed(obj: dict | None) -> bool:
    """Whether Kueue admits this Job (or the Jobs of this TrainingJob): its queue label."""
    return KUEUE_QUEUE_LABEL in ((obj or {}).get("metadata") or {}).get("labels", {})


def role_of(obj: dict) -> str:
    kind = obj["kind"]
    if kind == "Job":
        return obj["metadata"]["labels"]["app.kubernetes.io/component"]
    return {"ConfigMap": "config", "PodMonitor": "monitor", "Service": "service"}[kind]


def spec_document(tj: dict) -> dict:
    """The TrainingJob as the validator reads it: the server's bookkeeping in metadata dropped."""
    meta = tj.get("metadata", {})
    return {"apiVersion": tj.get("apiVersion"), "kind": tj.get("kind"), "spec": tj.get("spec"),
            "metadata": {k: meta[k] for k in ("name", "namespace", "labels") if k in meta}}


def validated(tj: dict) -> tuple[dict, list[str]]:
    """(defaulted document, problems): the project's own validator, then what Kubernetes needs."""
    from runner.spec.validate import validate_document

    doc, problems, _ = validate_document(spec_document(tj), source=f"trainingjob/{tj['metadata']['name']}")
    if not problems:
        problems = checks.kubernetes_problems(doc)
    return doc, problems


def started_document(tj: dict, children: dict[str, dict]) -> dict | None:
    """The document a started job runs: the spec its ConfigMap keeps for the operator, defaults
    and all (paths placed on the volumes; build.pod_document is idempotent, so building from it
    builds the same children), and the TrainingJob's current labels (Kueue's). A ConfigMap an
    older operator made holds only the pods' spec, which leaves defaults to the trainer
    (runner/k8s/specfile.py): this version's are filled in. None before the ConfigMap exists."""
    data = (children.get("config") or {}).get("data") or {}
    text = data.get(build.STARTED_SPEC_FILE) or data.get(build.SPEC_FILE)
    try:
        doc = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("spec"), dict):
        return None  # someone emptied the ConfigMap: the current spec is all there is
    meta = {**(doc.get("metadata") or {}), "name": tj["metadata"]["name"]}
    if tj["metadata"].get("labels"):
        meta["labels"] = tj["metadata"]["labels"]
    return schema_mod.apply_defaults({**doc, "metadata": meta})


def reconcile(tj: dict, observed: Observed, now: datetime, opts: Options = Options()) -> Outcome:
    meta, old = tj["metadata"], dict(tj.get("status") or {})
    if meta.get("deletionTimestamp"):
        return Outcome(status=old)  # the garbage collector deletes the children (ownerReferences)
    generation = meta.get("generation")
    children = observed.children
    doc = started_document(tj, children)
    out = Outcome(events=_ignored_edit(tj, doc, old, generation) if doc else [])
    if old.get("state") in TERMINAL and _failed_reason(old) != "InvalidSpec":  # InvalidSpec: not run yet
        return Outcome(status={**old, "observedGeneration": generation}, events=out.events)
    if doc is None:  # not started: the spec must be valid to start
        doc, problems = validated(tj)
        if problems:
            return _invalid(old, problems, now, generation)

    suspend = bool((tj.get("spec") or {}).get("suspend"))  # the one field a started job still takes
    cache_phase, train_phase = st.job_phase(children.get("cache")), st.job_phase(children.get("train"))
    stage = "train" if cache_phase == "complete" or train_phase != "absent" else "cache"
    if not (cache_phase == "failed" or train_phase in ("complete", "failed")):
        wanted = build.build_children(doc, opts, Owner(meta["name"], meta["uid"]), stages=(stage,), suspend=suspend)
        out.create = [obj for obj in wanted if role_of(obj) not in children]
        if suspend and kueue_managed(doc):
            # Kueue admits (unsuspends) a new queued Job, suspended or not: it is made on resume.
            out.create = [obj for obj in out.create if obj["kind"] != "Job"]
        taken = [o for o in out.create if f"{o['kind']}/{o['metadata']['name']}" in observed.foreign]
        out.create = [o for o in out.create if o not in taken]
        out.events += [Event("Warning", "ErrResourceExists",
                             f"{o['kind']} {o['metadata']['name']} exists and is not controlled by this TrainingJob "
                             "(applied from `trainingjob render`?); delete it and the operator creates its own")
                       for o in taken]
        out.events += [Event("Normal", "Created", f"Created {o['kind']} {o['metadata']['name']}")
                       for o in out.create if o["kind"] == "Job"]
        if any(o["kind"] == "Job" and role_of(o) == "cache" for o in out.create):  # once, as the pods start
            out.events += [Event("Warning", reason, st.clip(w)) for reason, w in checks.warning_events(doc)]
        out.patch, out.workload_patch = _suspend_patches(children, observed.workloads, suspend)
        for role, patch in out.patch:  # the status describes the Jobs as they are about to be
            children = {**children, role: {**children[role], "spec": {**children[role]["spec"], **patch["spec"]}}}
        cache_phase, train_phase = st.job_phase(children.get("cache")), st.job_phase(children.get("train"))
        observed = replace(observed, children=children)
    phase = train_phase if stage == "train" else cache_phase
    if phase == "absent":  # created just now
        phase = "suspended" if suspend else "pending"
    out.status = _status(old, doc, observed, stage, phase, suspend, now, generation)
    out.events += _transition_events(old, out.status)
    return out


def _suspend_patches(children: dict[str, dict], workloads: dict[str, dict],
                     suspend: bool) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
    """(Job patches, Workload patches) that suspend the unfinished Jobs, or resume them.

    A Job Kueue manages is suspended the way Kueue documents, by deactivating its Workload
    (spec.active: false); Kueue then evicts it and suspends the Job itself. Suspending the Job
    directly starts a fight: Kueue unsuspends any suspended Job whose Workload is still admitted,
    and the next sync would suspend it again, its pods created and SIGTERMed in a loop. On resume
    only a Workload the operator deactivated (SUSPENDED_ANNOTATION) is reactivated, and admitting
    (unsuspending) the Job stays Kueue's call. Before Kueue has made the Workload (a queued Job's
    first moments, or a queue label without Kueue) the Job itself is suspended: no Workload, no
    admission to undo it."""
    jobs, workload_patches = [], []
    for role in ("cache", "train"):
        job = children.get(role)
        if job is None or st.job_phase(job) in ("complete", "failed"):
            continue
        queued = kueue_managed(job)
        workload = workloads.get(role) if queued else None
        if workload is not None:
            active = (workload.get("spec") or {}).get("active") is not False  # defaults to true
            ours = SUSPENDED_ANNOTATION in ((workload.get("metadata") or {}).get("annotations") or {})
            if suspend and active:
                workload_patches.append((role, {"metadata": {"annotations": {SUSPENDED_ANNOTATION: "true"}},
                                                "spec": {"active": False}}))
            elif not suspend and ours:
                workload_patches.append((role, {"metadata": {"annotations": {SUSPENDED_ANNOTATION: None}},
                                                "spec": {"active": True}}))
            continue
        current = bool(job.get("spec", {}).get("suspend"))
        if current != suspend and (suspend or not queued):
            jobs.append((role, {"spec": {"suspend": suspend}}))
    return jobs, workload_patches


def _failed_reason(old: dict) -> str | None:
    c = next((c for c in old.get("conditions", []) if c.get("type") == "Failed"), None)
    return c.get("reason") if c and c.get("status") == "True" else None


def _ignored_edit(tj: dict, started: dict, old: dict, generation: int | None) -> list[Event]:
    """A Warning, once per generation, when an edit of a started job changed more than suspend."""
    if old.get("observedGeneration") == generation:
        return []
    current, problems = validated(tj)
    try:
        current_spec = build.pod_document(current)["spec"]
    except (KeyError, TypeError, AttributeError):  # too broken to place on the volumes
        current_spec = current.get("spec") or {}
    spec = started["spec"]
    changed = [f"spec.{k}" for k in sorted(set(spec) | set(current_spec))
               if k != "suspend" and spec.get(k) != current_spec.get(k)]
    if not changed:
        return []
    invalid = f" (the edited spec is not valid either: {'; '.join(problems)})" if problems else ""
    config = build.names(tj["metadata"]["name"])["config"]
    return [Event("Warning", "SpecChangeIgnored", st.clip(
        f"{', '.join(changed)} changed after the job started and {'is' if len(changed) == 1 else 'are'} not "
        f"applied: the Jobs keep the spec they started with (ConfigMap {config}); delete and re-create the "
        f"TrainingJob to run a changed spec; spec.suspend still applies{invalid}"))]


def _failure(job: dict, pods: list[dict], stage: str, spec: dict) -> tuple[str, str]:
    fatal = st.fatal_pod(st.failed_pods(pods), build.FAIL_JOB_EXIT_CODES)
    reason = "OOMKilled" if fatal and st.is_oom_killed(fatal) else \
        ("CacheFailed" if stage == "cache" else "TrainingFailed")
    message = f"{stage} Job {job['metadata']['name']} failed ({st.job_failure(job)})"
    if fatal:
        message += "; last: " + st.failed_pod_message(fatal, stage)
    if reason == "OOMKilled":
        message += ("; raise spec.kubernetes.resources.limits.memory or lower the batch size; /dev/shm "
                    f"(spec.kubernetes.shmSize, {build.shm_size(spec)} here) is memory and counts toward that "
                    "limit too")
    return reason, message


def _status(old: dict, doc: dict, observed: Observed, stage: str, phase: str, suspend: bool, now: datetime,
            generation: int | None) -> dict[str, Any]:
    children, pods = observed.children, observed.pods.get(stage, [])
    job = children.get(stage)
    stuck = st.stuck_pod(pods, now) if phase in ("pending", "running") else None
    failure = _failure(job, pods, stage, doc["spec"]) if phase == "failed" and job else None
    # Suspended while spec.suspend is false only by the queue: a Kueue-managed Job whose spec says
    # suspended (not yet admitted, or evicted). A Job the operator just resumed may still carry the
    # Suspended condition for a moment; it is starting, not held by any queue.
    queue_held = not suspend and phase == "suspended" and kueue_managed(job)
    if failure:
        state = "Failed"
    elif phase == "complete":
        state = "Succeeded"
    elif suspend or queue_held:
        state = "Suspended"
    elif phase == "running":
        state = "Caching" if stage == "cache" else "Training"
    else:
        state = "Pending"
    conds = old.get("conditions", [])

    def cond(type_, value, reason, message=""):
        return st.condition(conds, type_, value, reason, message, now, generation)

    cached = stage == "train"  # the train stage starts only on a completed cache Job
    running_reason, running_msg = stuck if stuck else (STATE_REASONS.get(state, failure[0] if failure else state), "")
    if state in ("Caching", "Training") and not stuck:
        running_msg = f"{stage} Job {job['metadata']['name']} is running" if job else ""
    if state == "Suspended":
        running_reason = "QueueSuspended" if queue_held else "Suspended"
        running_msg = _suspended_message(stage, job, observed.workloads.get(stage), queue_held)
    if cached:
        cached_condition = cond("Cached", True, "CacheComplete", "the cache Job completed")
    elif failure:
        cached_condition = cond("Cached", False, failure[0], failure[1])
    else:
        cached_condition = cond("Cached", False, running_reason, running_msg)
    all_pods = [p for stage_pods in observed.pods.values() for p in stage_pods]
    status: dict[str, Any] = {
        "state": state,
        "stage": stage,
        "observedGeneration": generation,
        "restarts": max(sum((c.get("status", {}).get("failed") or 0) for r, c in children.items()
                            if r in ("cache", "train")), len(st.failed_pods(all_pods))),
        "specHash": old.get("specHash") or _spec_hash(doc),
        "startTime": old.get("startTime") or st.timestamp(now),
        "conditions": [
            cached_condition,
            cond("Running", state in ("Caching", "Training") and not stuck, running_reason, running_msg),
            cond("Complete", state == "Succeeded", "TrainingComplete" if state == "Succeeded" else state,
                 f"train Job {job['metadata']['name']} completed" if state == "Succeeded" else ""),
            cond("Failed", state == "Failed", failure[0] if failure else state, failure[1] if failure else ""),
            cond("Suspended", state == "Suspended", running_reason if state == "Suspended" else state,
                 running_msg if state == "Suspended" else ""),
        ],
    }
    progress = observed.progress if stage == "train" and observed.progress else old.get("progress")
    if progress:
        status["progress"] = progress
    if state in TERMINAL:
        status["completionTime"] = old.get("completionTime") or st.timestamp(now)
    return status


def _suspended_message(stage: str, job: dict | None, workload: dict | None, queue_held: bool) -> str:
    name = f"Workload {workload['metadata']['name']}" if workload else "its Workload"
    inactive = workload is not None and (workload.get("spec") or {}).get("active") is False
    if not queue_held:
        if kueue_managed(job) and workload:
            return f"spec.suspend is true: {name} is deactivated, and Kueue stops and holds the {stage} Job"
        return "spec.suspend is true"
    if inactive and SUSPENDED_ANNOTATION not in (workload["metadata"].get("annotations") or {}):
        return (f"the Jobs are suspended by their queue (Kueue): it deactivated {name} of the {stage} Job "
                f"(`kubectl describe workload {workload['metadata']['name']}` says why); "
                f"set its spec.active to true to queue it again")
    return f"the Jobs are suspended by their queue (Kueue): {name} of the {stage} Job waits for admission"


def _spec_hash(doc: dict) -> str:
    """Of the spec as the ConfigMap holds it (the same for a fresh document and its snapshot)."""
    import hashlib
    import json

    spec = build.pod_document(doc)["spec"]
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _invalid(old: dict, problems: list[str], now: datetime, generation: int | None) -> Outcome:
    conds = old.get("conditions", [])
    message = "; ".join(problems)
    status = {**{k: v for k, v in old.items() if k not in ("conditions",)},
              "state": "Failed", "observedGeneration": generation,
              "completionTime": old.get("completionTime") or st.timestamp(now),
              "conditions": [st.condition(conds, t, t == "Failed", "InvalidSpec",
                                          message if t == "Failed" else "", now, generation)
                             for t in st.CONDITION_TYPES]}
    known = _failed_reason(old) == "InvalidSpec" and old.get("observedGeneration") == generation
    return Outcome(status=status, events=[] if known else [Event("Warning", "InvalidSpec", st.clip(message))])


def _transition_events(old: dict, new: dict) -> list[Event]:
    events = []
    running = next(c for c in new["conditions"] if c["type"] == "Running")
    before = next((c for c in old.get("conditions", []) if c.get("type") == "Running"), {})
    if old.get("state") != new["state"]:
        failed = next(c for c in new["conditions"] if c["type"] == "Failed")
        if new["state"] == "Failed":
            events.append(Event("Warning", failed["reason"], failed["message"]))
        elif old.get("state") == "Suspended":
            events.append(Event("Normal", "Resumed", f"now {new['state']}"))
        else:
            events.append(Event("Normal", new["state"], running["message"] or f"stage {new['stage']}"))
    if running["reason"] in st.STUCK_REASONS and before.get("reason") != running["reason"]:
        events.append(Event("Warning", running["reason"], running["message"]))
    if new["restarts"] > (old.get("restarts") or 0) and new["state"] != "Failed":  # the failure says it
        events.append(Event("Warning", "PodRestarted", f"{new['restarts']} pod(s) failed and were replaced by "
                                                       "their Job; training resumes from the last checkpoint"))
    return events
