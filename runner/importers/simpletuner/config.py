"""SimpleTuner's config.json onto a TrainingJob.

Each option is one of: a plain field (options.DIRECT), an option with its own rule (a
function in HANDLERS, below), an option read once the others are known (the tracker names),
a per-dataset default (options.DATASET_DEFAULTS, applied by backends.py), or one with no
equivalent, listed by name.
"""
from __future__ import annotations

from typing import Any, Callable

from runner.importers.simpletuner.options import (ALIASES, DATASET_DEFAULTS, DIRECT, OPTIMIZERS, PIXART_FAMILY, Bad,
                                                  Conversion, default, normalize_key, read, to_bool, to_int, to_str,
                                                  unmapped, unset)
from runner.spec import redact
from runner.spec.names import slug

DEFAULT_NAME = "pixart-sigma-finetune"
# Read after the loop: what they mean depends on other options (report_to).
READ_AFTER = ("tracker_project_name", "tracker_run_name")

Handler = Callable[[str, Any, str, Conversion], None]  # (option, value, "label: option", out)


def _direct(name: str, value: Any, where: str, out: Conversion) -> None:
    path, convert = DIRECT[name]
    if not unset(value):  # unset is SimpleTuner's way of leaving an option at its default
        out.set(path, convert(value))


def _steps(name: str, value: Any, where: str, out: Conversion) -> None:
    if not unset(value) and to_int(value) != 0:  # 0 means "unset" in SimpleTuner
        out.set("spec.training.maxSteps" if name == "max_train_steps" else "spec.training.epochs", to_int(value))


def _model_family(name: str, value: Any, where: str, out: Conversion) -> None:
    if not unset(value) and to_str(value).lower() != PIXART_FAMILY:
        out.problems.append(f"{where}: {redact.show(name, value)} is not supported; TrainingJob "
                            f"trains model_family {PIXART_FAMILY} only")


def _pixart_flag(name: str, value: Any, where: str, out: Conversion) -> None:
    """The old config.env flag for the same thing as model_family."""
    if not to_bool(value):
        out.problems.append(f"{where}: false; TrainingJob trains PixArt Sigma only")


def _model_type(name: str, value: Any, where: str, out: Conversion) -> None:
    if to_str(value).lower() != "full":
        out.problems.append(f"{where}: {redact.show(name, value)} is not supported; TrainingJob does full "
                            "fine-tunes only (model_type full, optionally use_bitfit)")


def _optimizer(name: str, value: Any, where: str, out: Conversion) -> None:
    word = to_str(value).lower()
    if word not in OPTIMIZERS:
        out.unmapped.append(f"{where} = {redact.show(name, value)} (supported: adamw, adamw_bf16, adafactor, "
                            f"sgd; the default {default('spec.training.optimizer')} is used)")
        return
    out.set("spec.training.optimizer", OPTIMIZERS[word])
    if word != OPTIMIZERS[word]:
        out.notes.append(f"{where}: {word} became {OPTIMIZERS[word]}")


def _resume(name: str, value: Any, where: str, out: Conversion) -> None:
    word = "none" if unset(value) else to_str(value)
    out.set("spec.training.resume", "auto" if word.lower() == "latest" else word)


def _validation_prompt(name: str, value: Any, where: str, out: Conversion) -> None:
    if not unset(value):
        out.set("spec.validation.prompts", [to_str(value)])


def _validation_resolution(name: str, value: Any, where: str, out: Conversion) -> None:
    """SimpleTuner also accepts `1024` for a square; ours are always WIDTHxHEIGHT."""
    items = [item.strip() for item in to_str(value).split(",") if item.strip()]
    out.set("spec.validation.resolutions", ",".join(f"{i}x{i}" if i.isdigit() else i for i in items))


def _report_to(name: str, value: Any, where: str, out: Conversion) -> None:
    # "none" (SimpleTuner's way to turn every tracker off) reads as unset here.
    trackers = set() if unset(value) else {t.strip().lower() for t in to_str(value).split(",")}
    known = {"tensorboard", "wandb", "none", "all", ""}
    out.set("spec.tracking.tensorboard", bool(trackers & {"tensorboard", "all"}))
    if trackers & {"wandb", "all"}:
        out.set("spec.tracking.wandb.enabled", True)
    for other in sorted(trackers - known):
        out.unmapped.append(f"{where} includes {redact.show(name, other)} (only tensorboard and wandb are supported)")


def _vae_cache(name: str, value: Any, where: str, out: Conversion) -> None:
    if to_bool(value):
        out.set("spec.vaeCacheDisable", True)


def _backend_file(name: str, value: Any, where: str, out: Conversion) -> None:
    out.notes.append(f"{where}: {redact.show(name, value)} ignored; the dataloader file given on the command "
                     "line was converted instead")


