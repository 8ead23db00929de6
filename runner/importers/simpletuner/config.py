"""`trainingjob import-simpletuner`: convert a SimpleTuner config.json + multidatabackend.json.

Every SimpleTuner option ends up in exactly one place: mapped onto a TrainingJob field,
consumed (it only selects what this converter already assumes, e.g. `model_family:
pixart_sigma`), or listed as having no equivalent. Nothing is dropped silently. Options without
an equivalent are listed by name only, never with their values: SimpleTuner configs carry S3
keys, Hub tokens and webhook URLs, and any value printed here is shown via runner.spec.redact.

SimpleTuner configs carry values as strings more often than not ("false", "1e-5", "20"),
and SimpleTuner itself once read "False" as true; values are parsed by what the target
field needs, never by Python truthiness.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from runner.spec import redact
from runner.spec import schema as schema_mod
from runner.spec.semantics import MAX_AREA_MEGAPIXELS
from runner.spec.errors import SpecError
from runner.spec.load import job_from_document
from runner.spec.parse import MAX_SPEC_BYTES

PIXART_FAMILY = "pixart_sigma"
# SimpleTuner's pixel_area sizes are pixels of the side of an equivalent square; ours are
# megapixels where 1.0 = 1024x1024.
AREA_SIDE = 1024


class Bad(ValueError):
    """A value that cannot be read as what its TrainingJob field needs. The value is kept apart
    from the reason, so a message can hide it when the option looks secret."""

    def __init__(self, reason: str, value: Any, name: str = ""):
        super().__init__(reason)
        self.reason, self.value, self.name = reason, value, name

    def about(self, name: str = "") -> str:
        """`name: value reason`, the value hidden when it may be a secret."""
        name = name or self.name
        return f"{name}: {redact.show(name, self.value)} {self.reason}"


def read(options: dict[str, Any], name: str, convert: Callable[[Any], Any]) -> Any:
    """`convert(options[name])`, with the option's name on the Bad it may raise."""
    try:
        return convert(options[name])
    except Bad as e:
        raise Bad(e.reason, e.value, name) from None


@dataclass
class Conversion:
    document: dict[str, Any] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)  # options with no equivalent
    notes: list[str] = field(default_factory=list)  # adjustments a reader should know about
    problems: list[str] = field(default_factory=list)  # reasons the conversion cannot proceed

    def set(self, path: str, value: Any) -> None:
        node = self.document
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    def get(self, path: str) -> Any:
        node: Any = self.document
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node


# ----------------------------------------------------------------------------- value parsing

def normalize_key(key: str) -> str:
    """`--train_batch_size`, `train-batch-size` and `TRAIN_BATCH_SIZE` are the same option."""
    return str(key).strip().lstrip("-").replace("-", "_").lower()


def _unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null"))


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("true", "yes", "on", "1", "y", "t"):
            return True
        if word in ("false", "no", "off", "0", "n", "f"):
            return False
    raise Bad("is not a boolean (true/false)", value)


def to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise Bad("is a boolean, not a number", value)
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise Bad("is not a number", value) from None
    if not math.isfinite(number):
        raise Bad("is not a finite number", value)
    return number


def to_int(value: Any) -> int:
    number = to_float(value)
    if number != int(number):
        raise Bad("is not a whole number", value)
    return int(number)


def to_str(value: Any) -> str:
    if isinstance(value, (dict, list)) or _unset(value):
        raise Bad("is not a text value", value)
    return str(value).strip() if not isinstance(value, str) else value


