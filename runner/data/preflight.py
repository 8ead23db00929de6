"""Plan a dataset (images, captions, crops, buckets) and check it can train before any GPU work.

`plan_dataset` is shared: `validate`/preflight calls it with `with_digest=False` (headers and
file ends only, fast: see discovery), and the cache stage calls it with `with_digest=True`, which
hashes every file so cache keys and random-crop offsets follow the file *content*.
"""
from __future__ import annotations

import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from runner.data.buckets import BucketReport, bucket_key, bucket_report, group_by_bucket
from runner.data.captions import CaptionError, caption_for
from runner.data.discovery import IMAGE_EXTENSIONS, ImageInfo, has_images, scan
from runner.data.transforms import CropPlan, aspect_problem, meets_minimum, plan_crop
from runner.spec.localpaths import on_pod_volume

# Schema defaults of a dataset entry, so a non-defaulted dict works too.
DATASET_DEFAULTS: dict[str, Any] = {
    "type": "local",
    "crop": False,
    "cropAspect": "square",
    "cropStyle": "random",
    "resolution": 1.0,
    "resolutionType": "area",
    "captionStrategy": "filename",
    "repeats": 0,
    "disabled": False,
}


@dataclass(frozen=True)
class PlannedItem:
    """One trainable image: where it is, its caption, and how it becomes a sample."""

    info: ImageInfo
    caption: str
    plan: CropPlan
    bucket: str  # bucket_key(plan.target_size)
    digest: str | None = None  # sha256 of the file, only with with_digest=True


@dataclass(frozen=True)
class DatasetPlan:
    name: str
    root: Path
    items: tuple[PlannedItem, ...]
    skipped: tuple[tuple[str, str], ...] = field(default=())  # (rel path, reason)

    def bucket_counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.by_bucket().items()}

    def by_bucket(self) -> dict[str, list[PlannedItem]]:
        return group_by_bucket(self.items)

    def bucket_to_indices(self) -> dict[str, list[int]]:
        """Bucket -> positions in `items`: the input of buckets.bucket_batches."""
        return group_by_bucket(list(range(len(self.items))), key=lambda i: self.items[i].bucket)

    def skipped_summary(self) -> str:
        """e.g. "3 skipped: 2 without a caption .txt (a.jpg, b.jpg), 1 smaller than minimumImageSize
        (c.jpg)": each kind names its first NAMED files, so the user knows which to look at."""
        if not self.skipped:
            return "none skipped"
        return f"{len(self.skipped)} skipped: {self._by_kind()}"

    def skipped_cause(self) -> str | None:
        """The skipped images as the cause of a dataset that falls short, e.g. "1 of 2 images
        under two skipped: 1 truncated (b.jpg)"; None when none were skipped."""
        if not self.skipped:
            return None
        total = len(self.skipped) + len(self.items)
        return f"{len(self.skipped)} of {total} image(s) under {self.root} skipped: {self._by_kind()}"

    def skipped_fixes(self) -> list[str]:
        """What would bring the skipped images back, one fix per kind of skip, most files first."""
        return [_KIND_FIXES[kind] for kind, _ in self._kinds()]

    def _kinds(self) -> list[tuple[str, list[str]]]:
        by_kind: dict[str, list[str]] = defaultdict(list)
        for rel, reason in self.skipped:
            by_kind[_reason_kind(reason)].append(rel)
        return sorted(by_kind.items(), key=lambda kv: (-len(kv[1]), kv[0]))

    def _by_kind(self) -> str:
        return ", ".join(f"{len(rels)} {kind} ({_named(rels)})" for kind, rels in self._kinds())

    def enlarged_summary(self) -> str | None:
        """The images resized to more than ENLARGED_NOTE times their width to fill their bucket
        (soft, blurry samples), e.g. "1 enlarged more than 2x to fill its bucket (tiny.jpg 40x40 to
        512x512); set minimumImageSize to skip such images"; None when there are none."""
        enlarged = [item for item in self.items if item.plan.enlargement > ENLARGED_NOTE]
        if not enlarged:
            return None
        enlarged.sort(key=lambda item: -item.plan.enlargement)
        named = [f"{item.info.rel} {item.info.width}x{item.info.height} to {item.bucket}" for item in enlarged]
        its = "its" if len(enlarged) == 1 else "their"
        return (f"{len(enlarged)} enlarged more than {ENLARGED_NOTE:g}x to fill {its} bucket ({_named(named)}); "
                "set minimumImageSize to skip such images")


