"""Cache stage: text embeddings and VAE latents to disk, keyed by everything that changes them.

Layout: one safetensors file per entry (`<dir>/<key[:2]>/<key>.safetensors`). Per-entry files,
not shards, because invalidation is per entry: a changed crop re-encodes one image, a new
caption one embedding, and an interrupted run loses at most the entries being written
(each is written to a temp name and renamed). Captions are deduplicated by key, so 10k
images with 300 distinct captions cost 300 T5 passes.
"""
from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from runner.cache import keys as cachekeys
from runner.cache.datasets import drop_broken, plan_datasets
from runner.cache.entries import bucket_batches, chunks, entry_metadata, write_entry
from runner.cache.keys import EncoderIdentity, entry_path
from runner.data.workers import decode_workers
from runner.files import atomic_write_json, flush_to_disk, sweep_stale_temps
from runner.launch.context import RunContext
from runner.observe.progress import Laps
from runner.spec.plan import cache_fingerprint

MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class Shard:
    """This process encodes the entries whose key falls in its shard. With several GPUs each
    worker takes one shard; a final unsharded pass (which finds everything cached) then
    re-checks the few images that failed to decode and writes the manifest."""

    index: int = 0
    count: int = 1

    def owns(self, key: str) -> bool:
        return self.count == 1 or int(key[:8], 16) % self.count == self.index

    @property
    def is_whole(self) -> bool:
        return self.count == 1

    def log(self, ctx: RunContext, message: str) -> None:
        """A line from every shard's worker (ctx.log speaks for rank 0 only), naming the shard."""
        if self.is_whole:
            ctx.log(message)
        else:
            print(f"[{ctx.job.name}] cache shard {self.index + 1}/{self.count} {message}", flush=True)

    def others(self, n: int) -> str:
        """The log's note on the entries that other shards encode ("" for the whole range)."""
        return "" if self.is_whole else f", {n} for the other {self.count - 1} shard(s)"


@dataclass
class CacheReport:
    text_total: int = 0
    text_encoded: int = 0
    latents_total: int = 0
    latents_encoded: int = 0
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # dataset, file, reason
    truncated: list[tuple[str, str, str]] = field(default_factory=list)  # dataset, file, how (kept, not skipped)

    def summary(self) -> str:
        return (f"text embeds: {self.text_total} ({self.text_encoded} encoded, {self.text_total - self.text_encoded} reused); "
                f"latents: {self.latents_total} ({self.latents_encoded} encoded, {self.latents_total - self.latents_encoded} reused); "
                f"skipped images: {len(self.skipped)}" + (f"; truncated captions: {len(self.truncated)}" if self.truncated else ""))


# ----------------------------------------------------------------------------- datasets

# ----------------------------------------------------------------------------- encoders

def encoder_identities(ctx: RunContext, model_dir: Path) -> tuple[EncoderIdentity, EncoderIdentity]:
    from runner.data.discovery import DigestMemo

    model, family = ctx.spec.model, ctx.family.traits
    memo = DigestMemo(ctx.paths.digests)  # a local model folder's files are hashed once, then remembered
    fingerprint = {name: cachekeys.component_fingerprint(model_dir / name, memo.digest)
                   for name in (*family.text_components, family.vae_component)}
    memo.save()
    text_fp = "".join(fingerprint[name] for name in family.text_components)
    text = EncoderIdentity(model.pretrained, model.revision, text_fp, model.textEncoderDtype)
    vae = EncoderIdentity(model.pretrained, model.revision, fingerprint[family.vae_component], model.vaeDtype)
    return text, vae


