"""`trainingjob run`: cache then train, in this process or as data-parallel workers."""
from __future__ import annotations

import errno
import math
import os
import sys
import time
from pathlib import Path

from runner.exitcodes import (EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_NOT_RETRYABLE, EXIT_OK,
                              EXIT_STOPPED, StageStopped, sigterm_stops)
from runner.launch.lock import OutputBusy, hold_output_dir, lock_wait_s, takes_lock
from runner.launch.outcomes import lost_peer, newest_checkpoint, out_of_gpu_memory, unwritable, what_is_kept
from runner.spec.localpaths import directory_problems  # validate reports the same
from runner.spec.node import TrainingJob
from runner.spec.plan import cache_fingerprint, job_paths, manifest_path


class HardwareError(Exception):
    """The spec asks for hardware this machine does not have."""


class WorkerFailed(Exception):
    """A launched worker process failed; it has printed its own error."""

    def __init__(self, code: int):
        super().__init__(f"worker exited with {code}")
        self.code = code


def pick_device(accelerator: str) -> str:
    import torch

    if accelerator == "cpu":
        return "cpu"
    if accelerator == "mps":
        if not torch.backends.mps.is_available():
            raise HardwareError("spec.hardware.accelerator is mps but no Apple GPU is available; use accelerator: cpu")
        return "mps"
    if not torch.cuda.is_available():
        raise HardwareError(f"spec.hardware.accelerator is {accelerator} but no GPU is visible to PyTorch "
                            f"(torch {torch.__version__}); use accelerator: cpu for a CPU run")
    return "cuda"


def in_worker() -> bool:
    return "LOCAL_RANK" in os.environ


def write_effective_spec(job: TrainingJob) -> Path:
    """`<output.dir>/trainingjob.effective.yaml`: the spec this run runs, overrides applied and
    every default filled in. Launched workers read it; a single-process run keeps it as a record."""
    from runner.files import atomic_write_bytes

    paths = job_paths(job.spec.to_dict())
    effective, data = paths.effective_spec, job.effective_yaml()
    earlier = effective.read_bytes() if effective.is_file() else data
    if earlier != data:  # an earlier run's: kept for `resume: none`; copied, so no reader finds none
        atomic_write_bytes(paths.earlier_effective_spec, earlier)
    # Atomic: on a shared output volume every node writes it while the others' workers read it.
    atomic_write_bytes(effective, data)
    return effective


def launch_workers(job: TrainingJob, stage: str = "train") -> int:
    """This node's workers for `stage` (one per GPU) through torchrun (runner/launch/torchrun.py).
    They read the effective spec (overrides applied) from the output dir, where it is kept."""
    from runner.launch import torchrun

    spec = job.spec.to_dict()
    output_dir = Path(spec["output"]["dir"])
    effective = write_effective_spec(job)
    # torchrun would default every worker to one thread; share this node's cores instead.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // spec["hardware"]["gpusPerNode"])))
    return torchrun.launch(effective, job_name=job.name, hardware=spec["hardware"], stage=stage,
                           output_dir=output_dir)


def missing_tracker_packages(spec: dict) -> list[str]:
    """An enabled tracker whose package is not installed (the smoke checks this too)."""
    import importlib.util

    if spec["tracking"].get("wandb", {}).get("enabled") and importlib.util.find_spec("wandb") is None:
        return ["spec.tracking.wandb.enabled is true but the wandb package is not installed; "
                "pip install wandb (or disable it)"]
    return []


def tracker_problems(spec: dict) -> list[str]:
    """Trackers that would fail hours in: missing package or missing key, checked up front.
    W&B reads WANDB_API_KEY; a spec naming another variable gets it copied across."""
    wandb = spec["tracking"].get("wandb", {})
    if not wandb.get("enabled"):
        return []
    problems = missing_tracker_packages(spec)
    key_env = wandb["apiKeyEnv"]
    if not os.environ.get(key_env):
        problems.append(f"spec.tracking.wandb.enabled is true but the environment variable {key_env} is empty; "
                        f"export {key_env}=<key> (on Kubernetes: spec.kubernetes.secrets.wandbApiKey)")
    elif key_env != "WANDB_API_KEY":
        os.environ["WANDB_API_KEY"] = os.environ[key_env]
    return problems