NAMED = 3  # files named per kind of skip (the counts cover them all)
ENLARGED_NOTE = 2.0  # resized to more than this many times its width: said by validate


def _named(names: list[str]) -> str:
    return ", ".join(names[:NAMED]) + (f" and {len(names) - NAMED} more" if len(names) > NAMED else "")


# Each kind of skip (see _reason_kind) and what would bring those images back.
_KIND_FIXES = {
    "without a caption .txt": "add the missing caption .txt files (or use captionStrategy: filename)",
    "with an unusable caption file": "re-save the caption files as UTF-8 text",
    "smaller than minimumImageSize": "lower minimumImageSize",
    "with an aspect ratio beyond 4:1": "crop the images more elongated than 4:1",
    "in an unsupported format": "convert the unsupported images to .jpg, .png or .webp",
    "truncated": "copy the truncated images again (or remove them)",
    "that cannot be decoded": "replace or remove the images that cannot be decoded",
    "unreadable": "replace or remove the unreadable files",
}


def _reason_kind(reason: str) -> str:
    if "no caption file" in reason:
        return "without a caption .txt"
    if "caption" in reason:
        return "with an unusable caption file"
    if "minimumImageSize" in reason:
        return "smaller than minimumImageSize"
    if "aspect ratio" in reason:
        return "with an aspect ratio beyond 4:1"
    if "unsupported format" in reason:
        return "in an unsupported format"
    if reason.startswith("cannot decode"):  # the probe's end check, or the cache stage's decode
        return "truncated" if "truncated" in reason else "that cannot be decoded"
    return "unreadable"


def _opt(ds: dict[str, Any], key: str) -> Any:
    value = ds.get(key)
    return DATASET_DEFAULTS.get(key) if value is None else value


def seed_key_for(info: ImageInfo, seed: int, digest: str | None = None) -> str:
    """Random-crop seed key: the content digest when known (cache stage), else rel path +
    size + mtime (preflight). Only the crop *offset* depends on it, never the bucket."""
    if digest:
        return f"{digest}:{seed}"
    return f"{info.rel}:{info.size_bytes}:{info.mtime_ns}:{seed}"


def plan_dataset(ds: dict[str, Any], root: Path, seed: int, digest: Callable[[ImageInfo], str] | None = None,
                 workers: int | None = None) -> DatasetPlan:
    """Scan `root` and plan every image of dataset entry `ds` (a spec.datasets item).

    Images are skipped (with a reason) when unreadable, when their caption cannot be found
    (textfile), when smaller than minimumImageSize, or when more elongated than
    transforms.MAX_ASPECT_RATIO (4:1) either way. With `digest` (the cache stage passes a
    DigestMemo) each item gets its content digest, which also seeds the random crop; without
    it (preflight) the seed comes from rel path + size + mtime_ns and no file is read whole.
    Raises DatasetError if `root` is not a directory."""
    root = Path(root)
    infos, skipped = scan(root, workers=workers)
    skipped = list(skipped)
    strategy = _opt(ds, "captionStrategy")
    res_type = _opt(ds, "resolutionType")
    minimum = ds.get("minimumImageSize")

    kept: list[tuple[ImageInfo, str]] = []
    for info in infos:
        try:
            caption = caption_for(info, root, strategy, ds.get("instancePrompt"))
        except CaptionError as e:
            skipped.append((info.rel, e.reason))
            continue
        if not meets_minimum(info.width, info.height, minimum, res_type):
            unit = "MP (1.0 = 1024x1024)" if res_type == "area" else "px on the shorter side"
            skipped.append((info.rel, f"{info.width}x{info.height} is smaller than minimumImageSize {minimum} {unit}"))
            continue
        too_elongated = aspect_problem(info.width, info.height)
        if too_elongated:
            skipped.append((info.rel, too_elongated))
            continue
        kept.append((info, caption))

    digests: list[str | None] = [None] * len(kept)
    if digest is not None and kept:
        n = workers or min(16, (os.cpu_count() or 1) * 2)
        with ThreadPoolExecutor(max_workers=max(1, n)) as pool:
            digests = list(pool.map(lambda ic: digest(ic[0]), kept))

    items = []
    for (info, caption), digest in zip(kept, digests):
        plan = plan_crop(info.width, info.height,
                         resolution=_opt(ds, "resolution"), resolution_type=res_type,
                         crop=bool(_opt(ds, "crop")), crop_aspect=_opt(ds, "cropAspect"),
                         crop_style=_opt(ds, "cropStyle"),
                         maximum_image_size=ds.get("maximumImageSize"),
                         target_downsample_size=ds.get("targetDownsampleSize"),
                         seed_key=seed_key_for(info, seed, digest))
        items.append(PlannedItem(info=info, caption=caption, plan=plan,
                                 bucket=bucket_key(plan.target_size), digest=digest))
    return DatasetPlan(name=str(ds.get("name", "")), root=root, items=tuple(items),
                       skipped=tuple(sorted(skipped)))


