"""Shrink a user's TrainingJob into a smoke job for the CPU: a pure function over spec dicts.

What is kept is everything that can fail for real in the user's run: datasets (a sample
of them), caption strategy, crops and buckets, validation prompts and resolutions (scaled,
aspect kept), the export. What is swapped is what a CPU cannot afford: the model (the
family's builtin tiny model), the step count, precision, the hardware. Every swap is
returned as a `Change`, so the report can say exactly how the smoke differs from the run.

Sizes are scaled by one factor 1/2^k for the whole job, chosen so the largest training
side is at most SMOKE_SIDE: a power of two keeps multiples of 16 (the PixArt token grid)
whole far more often than an arbitrary ratio, and one factor keeps training and validation
sizes in the same proportion as in the real job.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Mapping

from runner.models.registry import traits
from runner.spec.semantics import parse_resolutions

SMOKE_SIDE = 256  # the largest training side of a smoke run, in px
SMOKE_STEPS = 2
SMOKE_INFERENCE_STEPS = 2
# CLIP scoring is not part of a model family; the builtin tiny CLIP has the real classes.
SMOKE_CLIP_MODEL = "builtin:tiny-clip"
SUBSTITUTE_NAME = "smoke-samples"


@dataclass(frozen=True)
class Change:
    """One field the smoke sets differently from the user's spec, and why."""

    field: str
    before: Any
    after: Any
    why: str

    def line(self) -> str:
        after = "(removed)" if self.after is None else _show(self.after)
        return f"{self.field}: {_show(self.before)} -> {after} ({self.why})"


@dataclass(frozen=True)
class Shrunk:
    document: dict[str, Any]
    changes: tuple[Change, ...]
    scale: float  # linear factor applied to training and validation sizes


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def nominal_side(ds: Mapping[str, Any]) -> float:
    """The training side of a dataset in px: a square's side for an area, the shorter side for pixel."""
    res = float(ds["resolution"])
    return math.sqrt(res) * 1024 if ds["resolutionType"] == "area" else res


def scale_factor(sides: list[float], smoke_side: int = SMOKE_SIDE) -> float:
    """1/2^k, the largest such factor that brings every side to at most `smoke_side` (1 if none is larger)."""
    largest = max(sides, default=0.0)
    k = 0
    while largest / 2 ** k > smoke_side:
        k += 1
    return 1 / 2 ** k


def scale_size(width: int, height: int, factor: float, multiple: int) -> tuple[int, int]:
    """(width, height) times `factor`, each side rounded to a multiple of `multiple` (at least one)."""
    def side(v: int) -> int:
        return max(multiple, int(math.floor(v * factor / multiple + 0.5)) * multiple)

    return side(width), side(height)