def cache_text(ctx: RunContext, model_dir: Path, captions: Sequence[str], identity: EncoderIdentity,
               report: CacheReport, writer: ThreadPoolExecutor, shard: Shard = Shard()) -> tuple[dict[str, str], dict[str, int]]:
    """Encode the missing captions. Returns each caption's key and, where known, its length in
    tokens before the encoder's truncation (stored with the entry, so a rerun knows it too)."""
    from runner.observe.progress import Progress

    family = ctx.family
    max_tokens = ctx.spec.model.textEncoderMaxLength
    keys = {c: cachekeys.text_key(identity, max_tokens, c) for c in captions}
    tokens: dict[str, int] = {}
    missing = []
    for caption, key in keys.items():
        meta = entry_metadata(entry_path(ctx.paths.text_dir, key)) if shard.owns(key) else {}
        if meta is None:
            missing.append(caption)
        elif str(meta.get("tokens", "")).isdigit():
            tokens[caption] = int(meta["tokens"])
    missing.sort(key=len)  # similar lengths share a batch: T5 pads each batch to its longest caption
    owned = sum(map(shard.owns, keys.values()))  # a shard's report counts its own entries only
    report.text_total, report.text_encoded = owned, len(missing)
    ctx.metrics.cache_planned("text", owned, len(missing))
    if missing:
        ctx.log(f"encoding {len(missing)} caption(s) with the text encoder ({owned - len(missing)} cached"
                f"{shard.others(len(keys) - owned)})")
        laps = Laps()
        text_encoder = family.load_text_encoder(model_dir, ctx.spec.model.textEncoderDtype, ctx.device)
        laps.lap("loaded")
        bar = Progress(len(missing), "text embeds", "caption")
        futures = []
        for batch in chunks(missing, ctx.spec.textEmbeds.writeBatchSize):
            # Untruncated lengths, only to report captions the encoder cuts.
            counts = family.token_counts(text_encoder, batch)
            for caption, n, embed in zip(batch, counts, family.encode_text(text_encoder, batch, max_tokens)):
                tokens[caption] = n
                futures.append(writer.submit(write_entry, entry_path(ctx.paths.text_dir, keys[caption]),
                                             {"prompt_embeds": embed}, {"caption": caption[:2000], "tokens": str(n)}))
                futures[-1].add_done_callback(ctx.metrics.entry_written)
            bar.update(len(batch))
            ctx.metrics.cache_done("text", len(batch))
        laps.lap("encoded")
        for f in futures:
            f.result()
        laps.lap("written")
        bar.close()
        del text_encoder
        _free(ctx.device)
        laps.lap("freed")
        shard.log(ctx, f"text encoder: {len(missing)} caption(s): {laps}")
    return keys, tokens


