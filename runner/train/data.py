"""Batches from the cache: each batch from one aspect bucket, deterministic per (seed, epoch),
resumable at any batch, with caption dropout decided by the sampler (so it resumes too)."""
from __future__ import annotations

import functools
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import torch
from safetensors.torch import load_file

from runner.cache.keys import entry_path
from runner.data import DatasetError
from runner.spec.plan import enabled_datasets

if TYPE_CHECKING:
    from runner.models.family import ModelFamily

PadText = Callable[..., tuple[torch.Tensor, torch.Tensor]]  # ModelFamily.pad_text


class CacheMismatch(Exception):
    """The cache on disk was written for a different spec."""


def load_manifest(manifest_path: Path, expected_fingerprint: str) -> dict[str, Any]:
    """The cache manifest at `manifest_path` (named by the fingerprint, runner/spec/plan.py), which
    must have been written for `expected_fingerprint`."""
    if not manifest_path.is_file():
        # Another cache configuration's manifest may sit beside it: never this spec's to read.
        raise CacheMismatch(f"{manifest_path}: no cache manifest; run the cache stage first "
                            "(trainingjob run FILE --stage cache, or --stage all): no cache was built for this "
                            "spec's model/dataset settings yet, and only what is missing is encoded")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("cache_fingerprint") != expected_fingerprint:  # copied or renamed by hand
        raise CacheMismatch(f"{manifest_path}: the cache was built for different model/dataset/validation settings; "
                            "run the cache stage again (only what changed is re-encoded)")
    return manifest


def read_items(manifest: dict[str, Any]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Each dataset entry of the manifest with its cached items (each dataset manifest read once)."""
    return [(ds, json.loads(Path(ds["manifest"]).read_text())["items"]) for ds in manifest["datasets"]]


def source_changes(datasets: list[tuple[dict[str, Any], list[dict[str, Any]]]],
                   caption_strategies: Mapping[str, str] | None = None) -> list[str]:
    """The cached images whose files are gone or were rewritten (size or mtime) since the cache
    stage, and in datasets whose `caption_strategies` (by name) is `textfile` those whose caption
    file now says something else, as `dataset/rel (how)`. The train stage trains on the cache, so
    these train as they were cached: worth a warning, not a stop. Items of older manifests carry
    no size: unchecked."""
    strategies = caption_strategies or {}
    return [f"{ds['name']}/{it['rel']} ({how})" for ds, items in datasets for it in items
            if "size" in it and (how := _item_change(it, strategies.get(ds["name"]) == "textfile"))]


def _item_change(item: dict[str, Any], textfile: bool) -> str | None:
    """How one cached item's source differs from what was cached, or None."""
    from runner.data.captions import CaptionError, caption_for

    try:
        st = os.stat(item["path"])
    except OSError:
        return "gone"
    if st.st_size != item["size"] or st.st_mtime_ns != item["mtime_ns"]:
        return "rewritten"
    if not textfile:
        return None
    try:
        caption = caption_for(item["path"], None, "textfile")
    except CaptionError:
        return "caption unusable"
    return "caption changed" if caption != item["caption"] else None


@dataclass(frozen=True)
class Sample:
    latent_path: str | None
    image_path: str
    plan: dict[str, Any]
    text_key: str
    bucket: str


def text_entry(manifest: dict[str, Any], max_tokens: int, text: str) -> Path:
    """The cached T5 embedding of `text` under the encoder the cache was built with."""
    from runner.cache.keys import EncoderIdentity, text_key

    path = entry_path(Path(manifest["text_dir"]), text_key(EncoderIdentity(**manifest["text_identity"]), max_tokens, text))
    if not path.is_file():
        raise CacheMismatch(f"{text!r} has no cached text embedding; run the cache stage again "
                            "(it encodes only the new prompts)")
    return path


def missing_entries(samples: list[Sample], text_dir: Path, empty_key: str) -> list[str]:
    """Cache files the manifest promises but the disk lacks (deleted, or a cache stage that
    did not finish): found before training rather than as a crash hours in."""
    wanted = {s.latent_path for s in samples if s.latent_path} | {str(entry_path(text_dir, k)) for k in
                                                                  {s.text_key for s in samples} | {empty_key}}
    return sorted(p for p in wanted if not Path(p).is_file())


def load_samples(datasets: list[tuple[dict[str, Any], list[dict[str, Any]]]], repeats: dict[str, int]) -> list[Sample]:
    """Every sample of an epoch. `repeats` (dataset name -> extra passes) comes from the live
    spec, not the manifest: it changes no cached bytes, so it can change without re-caching."""
    samples = []
    for ds, items in datasets:
        vae_dir = Path(ds["vae_dir"])
        one_pass = [Sample(str(entry_path(vae_dir, it["latent_key"])) if it["latent_key"] else None,
                           it["path"], it["plan"], it["text_key"], it["bucket"]) for it in items]
        samples += one_pass * (1 + repeats.get(ds["name"], 0))
    return samples


class CachedDataset(torch.utils.data.Dataset):
    """Index by (sample index, drop caption?). `to_tensor` turns a cropped image into the
    family's VAE input (vaeCacheDisable: the latents are encoded per batch)."""

    def __init__(self, samples: list[Sample], text_dir: Path, empty_key: str, to_tensor: Callable[[Any], torch.Tensor]):
        self.samples, self.text_dir, self.empty_key, self.to_tensor = samples, text_dir, empty_key, to_tensor

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: tuple[int, bool]) -> dict[str, Any]:
        i, drop = index
        s = self.samples[i]
        embed = load_file(str(entry_path(self.text_dir, self.empty_key if drop else s.text_key)))["prompt_embeds"]
        if s.latent_path is not None:
            return {"latent": load_file(s.latent_path)["latent"], "embed": embed}
        from runner.data.transforms import CropPlan, crop_planned_file

        plan = CropPlan(**{k: tuple(v) if isinstance(v, list) else v for k, v in s.plan.items()})
        # A file deleted, corrupted or replaced since the cache stage: DatasetError naming it.
        return {"pixels": self.to_tensor(crop_planned_file(s.image_path, plan)), "embed": embed}