def size_report(ds: dict[str, Any], plan: DatasetPlan, batch: int, accum: int, world: int) -> BucketReport:
    """What of a plan can be trained, counting `repeats` (each extra pass adds every image to
    its bucket again, exactly as the trainer's sampler sees them)."""
    passes = 1 + int(_opt(ds, "repeats") or 0)
    counts = {bucket: n * passes for bucket, n in plan.bucket_counts().items()}
    return bucket_report(str(ds.get("name", plan.name)), counts, batch, accum, world)


def plan_problem(where: str, ds: dict[str, Any], plan: DatasetPlan, batch: int, accum: int, world: int) -> str | None:
    """Why a planned dataset cannot train, or None: no images at all, none usable, or too few to
    fill one optimizer step (see size_report). The skipped images are named as the cause, before
    the fixes, and only fixes not already made are offered. `validate`, the cache stage and
    `--smoke` all report through here, so they say the same. `where` is e.g. "spec.datasets[0]"."""
    name = str(ds.get("name", plan.name))
    if not plan.items and not plan.skipped:
        return no_images(where, plan.root)
    if not plan.items:
        examples = "; ".join(f"{rel}: {reason}" for rel, reason in plan.skipped[:3])
        return (f"{where}: dataset {name!r} has no usable images: {plan.skipped_cause()} (e.g. {examples}). "
                f"Fix: {', '.join(plan.skipped_fixes())}")
    report = size_report(ds, plan, batch, accum, world)
    square = bool(_opt(ds, "crop")) and _opt(ds, "cropAspect") == "square"
    message = report.message(plan.skipped_cause(), plan.skipped_fixes() + report.fixes(square_set=square))
    return f"{where}: {message}" if message else None


def path_problem(where: str, path: Path) -> str | None:
    """Why a local dataset's `path` is not a folder to plan, or None: `validate`, the cache stage
    and `--smoke` all say it this way. `where` is e.g. "spec.datasets[0]"."""
    path = Path(path)
    if not path.exists():
        return _missing(f"{where}.path", path)
    if not path.is_dir():
        return f"{where}.path: {path} is a file, not a directory of images"
    return None


def no_images(where: str, root: Path) -> str:
    return f"{where}: no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}"


def local_datasets(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], Path]]:
    """(field path, entry, folder) of each enabled `type: local` dataset with a path."""
    for i, ds in enumerate(spec.get("datasets") or []):
        if not (_opt(ds, "disabled") or _opt(ds, "type") != "local" or not ds.get("path")):
            yield f"spec.datasets[{i}]", ds, Path(ds["path"])


def folder_problems(spec: dict[str, Any]) -> list[str]:
    """What `run` refuses about its local datasets before it writes anything (defaulted spec
    dict): a path that is not a folder, or a folder with no image file in it. Cheap: no file is
    read, and the walk ends at the first image; the cache stage plans (and checks) the rest."""
    return [problem for where, _, root in local_datasets(spec)
            if (problem := path_problem(where, root) or (None if has_images(root) else no_images(where, root)))]


def trained_buckets(plan: DatasetPlan, report: BucketReport) -> tuple[dict[str, int], dict[str, int]]:
    """(images per bucket that will be trained, images per bucket that are dropped): a bucket
    that cannot fill one batch (report.dropped, repeats counted) is never trained. The counts
    are the plan's images, each once."""
    counts = plan.bucket_counts()
    dropped = {b: n for b, n in counts.items() if b in report.dropped}
    return {b: n for b, n in counts.items() if b not in dropped}, dropped


