"""SimpleTuner's multidatabackend.json onto `spec.datasets` and `spec.textEmbeds`.

Image backends of type local or huggingface become datasets (the config's per-dataset
defaults apply to each); one local text_embeds backend becomes the text-embed cache; anything
else is listed as having no equivalent.
"""
from __future__ import annotations

from typing import Any

from runner.importers.simpletuner.options import (AREA_SIDE, CAPTIONS, CONSUMED, CROP_ASPECTS, CROP_STYLES, SIZE_KEYS,
                                                  Bad, Conversion, normalize_key, one_of, read, to_bool, to_float,
                                                  to_int, to_path, to_str, unmapped, unset)
from runner.spec import redact
from runner.spec.errors import kind_of
from runner.spec.names import slug
from runner.spec.semantics import MAX_AREA_MEGAPIXELS


def _image_dataset(entry: dict[str, Any], index: int, label: str, defaults: dict[str, Any],
                   out: Conversion) -> dict | None:
    options = {**defaults, **{normalize_key(k): v for k, v in entry.items()}}
    kind = str(options.get("type", "local")).lower()
    ds: dict[str, Any] = {"name": slug(options.get("id", ""), f"dataset-{index}", underscore=True)}
    if str(options.get("id", "")) != ds["name"]:
        out.notes.append(f"{label}: id {redact.show('id', options.get('id'))} became name {ds['name']!r} "
                         "(lowercase letters, digits, '-', '_')")
    if kind == "local":
        ds["type"] = "local"
        if unset(options.get("instance_data_dir")):
            out.problems.append(f"{label}: instance_data_dir is required for a local dataset")
        else:
            ds["path"] = read(options, "instance_data_dir", to_path)
    elif kind == "huggingface":
        ds["type"] = "huggingface"
        if unset(options.get("dataset_name")):
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
    if (unset(rtype) and not unset(options.get("resolution"))
            and read(options, "resolution", to_float) > MAX_AREA_MEGAPIXELS):
        rtype = "pixel_area"  # SimpleTuner's default; a resolution like 1024 is clearly not megapixels
        out.notes.append(f"{label}: resolution_type not set; read resolution "
                         f"{redact.show('resolution', options['resolution'])} as pixel_area (SimpleTuner's default)")
    if not unset(rtype):
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
                if not unset(value):
                    ds["resolution"] = size(value)
            elif name in SIZE_KEYS:
                if not unset(value) and to_float(value) > 0:  # 0 disables the check in SimpleTuner
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
                if not unset(value):
                    ds["instancePrompt"] = to_str(value)
            elif name == "metadata_backend":
                ds["metadataBackend"] = one_of({"discovery": "discovery"})(value)
            elif name == "cache_dir_vae":
                if not unset(value):
                    ds["vaeCacheDir"] = to_path(value)
            elif name == "repeats":
                ds["repeats"] = to_int(value)
            else:
                out.unmapped.append(unmapped(where, name))
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
                if not unset(value):
                    out.set("spec.textEmbeds.cacheDir", to_path(value))
            elif name == "write_batch_size":
                out.set("spec.textEmbeds.writeBatchSize", to_int(value))
            elif name not in ("id", "type", "dataset_type", "default", "disabled", "disable"):
                out.unmapped.append(unmapped(where, name))
        except Bad as e:
            out.problems.append(f"{label}: {e.about(name)}")


def convert_backends(backends: list[Any], label: str, defaults: dict[str, Any], out: Conversion) -> None:
    datasets: list[dict[str, Any]] = []
    embeds = [i for i, b in enumerate(backends) if isinstance(b, dict) and _backend_kind(b) == "text_embeds"]
    # Text embeds are cached on local disk: an S3 cache (with its credentials) is not converted.
    local = [i for i in embeds if str(backends[i].get("type", "local")).lower() == "local"]
    chosen = next((i for i in local if _truthy(backends[i].get("default"))), local[0] if local else None)
    for i, entry in enumerate(backends):
        where = f"{label}[{i}]"
        if not isinstance(entry, dict):
            out.problems.append(f"{where}: expected an object, got {kind_of(entry)}")
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


def _truthy(value: Any) -> bool:
    try:
        return to_bool(value)
    except Bad:
        return False