def _from_worker(e: DatasetError) -> DatasetError:
    """A DatasetError raised in a DataLoader worker comes back rebuilt around the worker's
    whole traceback ("Caught DatasetError in DataLoader worker process 0 ... Original
    Traceback ..."): keep only the user's message, its last line."""
    text = str(e)
    if "Original Traceback" not in text:
        return e
    last = text.rstrip().splitlines()[-1]
    return DatasetError(last.split(": ", 1)[1] if last.startswith(("runner.", "DatasetError")) and ": " in last else last)


# Text lengths rounded up to a multiple of 64: a handful of shapes instead of one per batch, so
# compiled blocks (spec.training.compile) do not recompile for every new caption length. The
# mask hides the padding, so the loss is the same.
TEXT_PAD_MULTIPLE = 64


def collate(items: list[dict[str, Any]], pad_text: PadText) -> dict[str, torch.Tensor]:
    """A batch: latents (or pixels) stacked, text embeddings padded by the family's `pad_text`."""
    embeds, mask = pad_text([it["embed"] for it in items], multiple=TEXT_PAD_MULTIPLE)
    key = "latent" if "latent" in items[0] else "pixels"
    return {key: torch.stack([it[key] for it in items]), "embeds": embeds, "mask": mask}


class EpochBatches:
    """The batches one rank sees in one epoch, optionally starting part-way through."""

    def __init__(self, samples: list[Sample], batch_size: int, world_size: int, rank: int, seed: int,
                 epoch: int, dropout: float, start: int = 0):
        from runner.data.buckets import bucket_batches

        by_bucket: dict[str, list[int]] = {}
        for i, s in enumerate(samples):
            by_bucket.setdefault(s.bucket, []).append(i)
        batches = bucket_batches(by_bucket, batch_size, world_size, rank, seed, epoch)
        rng = random.Random(f"{seed}:{epoch}:{rank}:dropout")
        self.batches = [[(i, rng.random() < dropout) for i in b] for b in batches][start:]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class TrainingData:
    def __init__(self, manifest: dict[str, Any], family: ModelFamily, *, repeats: dict[str, int], batch_size: int,
                 world_size: int, rank: int, seed: int, dropout: float, workers: int, pin_memory: bool):
        self.datasets = read_items(manifest)
        self.samples = load_samples(self.datasets, repeats)
        missing = missing_entries(self.samples, Path(manifest["text_dir"]), manifest["empty_caption"])
        if missing:
            raise CacheMismatch(f"the cache is incomplete: {len(missing)} entr{'y is' if len(missing) == 1 else 'ies are'} "
                                f"missing (e.g. {missing[0]}); run the cache stage again, it encodes only what is missing")
        self.dataset = CachedDataset(self.samples, Path(manifest["text_dir"]), manifest["empty_caption"],
                                     family.image_to_tensor)
        self.collate = functools.partial(collate, pad_text=family.pad_text)
        self.kw = dict(batch_size=batch_size, world_size=world_size, rank=rank, seed=seed, dropout=dropout)
        self.workers, self.pin_memory = workers, pin_memory
        self.batches_per_epoch = len(EpochBatches(self.samples, epoch=0, **self.kw))
        self.on_the_fly = any(s.latent_path is None for s in self.samples)

    def stream(self, epoch: int, start: int) -> Iterator[tuple[int, int, dict[str, torch.Tensor]]]:
        """Yield (epoch, index of the next batch in that epoch, batch) forever, from a position."""
        while True:
            sampler = EpochBatches(self.samples, epoch=epoch, start=start, **self.kw)
            # Its own generator: a DataLoader iterator otherwise draws its (worker) base seed from
            # the global torch RNG, which the training noise uses and a checkpoint restores. A
            # resumed run creates an iterator mid-epoch where an uninterrupted one did not, so
            # that draw alone made resumed runs diverge.
            own = random.Random(f"{self.kw['seed']}:{epoch}:{self.kw['rank']}:loader").getrandbits(63)
            loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=sampler, collate_fn=self.collate,
                                                 num_workers=self.workers, pin_memory=self.pin_memory,
                                                 generator=torch.Generator().manual_seed(own))
            try:
                for i, batch in enumerate(loader, start=start + 1):
                    yield epoch, i, batch
            except DatasetError as e:
                raise _from_worker(e) from None
            epoch, start = epoch + 1, 0


def training_data(spec: Mapping[str, Any], manifest: dict[str, Any], *, rank: int, world_size: int,
                  pin_memory: bool = False) -> TrainingData:
    """This rank's batches for the spec (the train stage, and the check whether a job is finished)."""
    training = spec["training"]
    from runner.models.registry import family_of

    return TrainingData(manifest, family_of(spec), repeats={ds["name"]: ds["repeats"] for ds in enabled_datasets(spec)},
                        batch_size=training["batchSize"], world_size=world_size, rank=rank, seed=training["seed"],
                        dropout=training["captionDropout"], workers=training["dataloaderWorkers"],
                        pin_memory=pin_memory)
