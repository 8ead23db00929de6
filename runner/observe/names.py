"""Every series the runner exports, named in one place. Standard library only (no torch, no
prometheus_client), so the operator, the dashboard and alert tests and the README check can
import it.

Conventions (https://prometheus.io/docs/practices/naming/): one prefix, base units (seconds,
bytes), `_total` only on counters. Labels are `trainingjob` (the TrainingJob's metadata.name)
plus `kind` (text|latent) on the cache series and `rank` on GPU memory: small fixed sets, never
an image or a caption. None of them is a label Prometheus attaches to a target (`job`,
`instance`, and with Kubernetes service discovery usually `namespace`, `pod`), so no scrape
config needs honor_labels. The namespace is not ours to export: pods get no POD_NAMESPACE, and
Prometheus's own target label (`namespace` from a PodMonitor or the usual kubernetes-pods
relabeling) already tells two TrainingJobs of one name apart.

Several GPUs: one endpoint per job in the train stage, served by rank 0; in the cache stage one
per node, served by the process that launched that node's workers and counting their shards
(sum over pods for the whole cache). Its loss is the mean over ranks and its samples/s counts the global batch; GPU memory
is rank 0's, the rank that also renders validation images and so peaks highest.
"""
from __future__ import annotations

from dataclasses import dataclass

PREFIX = "trainingjob_"
JOB_LABEL = "trainingjob"


@dataclass(frozen=True)
class Series:
    name: str  # the sample name as scraped (counters end in _total; histograms add _bucket/_sum/_count)
    type: str  # gauge | counter | histogram
    help: str
    labels: tuple[str, ...] = ()  # besides JOB_LABEL
    buckets: tuple[float, ...] = ()


STAGE = "trainingjob_stage"
PHASE = "trainingjob_phase"
LAST_PROGRESS = "trainingjob_last_progress_timestamp_seconds"
CACHE_ITEMS = "trainingjob_cache_items"
CACHE_ITEMS_DONE = "trainingjob_cache_items_done"
CACHE_ITEMS_ENCODED = "trainingjob_cache_items_encoded_total"
CACHE_WRITTEN_BYTES = "trainingjob_cache_written_bytes_total"
CACHE_ENCODE_RATE = "trainingjob_cache_encode_items_per_second"
TRAIN_STEPS = "trainingjob_train_steps_total"
TRAIN_STEP = "trainingjob_train_step"
TRAIN_PLANNED_STEPS = "trainingjob_train_planned_steps"
TRAIN_EPOCH = "trainingjob_train_epoch"
TRAIN_LOSS = "trainingjob_train_loss"
TRAIN_LEARNING_RATE = "trainingjob_train_learning_rate"
TRAIN_GRAD_NORM = "trainingjob_train_grad_norm"
TRAIN_SAMPLES_PER_SECOND = "trainingjob_train_samples_per_second"
TRAIN_SAMPLES = "trainingjob_train_samples_total"
TRAIN_DIVERGED = "trainingjob_train_diverged"
TRAIN_STEP_DURATION = "trainingjob_train_step_duration_seconds"
TRAIN_ETA = "trainingjob_train_eta_seconds"
GPU_MEMORY_ALLOCATED = "trainingjob_gpu_memory_allocated_bytes"
GPU_MEMORY_PEAK = "trainingjob_gpu_memory_peak_bytes"
CHECKPOINT_DURATION = "trainingjob_checkpoint_duration_seconds"
VALIDATION_DURATION = "trainingjob_validation_duration_seconds"
VALIDATION_CLIP_SCORE = "trainingjob_validation_clip_score"

# What a process is doing. `running`: encoding entries or taking optimizer steps, each of which
# moves LAST_PROGRESS. The others are long single pieces of work (a model download, load or
# compile before the first entry or step; a checkpoint, whose buckets below go to 1800 s; a
# validation; the export; the Hub push): LAST_PROGRESS moves as each starts and ends, and the
# stall alert allows them an hour instead of 10 minutes.
PHASES = ("starting", "running", "checkpoint", "validation", "export", "push")

_STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SAVE_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

