"""Checks the JSON Schema cannot express. Pure functions over a defaulted document.

Each returns (errors, warnings) as `field.path: message` lines.
"""
from __future__ import annotations

from typing import Any

PIXART_GUIDANCE_RANGE = (3.6, 4.4)


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


def check(doc: dict[str, Any]) -> tuple[list[str], list[str]]:
    spec = doc["spec"]
    errors: list[str] = []
    warnings: list[str] = []
    training = spec["training"]
    if training.get("maxSteps") is None and training.get("epochs") is None:
        errors.append("spec.training: set maxSteps or epochs (neither is set), e.g. maxSteps: 1000")

    validation = spec["validation"]
    try:
        for i, (w, h) in enumerate(parse_resolutions(validation["resolutions"])):
            if w % 8 or h % 8 or w == 0 or h == 0:
                errors.append(f"spec.validation.resolutions: {w}x{h} is not a multiple of 8 in both sides "
                              f"(the VAE downsamples by 8); try {max(8, round(w / 8) * 8)}x{max(8, round(h / 8) * 8)}")
    except ValueError as e:
        errors.append(f"spec.validation.resolutions: {e}; expected e.g. 1024x1024,1280x768")

    if spec["model"]["family"] == "pixart_sigma" and validation.get("prompts"):
        lo, hi = PIXART_GUIDANCE_RANGE
        g = validation["guidance"]
        if not lo <= g <= hi:
            warnings.append(f"warning: spec.validation.guidance: {g} is outside {lo}-{hi}, the range PixArt Sigma samples best at")

    if spec["hardware"]["accelerator"] == "mps" and training["mixedPrecision"] != "no":
        errors.append(f"spec.training.mixedPrecision: {training['mixedPrecision']!r} is not supported on mps; "
                      "set mixedPrecision: no for Apple silicon")

    names: dict[str, int] = {}
    for i, ds in enumerate(spec["datasets"]):
        where = f"spec.datasets[{i}]"
        if ds["name"] in names:
            errors.append(f"{where}.name: {ds['name']!r} is already used by spec.datasets[{names[ds['name']]}]; names must be unique")
        names.setdefault(ds["name"], i)
        if ds["type"] == "local" and not ds.get("path"):
            errors.append(f"{where}.path: required when type is local (a directory of images)")
        if ds["type"] == "huggingface" and not ds.get("repo"):
            errors.append(f"{where}.repo: required when type is huggingface (a Hub dataset repo id)")
        if ds["captionStrategy"] == "instanceprompt" and not ds.get("instancePrompt"):
            errors.append(f"{where}.instancePrompt: required when captionStrategy is instanceprompt")
        if ds.get("maximumImageSize") is not None and ds.get("targetDownsampleSize") is None:
            errors.append(f"{where}.targetDownsampleSize: required when maximumImageSize is set (the size to downsample to)")
        lo, hi = ds.get("minimumImageSize"), ds.get("maximumImageSize")
        if lo is not None and hi is not None and lo > hi:
            errors.append(f"{where}.minimumImageSize: {lo} is larger than maximumImageSize {hi}")
    if spec["datasets"] and all(ds["disabled"] for ds in spec["datasets"]):
        errors.append("spec.datasets: every dataset is disabled; enable at least one")

    hub = spec["output"].get("hub", {})
    if hub.get("push") and not hub.get("repoId"):
        errors.append("spec.output.hub.repoId: required when push is true")
    wandb = spec["tracking"].get("wandb", {})
    if wandb.get("enabled") and not wandb.get("project"):
        errors.append("spec.tracking.wandb.project: required when wandb is enabled")
    return errors, warnings
