"""Paths of a spec that `run` refuses at once when they are wrong on this machine: a folder the
run writes to that a file is in the way of, a checkpoint folder to resume from that is not
there, a local model folder that is missing or holds no diffusers pipeline.

`run` refuses them (runner/launch/run.py before any work, runner/models/pipeline.py when the
model is resolved) and `validate` reports them (runner/spec/problems.py), from these same
functions. `validate` leaves out a path that is not here but lies under the mountPath of a
volume in spec.kubernetes.volumes: it exists only inside the pod.

Standard library only: `validate` imports this.
"""
from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any

from runner.files import not_a_directory, not_writable
from runner.spec.names import LOCAL_PATH_PREFIXES
from runner.spec.semantics import written_dirs

RESUME_KEYWORDS = ("auto", "none")  # spec.training.resume values that are not paths


def mount_paths(volumes: dict[str, Any]) -> list[tuple[str, str]]:
    """(volume name, normalized mount path) of each volume of spec.kubernetes.volumes, as the
    pods mount them (runner/k8s/build.py)."""
    return [(name, posixpath.normpath(claim.get("mountPath", f"/{name}"))) for name, claim in volumes.items()]


def on_pod_volume(spec: dict[str, Any], path: str | Path, names: tuple[str, ...] | None = None) -> bool:
    """`path` is absolute and lies under the mountPath of a volume in spec.kubernetes.volumes
    (only those in `names` when given), so it names a place inside the pod."""
    path = Path(path)
    if not path.is_absolute():
        return False
    volumes = (spec.get("kubernetes") or {}).get("volumes") or {}
    return any(path.is_relative_to(mount) for name, mount in mount_paths(volumes) if names is None or name in names)


def resume_problem(resume: Any) -> str | None:
    """Why spec.training.resume cannot be resumed from: a path that is not a folder; None for
    a checkpoint folder and for the keywords auto and none."""
    if not isinstance(resume, str) or resume in RESUME_KEYWORDS or Path(resume).is_dir():
        return None
    what = "a file" if Path(resume).exists() else "not there"
    return (f"spec.training.resume: {resume} is {what}; give a checkpoint folder (e.g. "
            "<output.dir>/checkpoints/step-N), or auto (the newest one) or none")


def pretrained_problem(ref: Any) -> str | None:
    """Why spec.model.pretrained, read as a local folder, cannot be loaded: a folder without
    model_index.json, or a path (starting with `.`, `/` or `~`) that does not exist. None for a
    diffusers pipeline folder and for what is not a path here: a Hub repo id (owner/name) or a
    `builtin:` name. runner/models/pipeline.resolve_model_dir refuses the same."""
    if not isinstance(ref, str) or not ref:
        return None
    local = Path(ref).expanduser()
    if local.is_dir():
        if (local / "model_index.json").is_file():
            return None
        return (f"spec.model.pretrained: {local} is a folder but holds no model_index.json; "
                "point it at a diffusers pipeline folder")
    if not ref.startswith(LOCAL_PATH_PREFIXES):
        return None  # a Hub repo id or a builtin
    where = "" if local.is_absolute() else f" (relative paths resolve from the working directory, {os.getcwd()})"
    return (f"spec.model.pretrained: local folder {ref} does not exist{where}; point it at a diffusers pipeline "
            "folder, or give a Hub repo id (owner/name)")


def directory_problems(spec: dict[str, Any], stage: str = "all") -> list[str]:
    """Folders the run writes to that cannot be folders (a file is in the way), and a checkpoint
    folder to resume from that is not there: what `run` refuses before any work."""
    return [problem for _, _, problem in _directory_findings(spec, stage)]


def _directory_findings(spec: dict[str, Any], stage: str) -> list[tuple[str, Any, str]]:
    """(field path, path, problem) of directory_problems."""
    found = []
    for where, value in written_dirs(spec):
        if why := not_a_directory(value):
            found.append((where, value, f"{where}: {why}; point it at a directory (it is created when missing)"))
        elif why := not_writable(value):
            found.append((where, value, f"{where}: {why}; point it at a folder this run may write to"))
    resume = spec["training"]["resume"]
    if stage != "cache" and (problem := resume_problem(resume)):
        found.append(("spec.training.resume", resume, problem))
    return found


def local_path_problems(spec: dict[str, Any]) -> list[str]:
    """What `run` would refuse at once about the paths of a defaulted spec on this machine
    (directory_problems and pretrained_problem), leaving out a path that is not here but lies on
    a volume of spec.kubernetes.volumes (it exists only in the pod)."""
    found = _directory_findings(spec, "all")
    ref = (spec.get("model") or {}).get("pretrained")
    if problem := pretrained_problem(ref):
        found.append(("spec.model.pretrained", ref, problem))
    return [problem for _, path, problem in found
            if not (on_pod_volume(spec, str(path)) and not Path(path).expanduser().exists())]
