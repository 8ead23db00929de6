"""What a stopped or failed run tells its user: where its rerun starts, which spec field a
refused write names, and a worker's lost peer told apart from a bug (pure, but for the
checkpoint listing)."""
from __future__ import annotations

import errno
import os
from pathlib import Path


# What a collective raises in a worker whose peer is gone (exited, killed, its node lost): gloo's
# TCP pair errors, NCCL's abort after the peer's exit or a watchdog timeout. The peer's own
# error, printed by its rank, is the one that says what went wrong.
LOST_PEER = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "remote process exited",
             "NCCL communicator was aborted", "Watchdog caught collective operation timeout",
             "ProcessGroupNCCL's watchdog")


def lost_peer(e: BaseException) -> str | None:
    """The phrase of LOST_PEER that a torch.distributed error carries (RuntimeError, of which
    DistBackendError and DistNetworkError are kinds), else None (pure)."""
    if not isinstance(e, RuntimeError):
        return None
    text = str(e)
    return next((f"{type(e).__name__}: {phrase}" for phrase in LOST_PEER if phrase.lower() in text.lower()), None)


def out_of_gpu_memory(spec: dict, stage: str) -> str:
    """What to change after torch.cuda.OutOfMemoryError in `stage` (cache or train), given the
    spec (pure). A rerun of the same spec meets the same batch shapes and runs out again, so
    every fix is a spec field."""
    if stage == "cache":
        model = spec["model"]
        tips = [f"lower spec.model.vaeBatchSize (now {model['vaeBatchSize']})",
                f"lower spec.textEmbeds.writeBatchSize (now {spec['textEmbeds']['writeBatchSize']})"]
        tips += [f"set spec.model.{field}: bfloat16 (now {model[field]})"
                 for field in ("vaeDtype", "textEncoderDtype") if model[field] == "float32"]
        kept = "The cache entries already written are kept; the rerun encodes only the missing ones"
    else:
        training, model = spec["training"], spec["model"]
        tips = [f"lower spec.training.batchSize (now {training['batchSize']}; raise "
                f"spec.training.gradientAccumulationSteps, now {training['gradientAccumulationSteps']}, to keep the "
                "effective batch)"]
        if not training["gradientCheckpointing"]:
            tips.append("set spec.training.gradientCheckpointing: true")
        if training["optimizer"] == "adamw":
            tips.append("set spec.training.optimizer: adafactor (factored optimizer state)")
        if model["feedForward"] == "diffusers":
            tips.append("set spec.model.feedForward: auto on CUDA (fused: the 4x-wide GELU output is never stored)")
        if spec["hardware"]["gpusPerNode"] * spec["hardware"]["nodes"] > 1 and \
                not training["ddp"]["gradientAsBucketView"]:
            tips.append("set spec.training.ddp.gradientAsBucketView: true (one gradient-sized copy less)")
        tips.append("or lower spec.datasets[].resolution or spec.validation.resolutions")
        kept = "Checkpoints already written are kept; after changing the spec, the rerun resumes from the newest"
    return (f"out of GPU memory in the {stage} stage. To fix it: " + "; ".join(tips) + f". {kept}. Rerunning "
            "the same spec would run out of memory at the same point again")


def newest_checkpoint(root: Path) -> str | None:
    """The name of the newest sealed checkpoint (its state file is written last, before the
    rename), without hashing its files: read as the process stops."""
    from runner.train.checkpoint import STATE_FILE, list_checkpoints

    sealed = [path.name for _, path in list_checkpoints(root) if (path / STATE_FILE).is_file()]
    return sealed[-1] if sealed else None


def what_is_kept(stage: str, resume: str, newest: str | None) -> str:
    """What a stopped run leaves and where its rerun starts (pure): the cache entries written
    are always kept; the training starts where spec.training.resume and the checkpoints say."""
    cache = "the cache entries written are kept, so the rerun encodes only the missing ones"
    if stage == "cache":
        return f"{cache}; run the same command again to go on"
    if resume == "none":
        train = "spec.training.resume is none, so the rerun starts training over from step 0"
    elif resume != "auto":
        train = f"the rerun resumes from {resume} (spec.training.resume)"
    elif newest is None:
        train = "no checkpoint yet, so the rerun starts training from step 0"
    else:
        train = f"checkpoint {newest} is kept and the rerun resumes from it"
    return f"{train}; {cache if stage == 'all' else 'run the same command again'}"


def unwritable(e: OSError, spec: dict) -> str | None:
    """A write the file system refused (permissions, a read-only mount, a folder such as /sys
    that takes no files) under a folder the spec names, as bad input naming that field; None
    for any other error. validate and the start of `run` catch most of these (not_writable);
    this is for a folder that changes under a running job."""
    from runner.spec.semantics import written_dirs

    if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or not e.filename:
        return None
    target = Path(os.fsdecode(e.filename)).absolute()
    for where, folder in written_dirs(spec):
        if target.is_relative_to(Path(folder).absolute()):
            return (f"{where}: {e.filename} cannot be written ({e.strerror}); point {where} at a folder this run may "
                    "write to, or make that one writable")
    return None
