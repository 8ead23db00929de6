"""What the stages report while they run: Prometheus series (named in names.py) served on
`spec.metrics.port`, and the run's history (runlog.py) that report.html is drawn from.

One registry per instance, passed in the RunContext; nothing global. Every process gets a
Metrics: one that does not serve (port 0, a rank other than 0, a cache worker) still counts
into its own registry, so no call site asks whether metrics are on. There is no catch-all: a
misspelled call raises AttributeError, and __slots__ refuses a misspelled attribute.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from runner.envvars import HOLD_ENV, in_job_pod
from runner.observe import names as N
from runner.observe.cacheprogress import CacheProgress
from runner.observe.runlog import ENDINGS, RunLog


# After training diverged, a run in a pod keeps serving /metrics this long before it exits, so
# that Prometheus scrapes trainingjob_train_diverged = 1 at least once (TrainingJobDiverged):
# more than one scrape interval of a Prometheus at its default 1m (the PodMonitor's is 15 s).
# Elsewhere a run exits at once. HOLD_ENV (TRAININGJOB_METRICS_HOLD_S) sets it (seconds; 0: exit at once).
POD_HOLD_S = 75


def hold_seconds(env: Mapping[str, str], port: int) -> float:
    """How long a diverged run keeps /metrics up before it exits (pure): nothing is served with
    spec.metrics.port 0; a pod of a TrainingJob (runner.envvars.in_job_pod) holds POD_HOLD_S;
    HOLD_ENV overrides both."""
    if not port:
        return 0.0
    with contextlib.suppress(ValueError):  # not a number: the default (this runs on the way out of a failure)
        return max(0.0, float(env.get(HOLD_ENV, "")))
    return float(POD_HOLD_S) if in_job_pod(env) else 0.0


class Metrics:
    __slots__ = ("job", "rank", "registry", "server", "not_served", "cache", "_series", "_log", "_on_validation",
                 "_on_close", "_stage", "_stage_started", "_train_started", "_start_step", "_planned", "_gpu",
                 "_thread", "_steps", "_phase")

    def __init__(self, job: str, port: int = 0, *, rank: int = 0, run_log: Path | None = None,
                 on_validation: Callable[[], Any] | None = None, on_close: Callable[[], Any] | None = None,
                 cache_shard_file: Path | None = None, cache_shard_dir: Path | None = None):
        """`run_log`: append the history there (the process that writes the report). The
        callbacks refresh the report. `cache_shard_file` (a cache worker) / `cache_shard_dir`
        (the process that launches them): see cacheprogress.py."""
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        # The library's `_created` twin of every counter and histogram doubles the series for no
        # dashboard use (a process-wide switch of the library; idempotent).
        disable_created_metrics()
        self.job, self.rank = job, rank
        self.registry = CollectorRegistry()
        types = {"gauge": Gauge, "counter": Counter, "histogram": Histogram}
        self._series: dict[str, Any] = {}
        self.cache = CacheProgress(job, shard_file=cache_shard_file, shard_dir=cache_shard_dir)
        self.registry.register(self.cache)
        # Collected by CacheProgress at scrape time, with what cache workers share through files.
        collected = {N.CACHE_ITEMS, N.CACHE_ITEMS_DONE, N.CACHE_ITEMS_ENCODED, N.CACHE_WRITTEN_BYTES,
                     N.CACHE_ENCODE_RATE, N.PHASE, N.LAST_PROGRESS}
        for s in N.SERIES:
            if s.name in collected:
                continue
            kwargs = {"buckets": s.buckets} if s.type == "histogram" else {}
            # prometheus_client appends _total to counters itself.
            self._series[s.name] = types[s.type](s.name.removesuffix("_total") if s.type == "counter" else s.name,
                                                 s.help, (N.JOB_LABEL, *s.labels), registry=self.registry, **kwargs)
        self._phase = "starting"
        self._log = RunLog(run_log) if run_log else None
        self._on_validation, self._on_close = on_validation, on_close
        self._stage, self._stage_started = "", 0.0
        self._train_started, self._start_step, self._planned, self._gpu, self._steps = 0.0, 0, 0, None, 0
        self.server, self._thread = None, None
        self.not_served: str | None = None  # why /metrics could not be served, for the log
        if port:
            from runner.observe.serve import serve

            try:
                self.server, self._thread = serve(port, self.registry)  # IPv6 and IPv4
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
                # Two local runs at once, or a Prometheus server on its default 9090: the run
                # goes on without /metrics rather than dying for its monitoring.
                self.not_served = (f"spec.metrics.port {port} is already in use on this machine (another run, or a "
                                   "Prometheus server, listens there), so this run serves no /metrics; set "
                                   "spec.metrics.port to a free port, or to 0 to turn the endpoint off")

    def _get(self, name: str, **labels: str):
        return self._series[name].labels(self.job, *labels.values())

    # ---- both stages ----
    def set_stage(self, stage: str) -> None:
        for s in ("cache", "train"):
            self._get(N.STAGE, stage=s).set(1 if s == stage else 0)
        self._stage, self._stage_started = stage, time.time()
        # Download, load and compile come first: a stage that hangs there counts as stalled too.
        self._progressed("starting")
        self._record("stage_started", stage=stage)

    def _progressed(self, phase: str | None = None) -> None:
        """Something finished (or a phase began or ended) now."""
        if phase is not None:
            if phase not in N.PHASES:
                raise ValueError(f"phase {phase!r} is not one of {N.PHASES}")
            self._phase = phase
        self.cache.touch(self._phase)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """A long single piece of work (a checkpoint, a validation, the export, the Hub push):
        the stall alert gives it an hour. Progress is marked as it starts and as it ends."""
        before = self._phase
        self._progressed(name)
        try:
            yield
        finally:
            self._progressed(before)

    # ---- cache stage (calls from runner/cache/stage.py) ----
    def cache_planned(self, kind: str, total: int, todo: int) -> None:
        """`total` entries this process must have, `todo` of them still to encode."""
        self.cache.planned(kind, total, todo)
        self._progressed("starting" if todo else "running")  # with entries to encode, the encoder loads next

    def cache_done(self, kind: str, n: int) -> None:
        """`n` more entries encoded (or found undecodable)."""
        self.cache.done(kind, n)
        self._progressed("running")

    def entry_written(self, future) -> None:
        """Done-callback of a cache writer's future whose result is the bytes written."""
        if not future.cancelled() and future.exception() is None:
            self.cache.written(int(future.result() or 0))

    def cache_report(self, report: Any) -> None:
        """The finished cache (a CacheReport, or the `report` of the cache manifest, which the
        train stage republishes so a dashboard shows the cache it reads as complete)."""
        r = report if isinstance(report, Mapping) else dataclasses.asdict(report)
        self.cache.summary("text", r["text_total"], r["text_encoded"])
        self.cache.summary("latent", r["latents_total"], r["latents_encoded"])

    # ---- train stage (calls from runner/train/loop.py) ----
    def train_started(self, total_steps: int, start_step: int, device: Any = None) -> None:
        self._get(N.TRAIN_PLANNED_STEPS).set(total_steps)
        self._get(N.TRAIN_DIVERGED).set(0)
        self._series[N.TRAIN_SAMPLES].labels(self.job)  # present (0) from the start, as the step counter
        self._steps = max(self._steps, start_step)  # steps before a resume are not this process's
        self._advance(start_step)
        self._train_started, self._start_step, self._planned = time.time(), start_step, total_steps
        self._gpu = device if getattr(device, "type", None) == "cuda" else None

    def step_done(self, step: int, epoch: int, seconds: float, samples: int = 0) -> None:
        """An optimizer step done; `samples`: what it trained over all ranks (global batch x
        gradient accumulation), for the samples counter that rate() reads."""
        self._advance(step)
        if samples:
            self._series[N.TRAIN_SAMPLES].labels(self.job).inc(samples)
        self._get(N.TRAIN_EPOCH).set(epoch)
        self._series[N.TRAIN_STEP_DURATION].labels(self.job).observe(seconds)
        if step > self._start_step and self._train_started:
            per_step = (time.time() - self._train_started) / (step - self._start_step)
            self._get(N.TRAIN_ETA).set(max(self._planned - step, 0) * per_step)
        self._progressed("running")

    def train_progress(self, step: int, total: int, loss: float, samples_per_second: float, *,
                       lr: float | None = None, grad_norm: float | None = None) -> None:
        """A logged step (the values TensorBoard gets)."""
        self._advance(step)
        self._get(N.TRAIN_PLANNED_STEPS).set(total)
        self._get(N.TRAIN_LOSS).set(loss)
        self._get(N.TRAIN_SAMPLES_PER_SECOND).set(samples_per_second)
        if lr is not None:
            self._get(N.TRAIN_LEARNING_RATE).set(lr)
        if grad_norm is not None:
            self._get(N.TRAIN_GRAD_NORM).set(float(grad_norm))
        if self._gpu is not None:
            import torch

            self._get(N.GPU_MEMORY_ALLOCATED, rank=str(self.rank)).set(torch.cuda.memory_allocated(self._gpu))
            self._get(N.GPU_MEMORY_PEAK, rank=str(self.rank)).set(torch.cuda.max_memory_allocated(self._gpu))
        self._record("train", step=step, loss=loss, lr=lr, samples_per_second=samples_per_second,
                     grad_norm=None if grad_norm is None else float(grad_norm))

    def _advance(self, step: int) -> None:
        """The step gauge is the step number; the counter counts this process's steps, from 0 at
        its start also after a resume, as Prometheus counters must: a counter that came back at
        the checkpoint's step would read as a reset, and increase() would count those steps twice."""
        self._get(N.TRAIN_STEP).set(step)
        counter = self._series[N.TRAIN_STEPS].labels(self.job)  # present from step 0 on
        if step > self._steps:
            counter.inc(step - self._steps)
            self._steps = step

    def train_diverged(self) -> None:
        """Training stopped on a non-finite loss or non-finite weights (runner/train/guard.py).
        The loss gauge keeps the last finite loss logged: the operator copies it into
        status.progress, and JSON has no NaN."""
        self._get(N.TRAIN_DIVERGED).set(1)

    def hold(self, seconds: float) -> None:
        """Go on serving /metrics for `seconds` before the process exits, so that Prometheus
        scrapes what was set last (train_diverged) at least once; a SIGTERM or Ctrl-C ends the
        wait. A process that does not serve waits too: torchrun stops every worker of the group
        as soon as one exits, so the other ranks must not exit before rank 0, which serves."""
        if seconds <= 0:
            return
        if self.server is not None:
            port = self.server.server_address[1]
            print(f"[{self.job}] keeping /metrics on port {port} up for {seconds:g} s, so that Prometheus records "
                  f"{N.TRAIN_DIVERGED} (TRAININGJOB_METRICS_HOLD_S)", file=sys.stderr, flush=True)
        ended: list[int] = []  # SIGTERM ends the wait (whatever handler the failed stage left)
        before = None
        with contextlib.suppress(ValueError):  # not the main thread: nothing to install
            before = signal.signal(signal.SIGTERM, lambda signum, _frame: ended.append(signum))
        try:
            deadline = time.monotonic() + seconds
            with contextlib.suppress(KeyboardInterrupt):
                while not ended and (left := deadline - time.monotonic()) > 0:
                    time.sleep(min(left, 0.2))
        finally:
            if before is not None:
                signal.signal(signal.SIGTERM, before)

    def checkpoint_saved(self, step: int, seconds: float) -> None:
        self._series[N.CHECKPOINT_DURATION].labels(self.job).observe(seconds)
        self._record("checkpoint", step=step, seconds=seconds)

    def validation_done(self, step: int, seconds: float, scores: Mapping[str, float] | None = None) -> None:
        """After the images of `step` are written; refreshes the report."""
        self._series[N.VALIDATION_DURATION].labels(self.job).observe(seconds)
        clip = (scores or {}).get("validation/clip_score")
        if clip is not None:
            self._get(N.VALIDATION_CLIP_SCORE).set(clip)
        self._record("validation", step=step, seconds=seconds, clip_score=clip)
        if self._on_validation:
            self._on_validation()

    # ---- end ----
    def end_stage(self, ended: str = "failed") -> None:
        """The stage set by set_stage is over: the first call records its duration and how it
        `ended` (one of ENDINGS: a stage closed without saying it completed did not), and
        refreshes the report. The endpoint stays up and every counter keeps its count: one
        process serves one registry for all its stages (`run` caches, then trains)."""
        if ended not in ENDINGS:
            raise ValueError(f"ended {ended!r} is not one of {tuple(ENDINGS)}")
        self.cache.close()
        if self._stage:
            self._record("stage_finished", stage=self._stage, seconds=time.time() - self._stage_started, ended=ended)
            self._stage = ""
            if self._on_close:
                self._on_close()

    def close(self, ended: str = "failed") -> None:
        """end_stage, then stop serving (idempotent): when the process is done."""
        self.end_stage(ended)
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def _record(self, event: str, **fields: Any) -> None:
        if self._log is not None:
            self._log.append(event, **fields)
