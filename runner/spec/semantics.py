"""Checks the JSON Schema cannot express. Pure functions over a defaulted document (the path
checks also read the working directory, which is where relative paths resolve).

Each rule yields (level, "field.path: message") pairs; `check` collects them into
(errors, warnings). Rules also run on documents the schema rejected (so one `validate` lists
every problem); there a rule that trips over a malformed field is skipped, since the schema
has already reported that field.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Iterator

from runner.models.registry import traits
from runner.spec import fieldpath, podrules, redact
from runner.spec.errors import ERROR, WARNING, Finding
from runner.spec.names import BUILTIN_PREFIX, LOCAL_PATH_PREFIXES, repo_id_problem
from runner.spec import schema as schema_mod

MAX_VALIDATION_SIDE = 8192
# Dataset sizes: with resolutionType area, megapixels (1.0 = 1024x1024). 16 MP is a 4096 px
# square, twice the largest side any supported family was trained at; a number above it is a
# pixel size written without `resolutionType: pixel` (512 would be a 23170 px square).
MAX_AREA_MEGAPIXELS = 16
# With resolutionType pixel, the shorter side. Buckets are 64-px aligned and at least 64 px
# (runner/data/transforms.ALIGN), so a smaller side is a megapixel value in the wrong unit.
MIN_PIXEL_SIDE = 64
# numpy seeds must be below 2**32, and each process seeds with seed + rank.
MAX_SEED = 2**32 - 1
# Fields holding the NAME of an env var or a Kubernetes Secret, never the secret: every `*Env`
# field of the schema, and the name/key pairs under spec.kubernetes.secrets.
_ENV_FIELDS = tuple(p for p, _ in schema_mod.iter_fields() if p.endswith("Env"))
# Fields holding a directory the runner writes to (or reads checkpoints from).
_DIRS = ("spec.cacheDir", "spec.textEmbeds.cacheDir", "spec.output.dir")



def parse_resolutions(text: str) -> list[tuple[int, int]]:
    """`"1024x1024, 1280x768"` -> [(1024, 1024), (1280, 768)] (width, height). Raises ValueError."""
    out = []
    for item in text.split(","):
        item = item.strip().lower()
        w, sep, h = item.partition("x")
        if not sep or not w.strip().isdigit() or not h.strip().isdigit():
            raise ValueError(f"{item!r} is not WIDTHxHEIGHT")
        out.append((int(w), int(h)))
    return out


def world_size(spec: dict[str, Any]) -> int:
    hw = spec.get("hardware", {})
    return int(hw.get("gpusPerNode", 1)) * int(hw.get("nodes", 1))


def _steps_or_epochs(spec: dict[str, Any]) -> Iterator[Finding]:
    training = spec["training"]
    if training.get("maxSteps") is None and training.get("epochs") is None:
        yield ERROR, "spec.training: set maxSteps or epochs (neither is set), e.g. maxSteps: 1000"


def _resolutions(spec: dict[str, Any]) -> Iterator[Finding]:
    where = "spec.validation.resolutions"
    try:
        sizes = parse_resolutions(spec["validation"]["resolutions"])
    except ValueError as e:
        yield ERROR, f"{where}: {e}; expected WIDTHxHEIGHT pairs separated by commas, e.g. 1024x1024,1280x768"
        return
    family = traits(spec["model"]["family"])
    m = family.resolution_multiple
    for w, h in sizes:
        if w == 0 or h == 0:
            yield ERROR, f"{where}: {w}x{h} has a zero side; use e.g. 1024x1024"
        elif w % m or h % m:
            fix = f"{max(m, int(w / m + 0.5) * m)}x{max(m, int(h / m + 0.5) * m)}"  # halves round up
            yield ERROR, (f"{where}: {w}x{h} is not a multiple of {m} on both sides ({family.title}'s VAE "
                          f"downsamples by {family.vae_scale_factor} and its transformer takes "
                          f"{family.patch_size}x{family.patch_size} latent patches, so other sizes have no whole "
                          f"token grid); try {fix}")
        elif max(w, h) > MAX_VALIDATION_SIDE:
            yield ERROR, (f"{where}: {w}x{h} has a side over {MAX_VALIDATION_SIDE} px; {family.title} tops out "
                          f"at {family.max_side}")


def _dataset_sizes(spec: dict[str, Any]) -> Iterator[Finding]:
    """Sizes in the wrong unit: 512 as an area is 512 megapixels, 1.0 as a pixel size is 1 px."""
    for i, ds in enumerate(spec["datasets"]):
        unit = ds["resolutionType"]
        for key in ("resolution", "minimumImageSize", "maximumImageSize", "targetDownsampleSize"):
            value = ds.get(key)
            if value is None or not math.isfinite(value):  # the schema reports .inf/.nan
                continue
            where = f"spec.datasets[{i}].{key}"
            if unit == "area" and value > MAX_AREA_MEGAPIXELS:
                side = round((value * 1024 * 1024) ** 0.5)
                yield ERROR, (f"{where}: {value:g} megapixels (a {side}x{side} square) with resolutionType area, "
                              f"which is measured in megapixels (1.0 = 1024x1024, at most {MAX_AREA_MEGAPIXELS}); "
                              f"did you mean resolutionType: pixel ({value:g} px on the shorter side)?")
            elif unit == "pixel" and key != "minimumImageSize" and value < MIN_PIXEL_SIDE:
                yield ERROR, (f"{where}: {value:g} px with resolutionType pixel, which is the shorter side in px "
                              f"(buckets are at least {MIN_PIXEL_SIDE} px); did you mean resolutionType: area "
                              f"({value:g} megapixels)?")


def _seed(spec: dict[str, Any]) -> Iterator[Finding]:
    seed, world = spec["training"]["seed"], world_size(spec)
    if seed <= MAX_SEED < seed + world - 1:
        yield ERROR, (f"spec.training.seed: {seed} + rank goes past {MAX_SEED} with {world} processes (each seeds "
                      f"with seed + rank, and numpy takes seeds below 2^32); use at most {MAX_SEED - world + 1}")


def _ddp(spec: dict[str, Any]) -> Iterator[Finding]:
    """DDP's static_graph breaks under no_sync, which the loop uses for all but the last
    micro-batch of an accumulated step: an internal assert (reproduced with torch 2.13 on the
    CPU; reported since 2024, pytorch/pytorch#143580), and with the assert patched out,
    gradients that silently stop being all-reduced (the open fix, pytorch/pytorch#187732).
    Refused on one process too, so a spec that works on one GPU keeps working on several."""
    accum = spec["training"]["gradientAccumulationSteps"]
    if spec["training"]["ddp"]["staticGraph"] and accum > 1:
        yield ERROR, (f"spec.training.ddp.staticGraph: true does not work with gradientAccumulationSteps {accum} "
                      "(PyTorch's DistributedDataParallel fails under no_sync with a static graph, "
                      "pytorch/pytorch#143580); set staticGraph: false (the default) or gradientAccumulationSteps: 1")


def written_dirs(spec: dict[str, Any]) -> list[tuple[str, Any]]:
    """The folders a run writes to, those that are set, as (field path, value): the caches and
    the output. The checks of them (here, before a run, on Kubernetes, for a smoke) share it."""
    found = [(p, fieldpath.dig(spec, p.removeprefix("spec."))) for p in _DIRS]
    found += [(f"spec.datasets[{i}].vaeCacheDir", ds.get("vaeCacheDir")) for i, ds in enumerate(spec["datasets"])]
    return [(where, value) for where, value in found if value]


def dataset_dirs(spec: dict[str, Any]) -> list[tuple[str, Any]]:
    """The local dataset folders a run reads, those that are set, as (field path, value)."""
    return [(f"spec.datasets[{i}].path", ds["path"]) for i, ds in enumerate(spec["datasets"])
            if ds.get("path") and ds.get("type", "local") == "local"]


def _paths(spec: dict[str, Any], cwd: str | None = None) -> Iterator[Finding]:
    """A filesystem root as a place to write caches, outputs or read data from is always a mistake
    (`/`, or a relative path like `../../..` that climbs there from the working directory)."""
    found = written_dirs(spec) + dataset_dirs(spec)
    resume = spec["training"]["resume"]
    if resume not in ("auto", "none"):
        found.append(("spec.training.resume", resume))
    for where, value in found:
        if isinstance(value, str) and value and is_filesystem_root(value, cwd):
            resolved = "" if os.path.isabs(value) else f" (from the working directory {cwd or os.getcwd()})"
            yield ERROR, (f"{where}: {value!r} resolves to the filesystem root{resolved}; point it at a "
                          "directory of its own, e.g. output/my-job or /data/my-images")


def _output_in_dataset(spec: dict[str, Any], cwd: str | None = None) -> Iterator[Finding]:
    """An output.dir in a local dataset folder: discovery would find the run's own validation
    images there, and the next run would train on them."""
    output = spec["output"].get("dir")
    if not isinstance(output, str) or not output:
        return
    out = _resolved(output, cwd)
    for where, path in dataset_dirs(spec):
        if not isinstance(path, str):
            continue
        data = _resolved(path, cwd)
        if out == data or out.startswith(data.rstrip(os.sep) + os.sep):
            yield ERROR, (f"spec.output.dir: {output!r} is inside {where} {path!r}, so the run's validation images "
                          "would be found there and trained on by the next run; put the output in a folder of "
                          "its own, e.g. output/my-job")


def _resolved(path: str, cwd: str | None = None) -> str:
    """`path` as an absolute real path, relative ones from `cwd` (default the working directory)."""
    return os.path.realpath(os.path.join(cwd or os.getcwd(), path))


def is_filesystem_root(path: str, cwd: str | None = None) -> bool:
    """True if `path` (relative ones from `cwd`, default the working directory) is a filesystem root."""
    full = _resolved(path, cwd)
    return os.path.dirname(full) == full


def _secret_references(spec: dict[str, Any]) -> Iterator[Finding]:
    """A name field that passes its pattern but holds a token (an AWS key id is upper-case)."""
    found = [(p, fieldpath.dig(spec, p.removeprefix("spec."))) for p in _ENV_FIELDS]
    for ref, node in (spec.get("kubernetes", {}).get("secrets") or {}).items():
        found += [(f"spec.kubernetes.secrets.{ref}.{key}", node.get(key)) for key in ("name", "key")]
    for where, value in found:
        if redact.looks_like_secret_value(value):
            yield ERROR, f"{where}: the value looks like a secret itself (not shown); {redact.reference_hint(where)}"


def _guidance(spec: dict[str, Any]) -> Iterator[Finding]:
    # The default (4.0) is inside PixArt Sigma's range, so this only fires on a value someone chose.
    family = traits(spec["model"]["family"])
    if family.guidance_range:
        lo, hi = family.guidance_range
        g = spec["validation"]["guidance"]
        if not lo <= g <= hi:
            yield WARNING, (f"spec.validation.guidance: {g} is outside {lo}-{hi}, the range {family.title} samples "
                            "best at; validation images may look washed out or burnt")


def _warmup(spec: dict[str, Any]) -> Iterator[Finding]:
    training = spec["training"]
    steps, warmup = training.get("maxSteps"), training["lrWarmupSteps"]
    if not all(type(n) is int for n in (steps, warmup)):  # unset, or a type error the schema reports
        return
    if warmup >= steps > 0 and training["lrScheduler"] != "constant":
        yield WARNING, (f"spec.training.lrWarmupSteps: {warmup} is not below maxSteps {steps}, so the learning "
                        f"rate never reaches learningRate; a warmup of a few percent of the steps is usual")


def _mps_precision(spec: dict[str, Any]) -> Iterator[Finding]:
    precision = spec["training"]["mixedPrecision"]
    if spec["hardware"]["accelerator"] == "mps" and precision != "no":
        yield ERROR, (f"spec.training.mixedPrecision: {precision!r} is not supported on mps (Apple silicon "
                      "autocast is unreliable for training); set mixedPrecision: \"no\"")


def _datasets(spec: dict[str, Any]) -> Iterator[Finding]:
    datasets = spec["datasets"]
    names: dict[str, int] = {}
    for i, ds in enumerate(datasets):
        where = f"spec.datasets[{i}]"
        if ds["name"] in names:
            yield ERROR, (f"{where}.name: {ds['name']!r} is already used by spec.datasets[{names[ds['name']]}]; "
                          "names must be unique (they name the cache directories)")
        names.setdefault(ds["name"], i)
        if ds["type"] == "local" and not ds.get("path"):
            yield ERROR, f"{where}.path: required when type is local (a directory of images)"
        if ds["type"] == "huggingface" and not ds.get("repo"):
            yield ERROR, f"{where}.repo: required when type is huggingface (a Hub dataset repo id, e.g. bghira/pseudo-camera-10k)"
        for key, only in (("path", "local"), ("repo", "huggingface"), ("subfolder", "huggingface")):
            if ds.get(key) is not None and ds["type"] != only:
                yield WARNING, f"{where}.{key}: ignored because type is {ds['type']} (it applies to type {only})"
        if not ds.get("crop"):  # only settings other than the defaults can be told from unset ones here
            for key, default in (("cropAspect", "square"), ("cropStyle", "random")):
                if ds.get(key, default) != default:
                    yield WARNING, (f"{where}.{key}: {ds[key]!r} is ignored because crop is false (images are only "
                                    "resized to their bucket); set crop: true to crop")
        if ds["captionStrategy"] == "instanceprompt" and not ds.get("instancePrompt"):
            yield ERROR, f"{where}.instancePrompt: required when captionStrategy is instanceprompt"
        if ds.get("maximumImageSize") is not None and ds.get("targetDownsampleSize") is None:
            yield ERROR, f"{where}.targetDownsampleSize: required when maximumImageSize is set (the size to downsample to)"
        lo, hi = ds.get("minimumImageSize"), ds.get("maximumImageSize")
        if lo is not None and hi is not None and lo > hi:
            yield ERROR, f"{where}.minimumImageSize: {lo} is larger than maximumImageSize {hi}; no image could qualify"
    if datasets and all(ds["disabled"] for ds in datasets):
        yield ERROR, "spec.datasets: every dataset is disabled; enable at least one (disabled: false)"


def _fused_feed_forward(spec: dict[str, Any]) -> Iterator[Finding]:
    if spec["model"].get("feedForward") == "fused" and spec["training"].get("fp8"):
        yield ERROR, ("spec.model.feedForward: fused runs the feed-forward's GEMMs in bf16, so it cannot be combined "
                      "with spec.training.fp8 (FP8 Linears); set feedForward: auto (which leaves the feed-forward to "
                      "FP8) or fp8: false")


def _hub(spec: dict[str, Any]) -> Iterator[Finding]:
    hub = spec["output"].get("hub", {})
    if hub.get("push") and not hub.get("repoId"):
        yield ERROR, "spec.output.hub.repoId: required when push is true, e.g. me/pixart-sigma-finetune"


def _hub_repo_ids(spec: dict[str, Any]) -> Iterator[Finding]:
    """Repo ids the Hub would refuse, found before the download or the push (after all the
    training) would fail on them. spec.model.pretrained is a Hub id unless it is a builtin, a
    path (starting with '.', '/' or '~') or a folder that exists here."""
    found = [("spec.output.hub.repoId", spec["output"].get("hub", {}).get("repoId"), True)]
    found += [(f"spec.datasets[{i}].repo", ds.get("repo"), True) for i, ds in enumerate(spec.get("datasets") or [])]
    ref = spec["model"].get("pretrained")
    if isinstance(ref, str) and not ref.startswith((BUILTIN_PREFIX, *LOCAL_PATH_PREFIXES)) and not os.path.isdir(ref):
        found.append(("spec.model.pretrained", ref, False))
    for where, repo_id, namespaced in found:
        if not isinstance(repo_id, str) or not (why := repo_id_problem(repo_id, namespace_required=namespaced)):
            continue
        local = "; a local folder starts with ./ or /" if where == "spec.model.pretrained" else ""
        yield ERROR, (f"{where}: {redact.show(where, repo_id)} is not a valid Hub repo id: {why}{local} "
                      "(e.g. me/pixart-sigma-finetune)")


def _wandb(spec: dict[str, Any]) -> Iterator[Finding]:
    wandb = spec["tracking"].get("wandb", {})
    if wandb.get("enabled") and not wandb.get("project"):
        yield ERROR, "spec.tracking.wandb.project: required when wandb is enabled"


RULES: tuple[Callable[[dict[str, Any]], Iterator[Finding]], ...] = (
    _steps_or_epochs, _warmup, _resolutions, _guidance, _mps_precision, _datasets, _dataset_sizes, _seed, _ddp, _paths,
    _output_in_dataset,
    _secret_references, _fused_feed_forward, _hub, _hub_repo_ids, _wandb, *podrules.RULES)


def check(doc: dict[str, Any], tolerant: bool = False) -> tuple[list[str], list[str]]:
    """(errors, warnings) of a defaulted document. `tolerant` skips rules that trip over malformed
    fields (for documents the schema already rejected); otherwise such a trip is a bug and raises."""
    errors: list[str] = []
    warnings: list[str] = []
    spec = doc.get("spec") if isinstance(doc, dict) else None
    if not isinstance(spec, dict):
        return errors, warnings
    for rule in RULES:
        try:
            for level, line in rule(spec):
                (errors if level == ERROR else warnings).append(line if level == ERROR else f"warning: {line}")
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            if not tolerant:
                raise
    return errors, warnings