def one_of(mapping: dict[str, str]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        word = to_str(value).strip().lower()
        if word not in mapping:
            raise Bad(f"has no equivalent (supported: {', '.join(sorted(mapping))})", value)
        return mapping[word]
    return convert


def _enum_identity(path: str) -> dict[str, str]:
    return {str(v): str(v) for v in (schema_mod.subschema(path) or {}).get("enum", [])}


def dns_name(text: str, fallback: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", str(text).lower()).strip("-")[:63].strip("-")
    return name or fallback


def dataset_id(text: str, fallback: str) -> str:
    name = re.sub(r"[^a-z0-9_-]+", "-", str(text).lower()).strip("-_")[:63].strip("-_")
    return name or fallback


def _unmapped(where: str, name: str) -> str:
    """An option with no equivalent is named, never shown: the converter cannot know what its
    value holds (SimpleTuner configs carry S3 keys, Hub tokens and webhook URLs)."""
    return where + (" (a credential: pass it through the environment, never a spec)"
                    if redact.looks_secret(name) else "")


def to_path(value: Any) -> str:
    """SimpleTuner expands `{model_family}` in its paths (conversion goes ahead only for
    pixart_sigma, so that is what it stands for); any other placeholder is unknown."""
    text = to_str(value).replace("{model_family}", PIXART_FAMILY)
    left = re.findall(r"\{[A-Za-z_]+\}", text)
    if left:
        raise Bad(f"holds the placeholder {left[0]}, which only {{model_family}} is known to expand to; "
                  "write the path out", value)
    return text


# ----------------------------------------------------------------------------- config.json

# SimpleTuner option -> (TrainingJob field, converter): a plain one-to-one mapping.
DIRECT: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "pretrained_model_name_or_path": ("spec.model.pretrained", to_str),
    "revision": ("spec.model.revision", to_str),
    "use_bitfit": ("spec.model.bitFit", to_bool),
    "tokenizer_max_length": ("spec.model.textEncoderMaxLength", to_int),
    "vae_dtype": ("spec.model.vaeDtype", one_of({"fp32": "float32", "float32": "float32", "bf16": "bfloat16",
                                                  "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16"})),
    "output_dir": ("spec.output.dir", to_path),
    "cache_dir": ("spec.cacheDir", to_path),
    "train_batch_size": ("spec.training.batchSize", to_int),
    "gradient_accumulation_steps": ("spec.training.gradientAccumulationSteps", to_int),
    "learning_rate": ("spec.training.learningRate", to_float),
    "lr_scheduler": ("spec.training.lrScheduler", one_of(_enum_identity("spec.training.lrScheduler"))),
    "lr_warmup_steps": ("spec.training.lrWarmupSteps", to_int),
    "adam_beta1": ("spec.training.adamBeta1", to_float),
    "adam_beta2": ("spec.training.adamBeta2", to_float),
    "adam_epsilon": ("spec.training.adamEpsilon", to_float),
    "adam_weight_decay": ("spec.training.weightDecay", to_float),
    "mixed_precision": ("spec.training.mixedPrecision", one_of(_enum_identity("spec.training.mixedPrecision"))),
    "gradient_checkpointing": ("spec.training.gradientCheckpointing", to_bool),
    "max_grad_norm": ("spec.training.maxGradNorm", to_float),
    "caption_dropout_probability": ("spec.training.captionDropout", to_float),
    "seed": ("spec.training.seed", to_int),
    "checkpoint_step_interval": ("spec.training.checkpointEvery", to_int),
    "checkpoints_total_limit": ("spec.training.checkpointsTotalLimit", to_int),
    "validation_negative_prompt": ("spec.validation.negativePrompt", to_str),
    "validation_guidance": ("spec.validation.guidance", to_float),
    "validation_num_inference_steps": ("spec.validation.inferenceSteps", to_int),
    "validation_step_interval": ("spec.validation.every", to_int),
    "validation_seed": ("spec.validation.seed", to_int),
    "hub_model_id": ("spec.output.hub.repoId", to_str),
    "push_to_hub": ("spec.output.hub.push", to_bool),
}

# Older SimpleTuner names of the same options (still accepted by SimpleTuner).
ALIASES = {"checkpointing_steps": "checkpoint_step_interval", "validation_steps": "validation_step_interval"}

OPTIMIZERS = {"adamw": "adamw", "adamw_bf16": "adamw", "optimi-adamw": "adamw", "adafactor": "adafactor",
              "sgd": "sgd", "optimi-sgd": "sgd"}

# Per-dataset options SimpleTuner also accepts at the top level, as defaults for every dataset.
DATASET_DEFAULTS = ("resolution", "resolution_type", "minimum_image_size", "maximum_image_size",
                    "target_downsample_size", "crop", "crop_aspect", "crop_style", "caption_strategy",
                    "instance_prompt")


def _convert_config(config: dict[str, Any], label: str, out: Conversion) -> dict[str, Any]:
    """Map config.json onto `out`; return the dataset defaults it carries."""
    options: dict[str, Any] = {}
    for key, value in config.items():
        name = ALIASES.get(normalize_key(key), normalize_key(key))
        if name in options:
            out.notes.append(f"{label}: {key} repeats option {name}; the later value "
                             f"{redact.show(name, value)} is used")
        options[name] = value
    if _unset(options.get("model_family")) and "pixart_sigma" not in options:
        # SimpleTuner has no default family; guessing one would convert e.g. a Flux config.
        out.problems.append(f"{label}: model_family is not set; add \"model_family\": \"{PIXART_FAMILY}\" "
                            "if this is a PixArt Sigma config (TrainingJob trains PixArt Sigma only)")

    defaults = {k: options.pop(k) for k in DATASET_DEFAULTS if k in options}
    vae_disable = False
    wandb_project = None
    for name, value in options.items():
        where = f"{label}: {name}"
        try:
            if name in DIRECT:
                path, convert = DIRECT[name]
                if _unset(value):
                    continue  # SimpleTuner's way of leaving an option at its default
                out.set(path, convert(value))
            elif name in ("max_train_steps", "num_train_epochs"):
                if not _unset(value) and to_int(value) != 0:  # 0 means "unset" in SimpleTuner
                    out.set("spec.training.maxSteps" if name == "max_train_steps" else "spec.training.epochs",
                            to_int(value))
            elif name == "model_family":
                if not _unset(value) and to_str(value).lower() != PIXART_FAMILY:
                    out.problems.append(f"{where}: {redact.show(name, value)} is not supported; TrainingJob "
                                        f"trains model_family {PIXART_FAMILY} only")
            elif name == "pixart_sigma":  # the old config.env flag for the same thing
                if not to_bool(value):
                    out.problems.append(f"{where}: false; TrainingJob trains PixArt Sigma only")
            elif name == "model_type":
                if to_str(value).lower() != "full":
                    out.problems.append(f"{where}: {redact.show(name, value)} is not supported; TrainingJob does full "
                                        "fine-tunes only (model_type full, optionally use_bitfit)")
            elif name == "optimizer":
                word = to_str(value).lower()
                if word in OPTIMIZERS:
                    out.set("spec.training.optimizer", OPTIMIZERS[word])
                    if word != OPTIMIZERS[word]:
                        out.notes.append(f"{where}: {word} became {OPTIMIZERS[word]}")
                else:
                    out.unmapped.append(f"{where} = {redact.show(name, value)} (supported: adamw, adamw_bf16, adafactor, "
                                        f"sgd; the default {_default('spec.training.optimizer')} is used)")
            elif name == "resume_from_checkpoint":
                word = "none" if _unset(value) else to_str(value)
                out.set("spec.training.resume", "auto" if word.lower() == "latest" else word)
            elif name == "validation_prompt":
                if not _unset(value):
                    out.set("spec.validation.prompts", [to_str(value)])
            elif name == "validation_resolution":
                out.set("spec.validation.resolutions", _resolutions(value))
            elif name == "report_to":
                # "none" (SimpleTuner's way to turn every tracker off) reads as unset here.
                trackers = set() if _unset(value) else {t.strip().lower() for t in to_str(value).split(",")}
                known = {"tensorboard", "wandb", "none", "all", ""}
                out.set("spec.tracking.tensorboard", bool(trackers & {"tensorboard", "all"}))
                if trackers & {"wandb", "all"}:
                    out.set("spec.tracking.wandb.enabled", True)
                for other in sorted(trackers - known):
                    out.unmapped.append(f"{where} includes {redact.show(name, other)} (only tensorboard and wandb "
                                        "are supported)")
            elif name == "tracker_project_name":
                wandb_project = to_str(value)
            elif name in ("vae_cache_ondemand", "vae_cache_disable"):
                vae_disable = vae_disable or to_bool(value)
            elif name == "data_backend_config":
                out.notes.append(f"{where}: {redact.show(name, value)} ignored; the dataloader file given on the command "
                                 "line was converted instead")
            elif name == "tracker_run_name":
                pass  # becomes metadata.name, below
            else:
                out.unmapped.append(_unmapped(where, name))
        except Bad as e:
            out.problems.append(f"{label}: {e.about(name)}")

    if vae_disable:
        out.set("spec.vaeCacheDisable", True)
    if out.get("spec.tracking.wandb.enabled"):
        out.set("spec.tracking.wandb.project", wandb_project or "simpletuner")
        if not wandb_project:
            out.notes.append(f"{label}: tracker_project_name not set; W&B project 'simpletuner' used")
    elif wandb_project is not None:
        out.unmapped.append(f"{label}: tracker_project_name (W&B is not enabled in report_to)")
    run_name = options.get("tracker_run_name")
    out.set("metadata.name", dns_name(run_name, "pixart-sigma-finetune") if not _unset(run_name)
            else "pixart-sigma-finetune")
    if not _unset(run_name) and out.get("metadata.name") != str(run_name):
        out.notes.append(f"{label}: tracker_run_name {redact.show('tracker_run_name', run_name)} became metadata.name "
                         f"{out.get('metadata.name')!r} (a DNS label)")
    _model_type_default(options, label, out)
    _steps_default(out)
    _hub(out)
    return defaults


def _default(path: str) -> Any:
    return (schema_mod.subschema(path) or {}).get("default")


def _resolutions(value: Any) -> str:
    """SimpleTuner also accepts `1024` for a square; ours are always WIDTHxHEIGHT."""
    items = [item.strip() for item in to_str(value).split(",") if item.strip()]
    return ",".join(f"{i}x{i}" if i.isdigit() else i for i in items)


def _model_type_default(options: dict[str, Any], label: str, out: Conversion) -> None:
    if "model_type" not in options:
        out.notes.append(f"{label}: model_type not set (SimpleTuner's default is lora); converted as a "
                         "full fine-tune")


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
    if repo is not None and "/" not in repo:
        # The Hub puts an owner-less id under the token's user; a spec has to say which one.
        del out.document["spec"]["output"]["hub"]["repoId"]
        pushing = bool(out.get("spec.output.hub.push"))
        if pushing:
            out.set("spec.output.hub.push", False)
        out.notes.append(f"hub_model_id {redact.show('hub_model_id', repo)} has no owner; "
                         f"{'push disabled' if pushing else 'not converted'}. "
                         f"Set spec.output.hub.repoId to OWNER/{repo} (and spec.output.hub.push: true) to publish")


# ----------------------------------------------------------------------------- multidatabackend.json

CAPTIONS = _enum_identity("spec.datasets.captionStrategy")
CROP_ASPECTS = _enum_identity("spec.datasets.cropAspect")
CROP_STYLES = {**_enum_identity("spec.datasets.cropStyle"), "centre": "center"}
SIZE_KEYS = {"minimum_image_size": "minimumImageSize", "maximum_image_size": "maximumImageSize",
             "target_downsample_size": "targetDownsampleSize"}
CONSUMED = {"id", "type", "dataset_type", "instance_data_dir", "dataset_name", "disabled", "disable"}


def _image_dataset(entry: dict[str, Any], index: int, label: str, defaults: dict[str, Any],
                   out: Conversion) -> dict | None:
    options = {**defaults, **{normalize_key(k): v for k, v in entry.items()}}
    kind = str(options.get("type", "local")).lower()
    ds: dict[str, Any] = {"name": dataset_id(options.get("id", ""), f"dataset-{index}")}
    if str(options.get("id", "")) != ds["name"]:
        out.notes.append(f"{label}: id {redact.show('id', options.get('id'))} became name {ds['name']!r} "
                         "(lowercase letters, digits, '-', '_')")
    if kind == "local":
        ds["type"] = "local"
        if _unset(options.get("instance_data_dir")):
            out.problems.append(f"{label}: instance_data_dir is required for a local dataset")
        else:
            ds["path"] = read(options, "instance_data_dir", to_path)
    elif kind == "huggingface":
        ds["type"] = "huggingface"
        if _unset(options.get("dataset_name")):
            out.problems.append(f"{label}: dataset_name is required for a huggingface dataset")
        else:
            ds["repo"] = read(options, "dataset_name", to_str)
    else:
        out.unmapped.append(f"{label}: the whole dataset (type {redact.show('type', kind)}; supported: local, "
                            "huggingface)")
        return None
    if "disabled" in options or "disable" in options:
        ds["disabled"] = read(options, "disabled" if "disabled" in options else "disable", to_bool)

    area_from_pixels = False
    rtype = options.get("resolution_type")
    if (_unset(rtype) and not _unset(options.get("resolution"))
            and read(options, "resolution", to_float) > MAX_AREA_MEGAPIXELS):
        rtype = "pixel_area"  # SimpleTuner's default; a resolution like 1024 is clearly not megapixels
        out.notes.append(f"{label}: resolution_type not set; read resolution "
                         f"{redact.show('resolution', options['resolution'])} as pixel_area (SimpleTuner's default)")
    if not _unset(rtype):
        # Without a known unit every size would be misread (1024 px taken as 1024 megapixels).
        word = read({"resolution_type": rtype}, "resolution_type",
                    one_of({"pixel_area": "pixel_area", "area": "area", "pixel": "pixel"}))
        area_from_pixels = word == "pixel_area"
        ds["resolutionType"] = "area" if area_from_pixels else word

    def size(value: Any) -> float:
        number = to_float(value)
        return round((number / AREA_SIDE) ** 2, 6) if area_from_pixels else number

    for name, value in options.items():
        where = f"{label}: {name}"
        if name in CONSUMED or name == "resolution_type":
            continue
        try:
            if name == "resolution":
                if not _unset(value):
                    ds["resolution"] = size(value)
            elif name in SIZE_KEYS:
                if not _unset(value) and to_float(value) > 0:  # 0 disables the check in SimpleTuner
                    ds[SIZE_KEYS[name]] = size(value)
            elif name == "crop":
                ds["crop"] = to_bool(value)
            elif name == "crop_aspect":
                ds["cropAspect"] = one_of(CROP_ASPECTS)(value)
            elif name == "crop_style":
                ds["cropStyle"] = one_of(CROP_STYLES)(value)
            elif name == "caption_strategy":
                ds["captionStrategy"] = one_of(CAPTIONS)(value)
            elif name == "instance_prompt":
                if not _unset(value):
                    ds["instancePrompt"] = to_str(value)
            elif name == "metadata_backend":
                ds["metadataBackend"] = one_of({"discovery": "discovery"})(value)
            elif name == "cache_dir_vae":
                if not _unset(value):
                    ds["vaeCacheDir"] = to_path(value)
            elif name == "repeats":
                ds["repeats"] = to_int(value)
            else:
                out.unmapped.append(_unmapped(where, name))
        except Bad as e:
            out.unmapped.append(f"{label}: {e.about(name)}; the default is used")
    if area_from_pixels:
        out.notes.append(f"{label}: pixel_area sizes converted to megapixels (1.0 = {AREA_SIDE}x{AREA_SIDE})")
    return ds


def _text_embeds(entry: dict[str, Any], label: str, out: Conversion) -> None:
    for key, value in entry.items():
        name, where = normalize_key(key), f"{label}: {normalize_key(key)}"
        try:
            if name == "cache_dir":
                if not _unset(value):
                    out.set("spec.textEmbeds.cacheDir", to_path(value))
            elif name == "write_batch_size":
                out.set("spec.textEmbeds.writeBatchSize", to_int(value))
            elif name not in ("id", "type", "dataset_type", "default", "disabled", "disable"):
                out.unmapped.append(_unmapped(where, name))
        except Bad as e:
            out.problems.append(f"{label}: {e.about(name)}")


def _convert_backends(backends: list[Any], label: str, defaults: dict[str, Any], out: Conversion) -> None:
    datasets: list[dict[str, Any]] = []
    embeds = [i for i, b in enumerate(backends) if isinstance(b, dict) and _backend_kind(b) == "text_embeds"]
    # Text embeds are cached on local disk: an S3 cache (with its credentials) is not converted.
    local = [i for i in embeds if str(backends[i].get("type", "local")).lower() == "local"]
    chosen = next((i for i in local if _truthy(backends[i].get("default"))), local[0] if local else None)
    for i, entry in enumerate(backends):
        where = f"{label}[{i}]"
        if not isinstance(entry, dict):
            out.problems.append(f"{where}: expected an object, got {_json_type(entry)}")
            continue
        where += f" ({entry['id']})" if isinstance(entry.get("id"), str) else ""
        kind = _backend_kind(entry)
        try:
            if kind == "text_embeds":
                if i == chosen:
                    _text_embeds(entry, where, out)
                    if _truthy(entry.get("default")) is False and any(_truthy(backends[j].get("default"))
                                                                       for j in embeds):
                        out.notes.append(f"{where}: used for the text-embed cache (the default one is not local)")
                elif i not in local:
                    out.unmapped.append(f"{where}: the whole text_embeds backend (type "
                                        f"{redact.show('type', entry.get('type'))}; text embeds are cached on local disk)")
                else:
                    out.unmapped.append(f"{where}: a second text_embeds backend (one shared cache is used)")
            elif kind == "image":
                ds = _image_dataset(entry, i, where, defaults, out)
                if ds is not None:
                    datasets.append(ds)
            else:
                out.unmapped.append(f"{where}: the whole backend (dataset_type {redact.show('dataset_type', kind)}; "
                                    "supported: image, text_embeds)")
        except Bad as e:
            out.problems.append(f"{where}: {e.about()}")
    if defaults and not datasets:
        out.unmapped.append("config dataset defaults (" + ", ".join(sorted(defaults)) + "): no image dataset to apply them to")
    if not datasets and not out.problems:
        out.problems.append(f"{label}: no image dataset of type local or huggingface to convert")
    out.set("spec.datasets", datasets)


def _backend_kind(entry: dict[str, Any]) -> str:
    kind = str(entry.get("dataset_type", "image")).lower()
    return "text_embeds" if str(entry.get("type", "")).lower() == "text_embeds" else kind


def _json_type(value: Any) -> str:
    """What a JSON value is, never what it holds (a misplaced config may be full of secrets)."""
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


def _truthy(value: Any) -> bool:
    try:
        return to_bool(value)
    except Bad:
        return False


# ----------------------------------------------------------------------------- entry points

def convert(config: Any, backends: Any, config_label: str = "config.json",
            backends_label: str = "multidatabackend.json") -> Conversion:
    out = Conversion()
    out.set("apiVersion", schema_mod.api_version())
    out.set("kind", schema_mod.KIND)
    if not isinstance(config, dict):
        out.problems.append(f"{config_label}: expected a JSON object of SimpleTuner options, got {_json_type(config)}")
        return out
    if isinstance(backends, dict):  # a single backend written without the surrounding list
        backends = [backends]
    if not isinstance(backends, list):
        out.problems.append(f"{backends_label}: expected a JSON list of data backends, got {_json_type(backends)}")
        return out
    out.set("spec.model.family", PIXART_FAMILY)
    defaults = _convert_config(config, config_label, out)
    _convert_backends(backends, backends_label, defaults, out)
    out.document = ordered(out.document, schema_mod.load_schema())
    return out


def ordered(value: Any, schema: dict[str, Any]) -> Any:
    """Keys in schema order, so the YAML reads like the docs (`explain`) do."""
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        keys = [k for k in props if k in value] + [k for k in value if k not in props]
        return {k: ordered(value[k], props.get(k, {})) for k in keys}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [ordered(v, schema["items"]) for v in value]
    return value


def read_json(path: str) -> Any:
    """A JSON file, read within the same limits as specs; SpecError on any problem."""
    p = Path(path)
    try:
        if not p.is_file():
            raise SpecError([f"{path}: {'is a directory' if p.is_dir() else 'no such file'}"])
        if p.stat().st_size > MAX_SPEC_BYTES:
            raise SpecError([f"{path}: larger than 1 MiB; not a SimpleTuner config"])
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SpecError([f"{path}: not UTF-8 text"]) from None
    except OSError as e:
        raise SpecError([f"{path}: cannot read ({e.strerror or e})"]) from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise SpecError([f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"]) from None
    except (ValueError, RecursionError) as e:
        raise SpecError([f"{path}: unreadable JSON ({str(e).split(':')[0] or 'nested too deeply'})"]) from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def render(conv: Conversion, config_label: str, backends_label: str) -> str:
    lines = [f"# Converted from SimpleTuner by `trainingjob import-simpletuner {config_label} {backends_label}`."]
    if conv.unmapped:
        lines.append("# Options with no TrainingJob equivalent (NOT converted; review them):")
        lines += [f"#   {_comment(u)}" for u in conv.unmapped]
    else:
        lines.append("# Every option had an equivalent.")
    if conv.notes:
        lines.append("# Adjustments:")
        lines += [f"#   {_comment(n)}" for n in conv.notes]
    body = yaml.safe_dump(conv.document, sort_keys=False, allow_unicode=True, width=100)
    return "\n".join(lines) + "\n" + body


def _comment(text: str) -> str:
    return " ".join(text.split())  # a newline inside a value must not end the comment


def import_files(config_path: str, backends_path: str) -> tuple[Conversion, str, tuple[str, ...]]:
    """Convert two files; returns the conversion, its YAML and the warnings `validate` gives it.
    Raises SpecError when the inputs cannot be read or converted, or the result does not validate."""
    config, backends = read_json(config_path), read_json(backends_path)
    conv = convert(config, backends, Path(config_path).name, Path(backends_path).name)
    if conv.problems:
        raise SpecError(conv.problems)
    text = render(conv, config_path, backends_path)
    try:
        job = job_from_document(conv.document, "converted spec")
    except SpecError as e:
        raise SpecError(e.problems + ["the converted spec does not validate; fix the SimpleTuner option behind "
                                      "each field above, or convert and then edit the output"]) from None
    return conv, text, job.warnings