def substitute_dataset(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The dataset a smoke trains on when none of the user's can be read here (all on the Hub,
    or on a volume that exists only in the pod): the bundled sample photos, cropped and
    bucketed like the user's first dataset. Captions come from the file names: the photos have
    no .txt files and no instance prompt."""
    first = doc["spec"]["datasets"][0]
    keep = ("crop", "cropAspect", "cropStyle", "resolution", "resolutionType", "minimumImageSize",
            "maximumImageSize", "targetDownsampleSize")
    out = {"name": SUBSTITUTE_NAME, "type": "samples", "captionStrategy": "filename"}
    out.update({k: first[k] for k in keep if first.get(k) is not None})
    return out


def shrink(doc: Mapping[str, Any], *, workdir: str, samples: Mapping[str, str],
           left_out: Mapping[str, str] = {}) -> Shrunk:
    """The smoke job of a defaulted TrainingJob document.

    `samples` maps a dataset name to the folder holding its sampled images (the smoke trains on
    that folder as `type: local`); `left_out` maps a dataset name to why it cannot take part
    (it is disabled, with the reason as the change). A `samples` entry named SUBSTITUTE_NAME
    adds `substitute_dataset(doc)`. Every enabled dataset must be in one of the two maps.
    Outputs and caches all go under `workdir`."""
    out = copy.deepcopy(dict(doc))
    spec = out["spec"]
    changes: list[Change] = []

    def put(node: dict[str, Any], key: str, where: str, value: Any, why: str) -> None:
        before = node.get(key)
        if before == value:
            return
        if value is None:
            node.pop(key, None)
        else:
            node[key] = value
        changes.append(Change(where, before, value, why))

    family = traits(spec["model"]["family"])
    model = spec["model"]
    put(model, "pretrained", "spec.model.pretrained", family.tiny_model,
        f"the builtin tiny {family.title} model: same architecture, random weights, built offline")
    put(model, "revision", "spec.model.revision", None, "the builtin model has no revisions")
    for key in ("vaeDtype", "textEncoderDtype"):
        put(model, key, f"spec.model.{key}", "float32", "the CPU runs the encoders in float32")

    trained = [ds for ds in spec["datasets"] if not ds["disabled"] and ds["name"] in samples]
    if SUBSTITUTE_NAME in samples:
        trained.append(substitute_dataset(out))
    factor = scale_factor([nominal_side(ds) for ds in trained])
    scale_note = f"scaled by 1/{round(1 / factor)} for the CPU, aspect kept"

    for i, ds in enumerate(spec["datasets"]):
        where = f"spec.datasets[{i}]"
        if ds["disabled"]:
            continue
        if ds["name"] in left_out:
            put(ds, "disabled", f"{where}.disabled", True, left_out[ds["name"]])
            continue
        if ds["name"] not in samples:
            raise ValueError(f"{where} ({ds['name']!r}) is neither sampled nor left out")
        _shrink_dataset(ds, where, samples[ds["name"]], workdir, factor, scale_note, put)
    if SUBSTITUTE_NAME in samples:
        sub = substitute_dataset(out)
        where = f"spec.datasets[{len(spec['datasets'])}]"
        sub.update({"type": "local", "path": samples[SUBSTITUTE_NAME]})
        sub["resolution"] = _scaled_resolution(sub, factor)
        spec["datasets"].append(sub)
        changes.append(Change(where, None, SUBSTITUTE_NAME,
                              "no dataset of the spec can be read here; the bundled sample photos, cropped and "
                              "bucketed like spec.datasets[0], captioned by file name, stand in"))

    put(spec, "cacheDir", "spec.cacheDir", f"{workdir}/cache", "the smoke never touches the real cache")
    put(spec["textEmbeds"], "cacheDir", "spec.textEmbeds.cacheDir", None, "under the smoke's cacheDir")
    _shrink_training(spec["training"], put)
    _shrink_validation(spec, family, factor, scale_note, put)
    if spec["evaluation"]["clipScore"]:
        put(spec["evaluation"], "clipModel", "spec.evaluation.clipModel", SMOKE_CLIP_MODEL,
            "the builtin tiny CLIP: real classes, random weights")
    put(spec["output"], "dir", "spec.output.dir", f"{workdir}/output", "the smoke never touches the real output")
    put(spec["output"]["hub"], "push", "spec.output.hub.push", False,
        "a smoke pushes nothing; the token variable and the Hub are checked instead")
    wandb = spec["tracking"].get("wandb")
    if wandb:
        put(wandb, "enabled", "spec.tracking.wandb.enabled", False,
            "a smoke logs nothing remotely; the key variable is checked instead")
    put(spec["metrics"], "port", "spec.metrics.port", 0, "no metrics server for a smoke")
    hw = spec["hardware"]
    put(hw, "accelerator", "spec.hardware.accelerator", "cpu", "a smoke runs on the CPU")
    put(hw, "gpusPerNode", "spec.hardware.gpusPerNode", 1, "one CPU process")
    put(hw, "nodes", "spec.hardware.nodes", 1, "one CPU process")
    return Shrunk(document=out, changes=tuple(changes), scale=factor)


def _scaled_resolution(ds: Mapping[str, Any], factor: float) -> float:
    # area is in megapixels, so it scales with the square of the linear factor
    res = ds["resolution"] * (factor ** 2 if ds["resolutionType"] == "area" else factor)
    return int(res) if ds["resolutionType"] == "pixel" and float(res).is_integer() else res


def _shrink_dataset(ds, where, folder, workdir, factor, scale_note, put) -> None:
    put(ds, "type", f"{where}.type", "local", "the sample is a local folder")
    put(ds, "path", f"{where}.path", folder, "a sample of the dataset's images, stratified over its buckets")
    for key in ("repo", "revision", "subfolder"):
        put(ds, key, f"{where}.{key}", None, "the sample is a local folder")
    put(ds, "resolution", f"{where}.resolution", _scaled_resolution(ds, factor), scale_note)
    # minimum/maximumImageSize and targetDownsampleSize compare the *source* images, so they
    # stay: the smoke keeps and drops exactly the images the real run keeps and drops.
    if ds.get("vaeCacheDir"):
        put(ds, "vaeCacheDir", f"{where}.vaeCacheDir", f"{workdir}/cache/vae-dir/{ds['name']}",
            "the smoke never touches the real cache")
    put(ds, "repeats", f"{where}.repeats", 0, "a smoke takes a fixed number of steps")


def _shrink_training(training: dict[str, Any], put) -> None:
    where = "spec.training"
    put(training, "maxSteps", f"{where}.maxSteps", SMOKE_STEPS, "a few steps prove the loop")
    put(training, "epochs", f"{where}.epochs", None, "maxSteps alone bounds a smoke")
    put(training, "batchSize", f"{where}.batchSize", 1,
        "any sampled bucket fills a batch; the real batch is checked against the real dataset")
    put(training, "gradientAccumulationSteps", f"{where}.gradientAccumulationSteps", 1, "as batchSize")
    put(training, "mixedPrecision", f"{where}.mixedPrecision", "no", "the CPU trains in float32")
    put(training, "compile", f"{where}.compile", False, "compiling costs more than a smoke runs")
    put(training, "dataloaderWorkers", f"{where}.dataloaderWorkers", 0, "worker processes cost more than they save")
    put(training, "checkpointEvery", f"{where}.checkpointEvery", SMOKE_STEPS, "one checkpoint, at the end")
    put(training, "resume", f"{where}.resume", "none", "a smoke starts fresh")


def _shrink_validation(spec: dict[str, Any], family, factor: float, scale_note: str, put) -> None:
    validation = spec["validation"]
    where = "spec.validation"
    sizes = [scale_size(w, h, factor, family.resolution_multiple)
             for w, h in parse_resolutions(validation["resolutions"])]
    text = ",".join(f"{w}x{h}" for w, h in dict.fromkeys(sizes))
    put(validation, "resolutions", f"{where}.resolutions", text,
        f"{scale_note}, multiples of {family.resolution_multiple}")
    if validation["inferenceSteps"] > SMOKE_INFERENCE_STEPS:
        put(validation, "inferenceSteps", f"{where}.inferenceSteps", SMOKE_INFERENCE_STEPS, "enough to render")
    put(validation, "every", f"{where}.every", SMOKE_STEPS, "once, at the end")
