"""What the SimpleTuner importer reads and writes: how a value is read as what its
TrainingJob field needs, which option becomes which field (the tables), and the Conversion
record that collects the result.

SimpleTuner configs carry values as strings more often than not ("false", "1e-5", "20"),
and SimpleTuner itself once read "False" as true; values are parsed by what the target
field needs, never by Python truthiness.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from runner.spec import fieldpath, redact
from runner.spec import schema as schema_mod

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
        return fieldpath.dig(self.document, path)


# ----------------------------------------------------------------------------- values

def normalize_key(key: str) -> str:
    """`--train_batch_size`, `train-batch-size` and `TRAIN_BATCH_SIZE` are the same option."""
    return str(key).strip().lstrip("-").replace("-", "_").lower()


def unset(value: Any) -> bool:
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
    if isinstance(value, (dict, list)) or unset(value):
        raise Bad("is not a text value", value)
    return str(value).strip() if not isinstance(value, str) else value


def one_of(mapping: dict[str, str]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        word = to_str(value).strip().lower()
        if word not in mapping:
            raise Bad(f"has no equivalent (supported: {', '.join(sorted(mapping))})", value)
        return mapping[word]
    return convert


def enum_identity(path: str) -> dict[str, str]:
    """Each value of a schema enum mapped to itself: options whose words are already ours."""
    return {str(v): str(v) for v in (schema_mod.subschema(path) or {}).get("enum", [])}


def default(path: str) -> Any:
    """The schema's default of a field (for notes that say what is used instead)."""
    return (schema_mod.subschema(path) or {}).get("default")


def unmapped(where: str, name: str) -> str:
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


# ----------------------------------------------------------------------------- the tables

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
    "lr_scheduler": ("spec.training.lrScheduler", one_of(enum_identity("spec.training.lrScheduler"))),
    "lr_warmup_steps": ("spec.training.lrWarmupSteps", to_int),
    "adam_beta1": ("spec.training.adamBeta1", to_float),
    "adam_beta2": ("spec.training.adamBeta2", to_float),
    "adam_epsilon": ("spec.training.adamEpsilon", to_float),
    "adam_weight_decay": ("spec.training.weightDecay", to_float),
    "mixed_precision": ("spec.training.mixedPrecision", one_of(enum_identity("spec.training.mixedPrecision"))),
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


# multidatabackend.json: per-dataset options.
CAPTIONS = enum_identity("spec.datasets.captionStrategy")
CROP_ASPECTS = enum_identity("spec.datasets.cropAspect")
CROP_STYLES = {**enum_identity("spec.datasets.cropStyle"), "centre": "center"}
SIZE_KEYS = {"minimum_image_size": "minimumImageSize", "maximum_image_size": "maximumImageSize",
             "target_downsample_size": "targetDownsampleSize"}
CONSUMED = {"id", "type", "dataset_type", "instance_data_dir", "dataset_name", "disabled", "disable"}
