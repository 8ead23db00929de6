"""Train stage: full fine-tune of a family's transformer (PixArt Sigma first) from the cache.

The loop is the marked block in `run_train()`; everything else is a component set up before it.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from runner.launch.context import RunContext
from runner.spec.plan import cache_fingerprint, step_plan
from runner.train import checkpoint as ckpt
from runner.train import distributed
from runner.train.checkpoint import TrainerState
from runner.train.data import TrainingData, load_manifest, source_changes, training_data
from runner.train.guard import Guard, Stop


class ResumeError(Exception):
    """An explicitly named checkpoint that cannot be used."""


LOG_EVERY = 10  # steps between two logged losses (each costs a reduce over ranks and a host sync)


def is_logged_step(step: int, total_steps: int, stopping: bool) -> bool:
    """Whether the loss of optimizer step `step` is reduced over ranks, logged and shown (pure):
    every LOG_EVERY steps, the first and the last, and the step a stop ends on. Without that
    last one, a run stopped at step 13 ended on a progress line that read "13/20" beside step
    10's loss. `stopping` comes from Guard.stop_after, the same on every rank, so every rank
    takes part in the reduce."""
    return step % LOG_EVERY == 0 or step in (1, total_steps) or stopping


@dataclass
class TrainResult:
    final_step: int
    last_loss: float
    checkpoint: Path | None
    model_dir: Path | None
    validation_dir: Path | None
    interrupted: bool = False


def make_accelerator(ctx: RunContext):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    spec = ctx.spec_dict
    trackers = []
    if spec["tracking"]["tensorboard"]:
        trackers.append("tensorboard")
    if spec["tracking"]["wandb"].get("enabled"):
        trackers.append("wandb")
    return Accelerator(
        mixed_precision=spec["training"]["mixedPrecision"],
        cpu=spec["hardware"]["accelerator"] == "cpu",
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(ctx.paths.output_dir), logging_dir=str(ctx.paths.logs)),
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[distributed.ddp_handler(spec["training"])],  # spec.training.ddp, used with several processes
    )


def latent_source(data: TrainingData, family, model_dir: Path, device: torch.device, vae_dtype: str):
    """Cached latents straight to the device, or (vaeCacheDisable) VAE-encoded per batch."""
    if not data.on_the_fly:
        return None, lambda batch: batch["latent"].to(device, non_blocking=True).float()
    vae = family.load_vae(model_dir, vae_dtype, device)
    return vae, lambda batch: family.encode_images(vae, batch["pixels"]).to(device).float()


def text_embeds(batch, device: torch.device) -> torch.Tensor:
    """The batch's caption embeddings in float32, as the latents: the cache keeps them in the
    text encoder's dtype (bfloat16 by default), which a float32 run without autocast cannot
    multiply with its weights; where autocast is on, it narrows them again."""
    return batch["embeds"].to(device, non_blocking=True).float()


def apply_speed_options(family, transformer, spec: dict[str, Any], device: torch.device, log) -> None:
    """spec.model.attention, spec.model.feedForward, spec.training.residualStream,
    spec.training.fp8 and spec.training.compile, in that order (kernels, block forwards and FP8
    modules must be in place before the blocks are compiled, and before the optimizer takes the
    parameters)."""
    from runner.train.precision import apply_fp8

    training = spec["training"]
    used, why = family.set_attention(transformer, spec["model"].get("attention", "auto"), device)
    if device.type == "cuda" or spec["model"].get("attention") == "fa4":
        log(f"attention kernels: {used}" + (f" ({why})" if why else ""))
    choice = spec["model"].get("feedForward", "auto")
    if training.get("fp8") and choice == "auto":  # FP8 takes the feed-forward's Linears (validate refuses `fused`)
        used, why = "diffusers", "training.fp8 converts its Linears"
    else:
        used, why = family.set_feed_forward(transformer, choice, device)
    if device.type == "cuda" or choice == "fused":
        log(f"feed-forward: {used}" + (f" ({why})" if why else ""))
    if training["mixedPrecision"] == "fp16" and device.type == "cpu":
        log("mixedPrecision fp16: no effect on the CPU, which has no fp16 autocast (accelerate trains in float32 "
            "there); bf16 is the CPU's mixed precision")
    if training["mixedPrecision"] == "bf16" and training["residualStream"] == "bfloat16":
        blocks = family.bf16_residual(transformer)
        if device.type == "cuda":
            log(f"bf16 residual stream in {blocks} transformer blocks")
    if training.get("fp8"):
        log(f"fp8 linears: {apply_fp8(transformer, device, 'on')}")
    if training["compile"] and device.type == "cuda":  # elsewhere ignored, as the schema says
        dynamic = training.get("compileDynamic", True)
        log(f"compiling {family.compile(transformer, dynamic)} transformer blocks (first bucket static, "
            + ("later buckets share one dynamic graph)" if dynamic else "one graph per bucket)"))


def start_over(ctx: RunContext, accelerator) -> None:
    """`resume: none`: the main process moves the earlier run aside (runner/train/restart.py),
    the others wait for it. Collective."""
    from runner.train.restart import set_aside_earlier_run

    if accelerator.is_main_process:
        set_aside_earlier_run(ctx.paths, ctx.log)
    accelerator.wait_for_everyone()


def set_aside_abandoned(ctx: RunContext, accelerator, start_step: int) -> None:
    """What earlier runs did after `start_step` (a run stopped before its next checkpoint, or
    one past the checkpoint resumed) belongs to weights this run replaces: the main process
    moves it aside (runner/train/restart.py), the others wait. Collective."""
    from runner.train.restart import set_aside_abandoned_steps

    if accelerator.is_main_process:
        set_aside_abandoned_steps(ctx.paths, start_step, ctx.log)
    accelerator.wait_for_everyone()


def resume_state(ctx: RunContext, accelerator, optimizer, lr_scheduler,
                 total_steps: int) -> tuple[TrainerState, Path | None]:
    """The state to start from, and the checkpoint it was loaded from (None: from the base model).
    The spec's optimizer settings (learning rate, betas, weight decay) apply over the checkpoint's."""
    from runner.train.optim import keep_spec_settings, settings_of

    mode = ctx.spec.training.resume
    fresh = TrainerState(spec_hash=ctx.job.hash, job=ctx.job.name)
    if mode == "none":
        start_over(ctx, accelerator)
        return fresh, None
    if mode == "auto":
        path = ckpt.latest_complete(ctx.paths.checkpoints, ctx.log)
        if path is None:
            return fresh, None
    else:
        path = Path(mode)
        problem = ckpt.usable(path) if path.is_dir() else "no such folder"
        if problem:
            raise ResumeError(f"spec.training.resume: cannot resume from {path}: {problem}")
    state = ckpt.read_state(path)
    if problem := resume_problem(state, path, ctx.job.name, total_steps, auto=mode == "auto"):
        raise ResumeError(problem)
    built = settings_of(optimizer)
    try:
        accelerator.load_state(str(path))
        changed = keep_spec_settings(optimizer, lr_scheduler, built)
    except (KeyError, ValueError, RuntimeError) as e:  # torch's words for "these tensors do not fit"
        raise ResumeError(f"cannot resume from {path}: its saved state does not fit the model or optimizer of this "
                          f"spec ({type(e).__name__}: {str(e)[:200]}). Changing spec.training.optimizer or the model "
                          "needs a fresh start: set spec.training.resume: none, or use a new spec.output.dir") from e
    ctx.log(f"resuming from step {state.step} ({path})")
    for field, old, new in changed:
        ctx.log(f"resume: spec.training.{field} is {new} now ({old} in the checkpoint); the spec's value applies")
    if state.spec_hash != ctx.job.hash:
        changes = ckpt.spec_changes(path, ctx.spec_dict)
        ctx.log("note: the spec changed since that checkpoint was written" + (f" ({', '.join(changes)})" if changes else "")
                + "; continuing with the current spec")
    state.spec_hash, state.job = ctx.job.hash, ctx.job.name
    return state, path


def resume_problem(state: TrainerState, path: Path, job: str, total_steps: float, auto: bool) -> str | None:
    """Why the checkpoint at `path` must not be resumed by this run (pure), or None:
    - under `resume: auto`, one written by another job (two specs sharing an output folder, e.g.
      both without spec.output.dir): its run and this one would mix in one model, report and log;
    - one past the steps this run plans: it would train nothing and export that longer model."""
    if auto and state.job and state.job != job:
        return (f"spec.output.dir: {path.parent.parent} holds the checkpoints of job {state.job!r}, not {job!r} "
                f"({path}); give this job its own spec.output.dir, or set spec.training.resume: none to move "
                "that run aside and start over")
    if state.step > total_steps:
        return (f"spec.training.maxSteps: this run plans {total_steps} step(s), but the checkpoint it would resume "
                f"({path}) is at step {state.step}, so it would train nothing and export that longer model. Set "
                f"maxSteps (or epochs) to {state.step} or more to keep it; resume from an earlier checkpoint "
                f"(spec.training.resume: {path.parent}/step-N); or start over with spec.training.resume: none "
                "(the earlier run is moved aside)")
    return None


def resume_precheck(spec: dict[str, Any], job: str, checkpoints: Path) -> str | None:
    """Why the checkpoint this run would resume is refused, read from its small files before
    `run` writes anything or loads a model (resume_state verifies and loads it later): under
    `resume: auto`, another job's; one written with another spec.training.optimizer, whose
    saved state cannot go on in this one. A checkpoint too torn to read is left to resume_state,
    which skips (auto) or refuses (a path) it."""
    mode = spec["training"]["resume"]
    if mode == "none":
        return None
    found = ckpt.list_checkpoints(checkpoints) if mode == "auto" else [(0, Path(mode))]
    if not found:
        return None
    path = found[-1][1]
    try:
        state = ckpt.read_state(path)
        before = json.loads((path / ckpt.SPEC_FILE).read_text())["training"]["optimizer"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if problem := resume_problem(state, path, job, total_steps=math.inf, auto=mode == "auto"):
        return problem
    now = spec["training"]["optimizer"]
    if before != now:
        return (f"spec.training.optimizer: this run uses {now}, but the checkpoint it would resume ({path}) was "
                f"written by {before}, whose saved state cannot go on in {now}. Set optimizer: {before} again, or "
                "start over with spec.training.resume: none (the earlier run is moved aside), or use a new "
                "spec.output.dir")
    return None


def run_train(ctx: RunContext) -> TrainResult:
    # Before any collective: a rank stopped early must still take part in the agreement.
    with Stop() as stop:
        return _train(ctx, stop)


def _train(ctx: RunContext, stop: Stop) -> TrainResult:
    from accelerate.utils import set_seed

    from runner.observe.progress import Progress
    from runner.train.optim import make_lr_scheduler, make_optimizer
    from runner.train.validation import Validator

    spec = ctx.spec_dict
    training = spec["training"]
    family = ctx.family
    accelerator = make_accelerator(ctx)
    ctx.rank, ctx.world_size = accelerator.process_index, accelerator.num_processes
    device = accelerator.device
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    fingerprint = cache_fingerprint(spec)
    manifest = load_manifest(ctx.paths.manifest(fingerprint), fingerprint)
    ctx.metrics.cache_report(manifest["report"])  # the cache this run reads: complete
    model_dir = Path(manifest["model_dir"])
    set_seed(training["seed"] + ctx.rank)

    data = training_data(spec, manifest, rank=ctx.rank, world_size=ctx.world_size, pin_memory=device.type == "cuda")
    strategies = {ds["name"]: ds["captionStrategy"] for ds in spec["datasets"]}
    if ctx.is_main and (changed := source_changes(data.datasets, strategies)):
        ctx.log(f"warning: {len(changed)} image(s) or caption(s) changed since the cache stage ({', '.join(changed[:3])}"
                f"{', ...' if len(changed) > 3 else ''}); training uses them as cached, and images added since are "
                "not trained on. Run the cache stage again (--stage cache or all) to train on the folder as it is")
    plan = step_plan(spec, data.batches_per_epoch)
    transformer = family.load_transformer(model_dir, bit_fit=spec["model"]["bitFit"],
                                          gradient_checkpointing=training["gradientCheckpointing"])
    apply_speed_options(family, transformer, spec, device, ctx.log)  # attention kernels, fp8, compile
    objective = family.objective(model_dir, transformer)
    optimizer = make_optimizer(training, transformer.parameters(), device)
    lr_scheduler = make_lr_scheduler(training, optimizer, plan.total_steps)
    transformer, optimizer, lr_scheduler = accelerator.prepare(transformer, optimizer, lr_scheduler)
    if wrapper := distributed.summary(transformer):
        ctx.log(wrapper)
    vae, to_latents = latent_source(data, family, model_dir, device, spec["model"]["vaeDtype"])
    state, last_ckpt = resume_state(ctx, accelerator, optimizer, lr_scheduler, plan.total_steps)
    set_aside_abandoned(ctx, accelerator, state.step)  # before this run writes a step of its own
    validator = Validator(spec, manifest, family, ctx.paths.validation, device, torch.float32, vae=vae)
    if accelerator.is_main_process:
        # purge_step: TensorBoard drops the events earlier runs wrote at steps this run logs again
        # (those after the step it starts at, set aside above), instead of overlaying two timelines.
        accelerator.init_trackers(ctx.job.name, config=_flat(spec),
                                  init_kwargs={"tensorboard": {"purge_step": state.step + 1}})
    steps = (f"{plan.total_steps} step{'s' * (plan.total_steps != 1)}" if not state.step else
             f"steps {state.step + 1}-{plan.total_steps} of {plan.total_steps}" if state.step < plan.total_steps else
             f"no more steps ({plan.total_steps} are done)")
    ctx.log(f"training {sum(p.numel() for p in transformer.parameters() if p.requires_grad) / 1e6:.2f}M parameters "
            f"for {steps} ({plan.steps_per_epoch} per epoch) on {ctx.world_size} x {device.type}")
    ctx.metrics.train_started(plan.total_steps, state.step, device)

    guard = Guard(training, ctx.world_size, device)
    global_batch = training["batchSize"] * ctx.world_size
    accum = training["gradientAccumulationSteps"]
    params = [p for p in transformer.parameters() if p.requires_grad]
    batches = data.stream(state.epoch, state.batch_in_epoch)
    # every_s=0: one plain log line per logged step (is_logged_step), not throttled like the cache bars.
    bar = Progress(plan.total_steps, "train", "step", enabled=accelerator.is_main_process, every_s=0,
                   initial=state.step)
    last_loss, logged_step, tick = math.nan, state.step, time.time()
    paused = 0.0  # seconds spent checkpointing/validating since the last log: not training throughput
    grad_norm = None  # computed only when clipping (maxGradNorm > 0)

    def checkpoint() -> Path:
        guard.check_weights(params, state.step)  # never write weights that would poison a resume
        started = time.time()
        with ctx.metrics.phase("checkpoint"):  # may take longer than the stall alert's 10 minutes
            path = ckpt.save(accelerator, ctx.paths.checkpoints, state, training["checkpointsTotalLimit"], spec)
        ctx.metrics.checkpoint_saved(state.step, time.time() - started)
        return path

    # ---- the loop ----
    stopping = False
    while state.step < plan.total_steps and not stopping:
        t_step = time.time()
        loss_sum = torch.zeros((), device=device)
        for micro in range(accum):
            state.epoch, state.batch_in_epoch, batch = next(batches)
            sync = contextlib.nullcontext() if micro == accum - 1 else accelerator.no_sync(transformer)
            with sync, accelerator.autocast():
                loss = objective(transformer, to_latents(batch), text_embeds(batch, device), batch["mask"].to(device))
                accelerator.backward(loss / accum)
            loss_sum += loss.detach() / accum
        if training["maxGradNorm"] > 0:
            grad_norm = accelerator.clip_grad_norm_(params, training["maxGradNorm"])
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.samples_seen += global_batch * accum
        stopping = guard.stop_after(state.step, loss_sum, stop.requested)  # the same answer on every rank
        ctx.metrics.step_done(state.step, state.epoch, time.time() - t_step, samples=global_batch * accum)
        if is_logged_step(state.step, plan.total_steps, stopping):
            last_loss = accelerator.reduce(loss_sum, reduction="mean").item()
            rate = global_batch * accum * (state.step - logged_step) / max(time.time() - tick - paused, 1e-9)
            accelerator.log({"train/loss": last_loss, "train/lr": lr_scheduler.get_last_lr()[0],
                             "train/samples_per_second": rate}, step=state.step)
            bar.update(state.step - logged_step, loss=last_loss, samples_s=rate)
            ctx.metrics.train_progress(state.step, plan.total_steps, last_loss, rate,
                                       lr=lr_scheduler.get_last_lr()[0], grad_norm=grad_norm)
            tick, paused, logged_step = time.time(), 0.0, state.step
        t_side = time.time()
        if state.step % training["checkpointEvery"] == 0 or stopping:
            last_ckpt = checkpoint()
        if validator.enabled and not stopping and state.step % spec["validation"]["every"] == 0 \
                and state.step < plan.total_steps:
            _validate(accelerator, validator, transformer, state.step, ctx.metrics)
        paused += time.time() - t_side
    # ---- end of loop ----
    bar.update(state.step - logged_step)
    bar.close()

    if device.type == "cuda":
        ctx.log(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    if stopping:
        why = stop.signal_name or "a stop on another rank"
        ctx.log(f"{why}: checkpointed at step {state.step}; rerun to resume")
        accelerator.end_training()
        return TrainResult(state.step, last_loss, last_ckpt, None, None, interrupted=True)
    if last_ckpt is None or last_ckpt.name != f"step-{state.step}":
        last_ckpt = checkpoint()
    if validator.enabled:
        _validate(accelerator, validator, transformer, state.step, ctx.metrics)
    model_out = None
    if accelerator.is_main_process:
        with ctx.metrics.phase("export"):
            # The spec that produced it goes inside: later runs replace trainingjob.effective.yaml
            # (and .earlier.yaml) as they start, whether or not they finish. Without the pods'
            # options: the export may go to the Hub.
            model_out = family.export(model_dir, accelerator.unwrap_model(transformer), ctx.paths.model,
                                      files={ctx.paths.exported_spec.name: ctx.job.effective_yaml(exported=True)})
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(state.step, last_loss, last_ckpt, model_out, ctx.paths.validation if validator.enabled else None)


def _validate(accelerator, validator, transformer, step: int, observer) -> None:
    """Collective: the main process renders (and logs CLIP scores), the others wait."""
    if accelerator.is_main_process:
        t0 = time.time()
        with observer.phase("validation"):
            metrics = validator.run(accelerator.unwrap_model(transformer), step)
        if metrics:
            accelerator.log(metrics, step=step)
        observer.validation_done(step, time.time() - t0, metrics)
    accelerator.wait_for_everyone()


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        elif v is not None:
            out[key] = str(v)
    return out