SERIES: tuple[Series, ...] = (
    Series(STAGE, "gauge", "1 for the stage this process is running, 0 for the other", ("stage",)),
    Series(PHASE, "gauge", "1 for what this process is doing now (starting, running, checkpoint, validation, export, "
                           "push), 0 for the others", ("phase",)),
    Series(LAST_PROGRESS, "gauge", "Unix time of the last cache entry, optimizer step, or start or end of a phase "
                                   "(stall alerts)"),
    Series(CACHE_ITEMS, "gauge", "Cache entries this stage must have, by kind", ("kind",)),
    Series(CACHE_ITEMS_DONE, "gauge", "Cache entries done so far (reused, encoded or found undecodable), by kind",
           ("kind",)),
    Series(CACHE_ITEMS_ENCODED, "counter", "Cache entries encoded by this process and the cache workers it launched, by kind", ("kind",)),
    Series(CACHE_WRITTEN_BYTES, "counter", "Bytes of cache entries written by this process and the cache workers it launched"),
    Series(CACHE_ENCODE_RATE, "gauge", "Entries encoded per second since this kind's encoder started (rate() of "
                                       "trainingjob_cache_items_encoded_total is the same from the counter)", ("kind",)),
    Series(TRAIN_STEPS, "counter", "Optimizer steps done by this process (from 0, also after a resume; the step "
           "number is trainingjob_train_step)"),
    Series(TRAIN_STEP, "gauge", "Optimizer step the run is at (a resumed run starts at its checkpoint's step)"),
    Series(TRAIN_PLANNED_STEPS, "gauge", "Optimizer steps the run will take in all"),
    Series(TRAIN_EPOCH, "gauge", "Epoch of the latest batch (0-based)"),
    Series(TRAIN_LOSS, "gauge", "Training loss at the latest logged step, mean over ranks"),
    Series(TRAIN_LEARNING_RATE, "gauge", "Learning rate at the latest logged step"),
    Series(TRAIN_GRAD_NORM, "gauge", "Gradient norm before clipping at the latest logged step (when maxGradNorm > 0)"),
    Series(TRAIN_SAMPLES_PER_SECOND, "gauge", "Training samples per second over all ranks, excluding checkpoints "
                                              "and validation (rate() of trainingjob_train_samples_total "
                                              "includes them)"),
    Series(TRAIN_SAMPLES, "counter", "Training samples of the optimizer steps done by this process, over all ranks "
                                     "(from 0, also after a resume)"),
    Series(TRAIN_DIVERGED, "gauge", "1 once training stopped because the loss or the weights became NaN or "
                                    "infinite (the process then exits 3), else 0"),
    Series(TRAIN_STEP_DURATION, "histogram", "Wall time of one optimizer step", buckets=_STEP_BUCKETS),
    Series(TRAIN_ETA, "gauge", "Estimated seconds until the last step, from this process's mean time per step "
                               "(checkpoints and validation included)"),
    Series(GPU_MEMORY_ALLOCATED, "gauge", "GPU memory held by tensors (absent on CPU and MPS)", ("rank",)),
    Series(GPU_MEMORY_PEAK, "gauge", "Peak GPU memory held by tensors since the process started (absent on CPU and MPS)",
           ("rank",)),
    Series(CHECKPOINT_DURATION, "histogram", "Time to write one checkpoint; _count is the checkpoints written",
           buckets=_SAVE_BUCKETS),
    Series(VALIDATION_DURATION, "histogram", "Time of one validation run; _count is the validation runs",
           buckets=_SAVE_BUCKETS),
    Series(VALIDATION_CLIP_SCORE, "gauge", "Mean CLIP score of the latest validation images (when evaluation.clipScore)"),
)

BY_NAME = {s.name: s for s in SERIES}

# What the operator shows in `kubectl get` (status.progress field -> sample name on /metrics).
# Each is one sample per job; match on sample names (a parser may report a counter's family
# without its _total).
PROGRESS = {
    "step": TRAIN_STEP,
    "totalSteps": TRAIN_PLANNED_STEPS,
    "loss": TRAIN_LOSS,
    "samplesPerSecond": TRAIN_SAMPLES_PER_SECOND,
    "etaSeconds": TRAIN_ETA,
}