def _on_data_volume(spec: dict[str, Any], path: Path) -> bool:
    """`path` lies under the data volume's mount path, so it exists only inside the pod."""
    return on_pod_volume(spec, path, ("data",))


def _missing(where: str, path: Path) -> str:
    if path.is_absolute():
        return f"{where}: {path} does not exist; create it and put the images there, or point path at your images"
    return (f"{where}: {path} does not exist (relative paths resolve from the working directory, "
            f"{Path.cwd()}); run from the folder the path is relative to, or make it absolute")


def _by_fullness(counts: dict[str, int]) -> str:
    return ", ".join(f"{b} {n}" for b, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def dropped_summary(dropped: dict[str, int], per_batch: int) -> str | None:
    """The images in buckets too small for one batch, e.g. "2 in buckets too small for one batch
    of 2 are dropped (128x192 1, 320x128 1)"; None when none are."""
    if not dropped:
        return None
    total, buckets = sum(dropped.values()), "a bucket" if len(dropped) == 1 else "buckets"
    verb = "is" if total == 1 else "are"
    return f"{total} in {buckets} too small for one batch of {per_batch} {verb} dropped ({_by_fullness(dropped)})"


def bucket_summary(where: str, name: str, counts: dict[str, int], skipped: str | None = None) -> str:
    """One line on a local dataset that passed: the images that will be trained per aspect
    bucket, the fullest first, then `skipped` (what is not trained, and why), e.g.
    `spec.datasets[0] (photos): 17 usable images: 128x128 10, 192x128 7; 1 in a bucket too small
    for one batch of 2 is dropped (320x128 1)`."""
    total = sum(counts.values())
    line = f"{where} ({name}): {total} usable image{'' if total == 1 else 's'}: {_by_fullness(counts)}"
    return f"{line}; {skipped}" if skipped else line


def dataset_problems(spec: dict[str, Any]) -> list[str]:
    """Problems with the local datasets that can be checked from here (see check_local_datasets)."""
    return check_local_datasets(spec)[0]


def check_local_datasets(spec: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Problems with the local datasets that can be checked from here (defaulted spec dict), and
    for each local dataset without a problem its bucket_summary line: (problems, summaries).

    For each enabled `type: local` dataset whose path is a directory: scan, caption, filter
    and bucket it, then check one optimizer step can be filled
    (batchSize x gradientAccumulationSteps x gpusPerNode*nodes images). A path that does not
    exist, or is a file, is a problem; except a path under the mount path of
    spec.kubernetes.volumes.data, which exists only inside the pod.
    A whole document ({"apiVersion", ..., "spec": {...}}) is accepted too and its spec used."""
    if "datasets" not in spec and isinstance(spec.get("spec"), dict):
        spec = spec["spec"]
    problems: list[str] = []
    summaries: list[str] = []
    training = spec.get("training", {}) or {}
    hardware = spec.get("hardware", {}) or {}
    batch = int(training.get("batchSize", 1))
    accum = int(training.get("gradientAccumulationSteps", 1))
    world = int(hardware.get("gpusPerNode", 1)) * int(hardware.get("nodes", 1))
    seed = int(training.get("seed", 42))
    for where, ds, path in local_datasets(spec):
        if not path.exists() and _on_data_volume(spec, path):
            continue
        if problem := path_problem(where, path):
            problems.append(problem)
            continue
        try:
            plan = plan_dataset(ds, path, seed)
        except Exception as e:  # DatasetError and friends: report, do not crash validate
            problems.append(f"{where}: {path}: {e}")
            continue
        if problem := plan_problem(where, ds, plan, batch, accum, world):
            problems.append(problem)
            continue
        name = str(ds.get("name", where))
        report = size_report(ds, plan, batch, accum, world)
        usable, dropped = trained_buckets(plan, report)
        notes = "; ".join(n for n in (dropped_summary(dropped, report.per_batch),
                                      plan.skipped_summary() if plan.skipped else None,
                                      plan.enlarged_summary()) if n)
        summaries.append(bucket_summary(where, name, usable, notes or None))
    return problems, summaries
