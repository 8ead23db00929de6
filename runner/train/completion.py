"""Whether a job has already finished, so that a rerun does nothing.

Finished means: the record written after the last thing a run does (export, then Hub push)
names step N, N is the step the current spec plans to end at, and the newest checkpoint a
resume would use is at step N. A spec that plans more (or fewer) steps, a run killed before
its export or push finished, or a damaged final checkpoint: not finished, and the train stage
takes over from the newest usable checkpoint.

The steps are planned over the data the finished run trained on (the cache manifest its record
names), not over a cache the current spec would build: a finished job rerun with a new
resolution or caption setting stays finished, as one rerun over a folder with images added
does, instead of re-caching only to train "no more steps" and re-export the same model under
a spec it never trained with. `resume: none` trains again on the new settings."""
from __future__ import annotations

import json
from typing import Any, Mapping

from runner.files import atomic_write_json
from runner.spec.plan import JobPaths, cache_fingerprint, job_paths, step_plan


def is_finished(recorded_step: int | None, newest_checkpoint: int | None, total_steps: int | None,
                exported: bool) -> bool:
    """Pure: the definition above, on what was read from disk (None: absent or unreadable)."""
    return (exported and recorded_step is not None and total_steps is not None
            and recorded_step == newest_checkpoint == total_steps)


def record_finished(paths: JobPaths, step: int, job: str, cache: str) -> None:
    """Written by the main process as the very last step of a successful train stage; `cache`
    is the fingerprint of the cache it trained on (its manifest: JobPaths.manifest)."""
    atomic_write_json(paths.finished, {"step": step, "checkpoint": f"checkpoints/step-{step}", "model": "model",
                                       "job": job, "cache": cache})


def planned_total_steps(spec: Mapping[str, Any], trained_on: str | None = None) -> int | None:
    """What the current spec trains to over the data of cache `trained_on` (a fingerprint; the
    current spec's own cache when that one is gone or unknown). None: no such cache to count
    batches in, so the job cannot be known to be finished."""
    from runner.train.data import CacheMismatch, load_manifest, training_data

    training = spec["training"]
    if not training.get("epochs"):  # maxSteps alone: the data plays no part
        return training["maxSteps"]
    paths = job_paths(spec)
    world = spec["hardware"]["gpusPerNode"] * spec["hardware"]["nodes"]
    for fingerprint in dict.fromkeys(f for f in (trained_on, cache_fingerprint(spec)) if f):
        try:
            data = training_data(spec, load_manifest(paths.manifest(fingerprint), fingerprint), rank=0, world_size=world)
            return step_plan(spec, data.batches_per_epoch).total_steps
        except (CacheMismatch, ValueError, OSError):  # the stages that follow report these properly
            continue
    return None


def finished_step(spec: Mapping[str, Any], job: str) -> int | None:
    """The step at which job `job` finished under the current spec, or None when there is work left.
    Only `resume: auto` can be finished: `none` asks to start over, a path to resume from it. A
    record of another job (two specs sharing an output folder) is not this job's: the train stage
    then says so."""
    from runner.train.checkpoint import latest_complete

    if spec["training"]["resume"] != "auto":
        return None
    paths = job_paths(spec)
    try:
        record = json.loads(paths.finished.read_text())
        recorded = int(record["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if record.get("job", job) != job:  # records from before the job was kept count as this job's
        return None
    newest = latest_complete(paths.checkpoints, log=lambda _line: None)
    newest_step = int(newest.name.split("-")[1]) if newest is not None else None
    total = planned_total_steps(spec, record.get("cache")) if newest_step == recorded else None
    exported = (paths.model / "model_index.json").is_file()
    return recorded if is_finished(recorded, newest_step, total, exported) else None


def finished_message(paths: JobPaths, step: int, spec: Mapping[str, Any] | None = None) -> str:
    """What a rerun of a finished job says; with `spec`, also the fields it changed since the
    final checkpoint (they did not apply: nothing was trained with them)."""
    from runner.train.checkpoint import spec_changes

    changes = spec_changes(paths.checkpoints / f"step-{step}", dict(spec)) if spec is not None else []
    changed = (f"The spec changed since that run ({', '.join(changes)}); the model was trained without these "
               f"changes. " if changes else "")
    return (f"the job is already complete at step {step} (model: {paths.model}); nothing to do. {changed}"
            f"To train longer, raise spec.training.maxSteps (or epochs) and rerun: it resumes from step {step}. "
            f"To start over, set spec.training.resume: none, or use a new spec.output.dir.")