def cache_latents(ctx: RunContext, model_dir: Path, plans, identity: EncoderIdentity, report: CacheReport,
                  writer: ThreadPoolExecutor, shard: Shard = Shard()) -> tuple[dict[tuple[str, str], str], list[tuple[Any, str]]]:
    """Encode missing latents, grouped by bucket so each VAE batch has one shape."""
    from runner.cache.pixels import HostCopy, pixel_batches
    from runner.models.pipeline import torch_dtype
    from runner.observe.progress import Progress

    family = ctx.family
    keys: dict[tuple[str, str], str] = {}
    todo: list[tuple[Path, Any, str]] = []
    for ds, plan in plans:
        vae_dir = ctx.paths.vae_dir(ds)
        for item in plan.items:
            key = cachekeys.latent_key(identity, item.digest, crop_plan_dict(item.plan))
            keys[(ds["name"], item.info.rel)] = key
            if shard.owns(key) and entry_metadata(entry_path(vae_dir, key)) is None:
                todo.append((vae_dir, item, key))
    owned = sum(map(shard.owns, keys.values()))
    report.latents_total, report.latents_encoded = owned, len(todo)
    ctx.metrics.cache_planned("latent", owned, len(todo))
    if not todo:
        return keys, []
    ctx.log(f"encoding {len(todo)} image(s) with the VAE ({owned - len(todo)} cached{shard.others(len(keys) - owned)})")
    laps = Laps()
    vae = family.load_vae(model_dir, ctx.spec.model.vaeDtype, ctx.device, compile=ctx.spec_dict["model"]["vaeCompile"])
    laps.lap("loaded")
    bar = Progress(len(todo), "latents", "image")
    futures = []

    failed: list[tuple[Any, str]] = []
    dtype = torch_dtype(ctx.spec.model.vaeDtype)
    batches = bucket_batches(todo, lambda entry: entry[1].bucket, ctx.spec_dict["model"]["vaeBatchSize"])
    in_flight = None  # the previous batch's latents, on their way to host memory

    def write(done) -> None:
        good, copy = done
        for (vae_dir, item, key), latent in zip(good, copy.wait()):
            # clone: the entry's own storage, so a queued write does not keep the batch's pinned buffer alive
            futures.append(writer.submit(write_entry, entry_path(vae_dir, key), {"latent": latent.clone()},
                                         {"source": item.info.rel}))
            futures[-1].add_done_callback(ctx.metrics.entry_written)
        # counted here, as the entries go to the writer, not as their images were decoded: the
        # batch is written only after the next one is encoded (its copy to the host overlaps
        # that), and a count taken at decoding ran a batch or two ahead of the written bytes
        ctx.metrics.cache_done("latent", len(good))

    images = [[item for _, item, _ in batch] for batch in batches]
    for i, pixels, bad in pixel_batches(images, family.image_to_tensor, workers=decode_workers(),
                                        pin=str(ctx.device).startswith("cuda")):
        batch = batches[i]
        failed += [(batch[j][1], reason) for j, reason in bad.items()]
        good = [e for j, e in enumerate(batch) if j not in bad]
        bar.update(len(batch))
        if bad:  # found undecodable: done now (the others when they are written)
            ctx.metrics.cache_done("latent", len(bad))
        if not good:
            continue
        # Noise seeded by each entry's key: an image's cached latent is the same whichever
        # other images share its batch (to float rounding: a batch of one may take another
        # convolution path).
        seeds = [int(key[:8], 16) for _, _, key in good]
        copy = HostCopy(family.encode_images(vae, pixels, seeds), dtype)
        if in_flight is not None:
            write(in_flight)
        in_flight = (good, copy)
    if in_flight is not None:
        write(in_flight)
    laps.lap("encoded (compile included)")
    for f in futures:
        f.result()
    laps.lap("written")
    bar.close()
    del vae
    _free(ctx.device)
    laps.lap("freed")
    shard.log(ctx, f"VAE: {len(todo)} image(s): {laps}")
    report.latents_encoded -= len(failed)
    report.latents_total -= len(failed)
    return keys, failed


def crop_plan_dict(plan) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(plan).items()}