def refusals(spec: dict, job: str, stage: str) -> list[str]:
    """What refuses the run cheaply, checked before anything is written into the output folder
    (the lock, the effective spec, the history, the report), so a refused run leaves a finished
    run's record as it was: the hardware, the trackers' keys, the local datasets' folders, the
    checkpoint a resume would take. A worker's launcher has checked the rest already."""
    from runner.data.preflight import folder_problems
    from runner.train.loop import resume_precheck

    try:
        pick_device(spec["hardware"]["accelerator"])
    except HardwareError as e:
        return [str(e)]
    problems = tracker_problems(spec) if stage != "cache" else []
    if in_worker():
        return problems
    if stage in ("cache", "all"):
        problems += folder_problems(spec)
    if stage in ("train", "all") and (why := resume_precheck(spec, job, job_paths(spec).checkpoints)):
        problems.append(why)
    return problems


def run_job(job: TrainingJob, stage: str = "all") -> int:
    # SIGTERM ends the run with its message and exit 143 wherever it falls, also between the
    # stages; the train loop installs its own handler (checkpoint, then stop) while it runs.
    with sigterm_stops():
        return _run_job(job, stage, job.spec.to_dict())


def _run_job(job: TrainingJob, stage: str, spec: dict) -> int:
    import torch

    from runner.data import DatasetError, HubUnavailable
    from runner.launch.torchrun import LaunchError
    from runner.models.pipeline import ModelError
    from runner.train.publish import PublishError, PublishRetryable, hub_token, refuse_offline_push
    from runner.train.loop import ResumeError
    from runner.train.completion import finished_message, finished_step
    from runner.train.data import CacheMismatch, load_manifest
    from runner.train.guard import Diverged

    lock = metrics = None
    running = "cache" if stage == "cache" else "train"  # the stage under way, for the out-of-memory advice
    try:
        if problems := directory_problems(spec, stage):
            print("\n".join(f"error: {p}" for p in problems), file=sys.stderr)
            return EXIT_INVALID
        # A finished job needs no cache, not even one for a spec changed since (completion.py).
        if stage in ("train", "all") and (done := finished_step(spec, job.name)) is not None:
            print(f"[{job.name}] {finished_message(job_paths(spec), done, spec)}", flush=True)
            return EXIT_OK  # writes nothing, so needs no lock
        if stage == "train":  # refused before any report or history is written (--stage all caches first)
            load_manifest(manifest_path(spec), cache_fingerprint(spec))
        if spec["output"]["hub"].get("push"):
            hub_token(spec["output"]["hub"])  # fail before hours of work, not after
            refuse_offline_push()
        if problems := refusals(spec, job.name, stage):
            print("\n".join(f"error: {p}" for p in problems), file=sys.stderr)
            return EXIT_INVALID
        if takes_lock(os.environ, in_worker()):  # one run per output folder (runner/launch/lock.py)
            lock = hold_output_dir(Path(spec["output"]["dir"]), job.name, stage, wait_s=lock_wait_s(os.environ))
        gpus, nodes = spec["hardware"]["gpusPerNode"], spec["hardware"]["nodes"]
        if nodes > 1 and not in_worker() and stage != "cache":
            from runner.launch.torchrun import topology

            topology(spec["hardware"], "train", os.environ)  # a node without its peers' address fails now
        if not in_worker():
            write_effective_spec(job)
        if stage in ("cache", "all"):
            running = "cache"
            if in_worker():
                run_cache_stage(job, shard_of_worker(job))
                return EXIT_OK
            metrics = _metrics(job, is_main=True)  # one registry and endpoint for both stages
            run_cache_stage(job, launch_shards=gpus, metrics=metrics)
        if stage in ("train", "all"):
            running = "train"
            if (gpus > 1 or nodes > 1) and not in_worker():
                if metrics is not None:  # the port is rank 0's now, in its own process
                    metrics.close("completed")
                return launch_workers(job, "train")
            if metrics is None:  # a worker's too: closed below, after its error is printed
                metrics = _metrics(job, is_main=not in_worker() or os.environ.get("RANK", "0") == "0")
            return run_train_stage(job, metrics)
        return EXIT_OK
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM in the cache stage (StageStopped)
        if in_worker():
            raise
        stopped = isinstance(e, StageStopped)
        newest = newest_checkpoint(job_paths(spec).checkpoints) if stage != "cache" else None
        print(f"{'stopped (SIGTERM)' if stopped else 'interrupted'}: "
              f"{what_is_kept(stage, spec['training']['resume'], newest)}", file=sys.stderr)
        return EXIT_STOPPED if stopped else EXIT_INTERRUPTED
    except WorkerFailed as e:
        return e.code
    except OutputBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INVALID
    except (DatasetError, ModelError, CacheMismatch, PublishError, ResumeError, HardwareError, LaunchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INVALID
    except Diverged as e:
        # exit 3: neither torchrun nor the Job runs it again, since the resume would diverge at
        # the same step; every rank holds the same time, so rank 0's endpoint is scraped diverged.
        print(f"error: {e} (exit {EXIT_NOT_RETRYABLE}: not retried)", file=sys.stderr, flush=True)
        if metrics is not None:
            from runner.observe.metrics import hold_seconds

            metrics.train_diverged()
            metrics.hold(hold_seconds(os.environ, spec["metrics"]["port"]))
        return EXIT_NOT_RETRYABLE
    except (PublishRetryable, HubUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INTERNAL
    except torch.cuda.OutOfMemoryError:
        print(f"error: {out_of_gpu_memory(spec, running)} (exit {EXIT_NOT_RETRYABLE}: not retried)", file=sys.stderr)
        return EXIT_NOT_RETRYABLE
    except RuntimeError as e:
        if not in_worker() or not (cause := lost_peer(e)):
            raise
        print(f"error: rank {os.environ.get('RANK', '?')}: lost contact with another worker of this run ({cause}); "
              "that worker's own error above says what went wrong", file=sys.stderr, flush=True)
        return EXIT_INTERNAL
    except OSError as e:
        if e.errno == errno.ENOSPC:
            print(f"error: no space left on device while writing {e.filename or 'a file'}; free space or move "
                  "spec.cacheDir / spec.output.dir to a larger volume, then rerun: finished entries are kept",
                  file=sys.stderr)
            return EXIT_INTERNAL
        if why := unwritable(e, spec):
            print(f"error: {why}", file=sys.stderr)
            return EXIT_INVALID
        raise
    finally:
        if metrics is not None:
            metrics.close()
        if lock is not None:
            lock.release()


def _metrics(job: TrainingJob, is_main: bool, shard=None):
    """The main process serves /metrics, keeps the history and rewrites report.html (after each
    validation and when the stage ends); the others only count. Cache workers hand their
    counts to the launching process through files (runner/observe/cacheprogress.py)."""
    from runner.observe.metrics import Metrics
    from runner.observe.report import Reporter
    from runner.launch.torchrun import node_rank

    paths = job_paths(job.spec.to_dict())
    # One folder per node: a pod's endpoint counts its own workers, and removes only their files.
    shards = paths.cache_dir / ".progress" / job.name / f"node-{node_rank(os.environ)}"
    if not is_main:
        worker = shard is not None and not shard.is_whole
        return Metrics(job.name, cache_shard_file=shards / f"rank-{shard.index}.json" if worker else None)
    # This spec's own cache manifest: a report never shows another job's cache from the shared dir.
    reporter = Reporter(job.name, job.document.to_dict(), paths.output_dir, manifest_path(job.spec.to_dict()))
    metrics = Metrics(job.name, job.spec.metrics.port, run_log=reporter.history, on_validation=reporter.write,
                      on_close=reporter.write, cache_shard_dir=shards)
    if metrics.not_served:
        print(f"warning: {metrics.not_served}", file=sys.stderr, flush=True)
    return metrics


def shard_of_worker(job: TrainingJob):
    """The cache shard of a launched worker: one per process of the whole (multi-node) job."""
    from runner.launch.torchrun import cache_shard
    from runner.cache.stage import Shard

    return Shard(*cache_shard(os.environ, job.spec.hardware.nodes))


def run_cache_stage(job: TrainingJob, shard=None, launch_shards: int = 1, metrics=None):
    """Run the cache stage in this process, or (launch_shards > 1) plan it here, once, so dataset
    errors show before any worker starts and image digests are remembered for them, let one
    worker per GPU encode a shard each, then re-check broken images and write the manifests.
    With several nodes (the pods of an Indexed cache Job) each node encodes its own shards, and
    the node that finishes last makes the final pass (runner/launch/nodes.py). `metrics`: the
    process's, which goes on serving after the stage (else one of the stage's own)."""
    from runner.launch.context import make_context
    from runner.launch.nodes import node_shards_done
    from runner.launch.torchrun import cache_shard, node_rank
    from runner.cache.datasets import plan_datasets
    from runner.cache.stage import Shard, run_cache

    shard = shard or Shard()
    own = metrics is None
    if own:
        metrics = _metrics(job, shard.is_whole, shard)  # the launching process serves /metrics, not its workers
    ended = "failed"
    try:
        metrics.set_stage("cache")
        device = pick_device(job.spec.hardware.accelerator)
        if device == "cuda" and not shard.is_whole:
            import torch

            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
            # streams, events, pinned buffers and the decode loader's pin-memory thread follow the
            # current device: left at cuda:0, worker 1 would put them beside worker 0's work
            torch.cuda.set_device(device)
        ctx = make_context(job, device, rank=shard.index, world_size=shard.count, metrics=metrics)
        t0 = time.time()
        ctx.log(f"cache stage: {job.source}" + ("" if shard.is_whole else f" ({shard.count} shards)"))
        plans = None
        nodes = job.spec.hardware.nodes
        if launch_shards > 1:
            plans = plan_datasets(ctx)
            code = launch_workers(job, "cache")
            if code != EXIT_OK:
                raise WorkerFailed(code)
        elif nodes > 1 and shard.is_whole:  # one pod of an Indexed cache Job, one process: its shard
            run_cache(ctx, Shard(*cache_shard(os.environ, nodes)))
        if nodes > 1 and shard.is_whole and not node_shards_done(ctx.paths.cache_dir, job.name, nodes):
            print(f"[{job.name}] cache: node {node_rank(os.environ)}'s shards are done; the last node to "
                  "finish writes the manifest", flush=True)
            ended = "completed"
            return None
        report = run_cache(ctx, shard, plans)  # SIGTERM: run_job's sigterm_stops (torchrun passes it on to workers)
        metrics.cache_report(report)
        ctx.log(f"cache stage done in {time.time() - t0:.1f}s")
        ended = "completed"
        return report
    except KeyboardInterrupt as e:
        ended = "terminated" if isinstance(e, StageStopped) else "interrupted"
        raise
    finally:
        (metrics.close if own else metrics.end_stage)(ended)


def run_train_stage(job: TrainingJob, metrics=None) -> int:
    """`metrics`: the process's, which goes on serving after the stage (else one of its own)."""
    from runner.launch.context import make_context
    from runner.train.loop import run_train
    from runner.train.completion import record_finished

    own = metrics is None
    if own:
        metrics = _metrics(job, os.environ.get("RANK", "0") == "0")
    ended = "failed"
    try:
        metrics.set_stage("train")
        ctx = make_context(job, pick_device(job.spec.hardware.accelerator), metrics=metrics)
        t0 = time.time()
        result = run_train(ctx)
        if result.interrupted:
            ended = "stopped"
            return EXIT_STOPPED
        if ctx.is_main and job.spec.output.hub.push and result.model_dir:
            from runner.train.publish import push_to_hub
            from runner.train.validation import latest_images

            with metrics.phase("push"):
                url = push_to_hub(result.model_dir, job.document.to_dict(), latest_images(ctx.paths.validation))
            ctx.log(f"pushed to the Hub: {url}")
        if ctx.is_main:
            # last: a rerun now has nothing to do
            record_finished(ctx.paths, result.final_step, job.name, cache_fingerprint(ctx.spec_dict))
        loss = f", final loss {result.last_loss:.4f}" if math.isfinite(result.last_loss) else ""
        ctx.log(f"done in {time.time() - t0:.1f}s: {result.final_step} steps{loss}")
        ctx.log(f"  model:       {result.model_dir}")
        ctx.log(f"  checkpoint:  {result.checkpoint}")
        if result.validation_dir:
            ctx.log(f"  validation:  {result.validation_dir}")
        if job.spec.tracking.tensorboard:
            ctx.log(f"  tensorboard: {ctx.paths.logs}")
        ended = "completed"
        return EXIT_OK
    except KeyboardInterrupt:
        ended = "interrupted"
        raise
    finally:
        (metrics.close if own else metrics.end_stage)(ended)
