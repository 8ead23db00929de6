"""Checks the JSON Schema cannot express. Pure functions over a defaulted document.

Each rule yields (level, "field.path: message") pairs; `check` collects them into
(errors, warnings). Rules also run on documents the schema rejected (so one `validate` lists
every problem); there a rule that trips over a malformed field is skipped, since the schema
has already reported that field.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

PIXART_GUIDANCE_RANGE = (3.6, 4.4)
# The VAE downsamples by 8 and PixArt's transformer patches latents 2x2; sizes that are not
# multiples of 8 cannot be encoded to a whole latent grid.
VAE_FACTOR = 8
MAX_VALIDATION_SIDE = 8192

ERROR, WARNING = "error", "warning"
Finding = tuple[str, str]


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
    for w, h in sizes:
        if w == 0 or h == 0:
            yield ERROR, f"{where}: {w}x{h} has a zero side; use e.g. 1024x1024"
        elif w % VAE_FACTOR or h % VAE_FACTOR:
            fix = f"{max(8, round(w / 8) * 8)}x{max(8, round(h / 8) * 8)}"
            yield ERROR, (f"{where}: {w}x{h} is not a multiple of {VAE_FACTOR} on both sides (the VAE "
                          f"downsamples images by {VAE_FACTOR}, so other sizes have no whole latent grid); try {fix}")
        elif max(w, h) > MAX_VALIDATION_SIDE:
            yield ERROR, f"{where}: {w}x{h} has a side over {MAX_VALIDATION_SIDE} px; PixArt Sigma tops out at 2048"


def _guidance(spec: dict[str, Any]) -> Iterator[Finding]:
    # The default (4.0) is inside the range, so this only fires on a value someone chose.
    if spec["model"]["family"] == "pixart_sigma":
        lo, hi = PIXART_GUIDANCE_RANGE
        g = spec["validation"]["guidance"]
        if not lo <= g <= hi:
            yield WARNING, (f"spec.validation.guidance: {g} is outside {lo}-{hi}, the range PixArt Sigma samples "
                            "best at; validation images may look washed out or burnt")


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
        if ds["captionStrategy"] == "instanceprompt" and not ds.get("instancePrompt"):
            yield ERROR, f"{where}.instancePrompt: required when captionStrategy is instanceprompt"
        if ds.get("maximumImageSize") is not None and ds.get("targetDownsampleSize") is None:
            yield ERROR, f"{where}.targetDownsampleSize: required when maximumImageSize is set (the size to downsample to)"
        lo, hi = ds.get("minimumImageSize"), ds.get("maximumImageSize")
        if lo is not None and hi is not None and lo > hi:
            yield ERROR, f"{where}.minimumImageSize: {lo} is larger than maximumImageSize {hi}; no image could qualify"
    if datasets and all(ds["disabled"] for ds in datasets):
        yield ERROR, "spec.datasets: every dataset is disabled; enable at least one (disabled: false)"


def _hub(spec: dict[str, Any]) -> Iterator[Finding]:
    hub = spec["output"].get("hub", {})
    if hub.get("push") and not hub.get("repoId"):
        yield ERROR, "spec.output.hub.repoId: required when push is true, e.g. me/pixart-sigma-finetune"


def _wandb(spec: dict[str, Any]) -> Iterator[Finding]:
    wandb = spec["tracking"].get("wandb", {})
    if wandb.get("enabled") and not wandb.get("project"):
        yield ERROR, "spec.tracking.wandb.project: required when wandb is enabled"


RULES: tuple[Callable[[dict[str, Any]], Iterator[Finding]], ...] = (
    _steps_or_epochs, _resolutions, _guidance, _mps_precision, _datasets, _hub, _wandb)


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