def _free(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- stage

def sweep_cache_dirs(ctx: RunContext, plans) -> None:
    """Remove the temp files a killed run left in the cache folders (a SIGKILL mid-write leaves
    its `.tmp`; entries themselves are only ever renamed into place whole). Only the whole
    pass does this: no writer of this job is running then, on this machine."""
    roots: list[Path] = []  # each folder once, even when one lies inside another
    for folder in sorted({ctx.paths.cache_dir.resolve(), ctx.paths.text_dir.resolve(),
                          *(ctx.paths.vae_dir(ds).resolve() for ds, _ in plans)}, key=lambda p: len(p.parts)):
        roots += [] if any(folder.is_relative_to(r) for r in roots) else [folder]
    removed = [p for root in roots for p in sweep_stale_temps(root)]
    if removed:
        ctx.log(f"removed {len(removed)} temp file(s) left by an interrupted run, e.g. {removed[0]}")


def report_truncated(ctx: RunContext, plans, tokens: dict[str, int], report: CacheReport) -> dict[str, list]:
    """Captions longer than textEncoderMaxLength are kept, truncated by the tokenizer (as
    PixArt was trained); each is logged and listed in its dataset manifest."""
    limit = ctx.spec.model.textEncoderMaxLength
    out: dict[str, list] = {}
    for ds, plan in plans:
        long = [(it.info.rel, f"caption is {tokens[it.caption]} tokens; the text encoder keeps the first {limit} "
                              "(spec.model.textEncoderMaxLength)")
                for it in plan.items if tokens.get(it.caption, 0) > limit]
        if long:
            ctx.log(f"dataset {ds['name']}: {len(long)} caption(s) truncated to {limit} tokens:")
            for rel, how in long[:10]:
                ctx.log(f"  {rel}: {how}")
            if len(long) > 10:
                where = ctx.paths.dataset_manifest(cache_fingerprint(ctx.spec_dict), ds)
                ctx.log(f"  ... and {len(long) - 10} more (listed under 'truncated' in {where})")
            report.truncated += [(ds["name"], rel, how) for rel, how in long]
            out[ds["name"]] = [list(t) for t in long]
    return out


def run_cache(ctx: RunContext, shard: Shard = Shard(), plans=None) -> CacheReport:
    """Encode what is missing; with the whole range (the default) also write the manifests.
    `plans` from an earlier plan_datasets() of this process are reused, not recomputed."""
    spec = ctx.spec_dict
    report = CacheReport()
    plans = plan_datasets(ctx, quiet=not shard.is_whole) if plans is None else plans
    for ds, plan in plans:
        report.skipped += [(ds["name"], rel, reason) for rel, reason in plan.skipped]
    model_dir = ctx.family.resolve(spec["model"]["pretrained"], spec["model"]["revision"], ctx.paths.cache_dir)
    text_id, vae_id = encoder_identities(ctx, model_dir)

    validation = spec["validation"]
    captions = sorted({item.caption for _, plan in plans for item in plan.items}
                      | set(validation["prompts"]) | {validation["negativePrompt"], ""})
    with ThreadPoolExecutor(max_workers=2) as writer:
        if not shard.is_whole:
            if not spec["vaeCacheDisable"]:
                cache_latents(ctx, model_dir, plans, vae_id, report, writer, shard)
            cache_text(ctx, model_dir, captions, text_id, report, writer, shard)
            flush_to_disk()  # before the launching process's final pass writes the manifests
            shard.log(ctx, f"done: {report.summary()}")
            return report
        sweep_cache_dirs(ctx, plans)
        if spec["vaeCacheDisable"]:
            from runner.cache.pixels import verify_images

            items = [item for _, plan in plans for item in plan.items]
            batches = bucket_batches(items, lambda item: item.bucket, ctx.spec_dict["model"]["vaeBatchSize"])
            latent_keys, broken = {}, verify_images(batches, ctx.family.image_to_tensor, decode_workers())
        else:
            latent_keys, broken = cache_latents(ctx, model_dir, plans, vae_id, report, writer)
        plans = drop_broken(ctx, plans, broken, report)
        text_keys, tokens = cache_text(ctx, model_dir, captions, text_id, report, writer)
    flush_to_disk()  # the entries reach the disk before a manifest names them
    truncated = report_truncated(ctx, plans, tokens, report)

    fingerprint = cache_fingerprint(spec)
    datasets = []
    for ds, plan in plans:
        manifest_path = ctx.paths.dataset_manifest(fingerprint, ds)
        items = [{
            "rel": item.info.rel,
            "path": str(Path(item.info.path).resolve()),
            "size": item.info.size_bytes,  # with mtime_ns: the train stage tells whether the file changed since
            "mtime_ns": item.info.mtime_ns,
            "caption": item.caption,
            "text_key": text_keys[item.caption],
            "latent_key": latent_keys.get((ds["name"], item.info.rel)),
            "bucket": item.bucket,
            "plan": crop_plan_dict(item.plan),
        } for item in plan.items]
        atomic_write_json(manifest_path, {"format": MANIFEST_FORMAT, "dataset": ds["name"], "items": items,
                                          "skipped": [list(s) for s in plan.skipped],
                                          "truncated": truncated.get(ds["name"], [])})
        datasets.append({"name": ds["name"], "manifest": str(manifest_path), "vae_dir": str(ctx.paths.vae_dir(ds)),
                         "items": len(items)})
    atomic_write_json(ctx.paths.manifest(fingerprint), {
        "format": MANIFEST_FORMAT,
        "cache_fingerprint": fingerprint,
        "model_dir": str(Path(model_dir).resolve()),
        "text_dir": str(ctx.paths.text_dir),
        "text_identity": dataclasses.asdict(text_id),
        "vae_identity": dataclasses.asdict(vae_id),
        "empty_caption": text_keys[""],
        "datasets": datasets,
        "report": dataclasses.asdict(report),
    })
    ctx.log(f"cache ready: {report.summary()}")
    ctx.log(f"cache manifest: {ctx.paths.manifest(fingerprint)}")
    return report