HANDLERS: dict[str, Handler] = {
    "max_train_steps": _steps, "num_train_epochs": _steps, "model_family": _model_family, "pixart_sigma": _pixart_flag,
    "model_type": _model_type, "optimizer": _optimizer, "resume_from_checkpoint": _resume,
    "validation_prompt": _validation_prompt, "validation_resolution": _validation_resolution, "report_to": _report_to,
    "vae_cache_ondemand": _vae_cache, "vae_cache_disable": _vae_cache, "data_backend_config": _backend_file,
    **{name: _direct for name in DIRECT},
}


def convert_config(config: dict[str, Any], label: str, out: Conversion) -> dict[str, Any]:
    """Map config.json onto `out`; return the dataset defaults it carries."""
    options: dict[str, Any] = {}
    for key, value in config.items():
        name = ALIASES.get(normalize_key(key), normalize_key(key))
        if name in options:
            out.notes.append(f"{label}: {key} repeats option {name}; the later value "
                             f"{redact.show(name, value)} is used")
        options[name] = value
    if unset(options.get("model_family")) and "pixart_sigma" not in options:
        # SimpleTuner has no default family; guessing one would convert e.g. a Flux config.
        out.problems.append(f"{label}: model_family is not set; add \"model_family\": \"{PIXART_FAMILY}\" "
                            "if this is a PixArt Sigma config (TrainingJob trains PixArt Sigma only)")

    defaults = {k: options.pop(k) for k in DATASET_DEFAULTS if k in options}
    for name, value in options.items():
        if name in READ_AFTER:
            continue
        where = f"{label}: {name}"
        try:
            if name in HANDLERS:
                HANDLERS[name](name, value, where, out)
            else:
                out.unmapped.append(unmapped(where, name))
        except Bad as e:
            out.problems.append(f"{label}: {e.about(name)}")
    _trackers(options, label, out)
    if "model_type" not in options:
        out.notes.append(f"{label}: model_type not set (SimpleTuner's default is lora); converted as a "
                         "full fine-tune")
    _steps_default(out)
    _hub(out)
    return defaults


def _trackers(options: dict[str, Any], label: str, out: Conversion) -> None:
    """The W&B project (once report_to has said whether W&B is on) and metadata.name."""
    wandb_project = None
    if "tracker_project_name" in options:
        try:
            wandb_project = read(options, "tracker_project_name", to_str)
        except Bad as e:
            out.problems.append(f"{label}: {e.about()}")
    if out.get("spec.tracking.wandb.enabled"):
        out.set("spec.tracking.wandb.project", wandb_project or "simpletuner")
        if not wandb_project:
            out.notes.append(f"{label}: tracker_project_name not set; W&B project 'simpletuner' used")
    elif wandb_project is not None:
        out.unmapped.append(f"{label}: tracker_project_name (W&B is not enabled in report_to)")
    run_name = options.get("tracker_run_name")
    if not unset(run_name) and redact.is_hidden("tracker_run_name", run_name):
        out.set("metadata.name", DEFAULT_NAME)
        out.notes.append(f"{label}: tracker_run_name {redact.HIDDEN} was not used as metadata.name, since it looks "
                         f"like a credential; metadata.name {DEFAULT_NAME!r}")
        return
    out.set("metadata.name", DEFAULT_NAME if unset(run_name) else slug(run_name, DEFAULT_NAME))
    if not unset(run_name) and out.get("metadata.name") != str(run_name):
        out.notes.append(f"{label}: tracker_run_name {redact.show('tracker_run_name', run_name)} became metadata.name "
                         f"{out.get('metadata.name')!r} (a DNS label)")


def _steps_default(out: Conversion) -> None:
    if out.get("spec.training.maxSteps") is None and out.get("spec.training.epochs") is None:
        out.set("spec.training.epochs", 1)
        out.notes.append("neither max_train_steps nor num_train_epochs is set; epochs 1 (SimpleTuner's default)")


def _hub(out: Conversion) -> None:
    repo = out.get("spec.output.hub.repoId")
    if repo is None and out.get("spec.output.hub.push"):
        out.set("spec.output.hub.push", False)
        out.notes.append("push_to_hub is true but hub_model_id is not set; push disabled. Set "
                         "spec.output.hub.repoId (OWNER/NAME) and spec.output.hub.push to publish")
        return
    if repo is not None and redact.is_hidden("hub_model_id", repo):
        del out.document["spec"]["output"]["hub"]["repoId"]
        out.set("spec.output.hub.push", False)
        out.notes.append(f"hub_model_id {redact.HIDDEN} was not converted, since it looks like a credential; "
                         "push disabled. Set spec.output.hub.repoId (OWNER/NAME) and spec.output.hub.push to publish")
        return
    if repo is not None and "/" not in repo:
        # The Hub puts an owner-less id under the token's user; a spec has to say which one.
        del out.document["spec"]["output"]["hub"]["repoId"]
        pushing = bool(out.get("spec.output.hub.push"))
        if pushing:
            out.set("spec.output.hub.push", False)
        out.notes.append(f"hub_model_id {redact.show('hub_model_id', repo)} has no owner; "
                         f"{'push disabled' if pushing else 'not converted'}. "
                         f"Set spec.output.hub.repoId to OWNER/{repo} (and spec.output.hub.push: true) to publish")
