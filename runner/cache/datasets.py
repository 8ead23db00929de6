"""The cache stage's datasets: each one's folder (samples written, a Hub repo downloaded),
planned with content digests before any model loads, and checked to fill one optimizer step,
again after images that failed to decode are dropped."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.data import DatasetError
from runner.launch.context import RunContext
from runner.spec.plan import enabled_datasets

if TYPE_CHECKING:
    from runner.cache.stage import CacheReport


def dataset_root(ctx: RunContext, ds: dict[str, Any]) -> Path:
    """Local folder of a dataset's images, materialising samples or downloading Hub repos."""
    if ds["type"] == "samples":
        from runner.data.samples import materialize_samples

        return materialize_samples(ctx.paths.samples_dir())
    if ds["type"] == "huggingface":
        from runner.data.hub import download_dataset

        root = download_dataset(ds["repo"], ds.get("revision", "main"), ctx.paths.hub_dataset_dir(ds), ds.get("subfolder"))
        return root / ds["subfolder"] if ds.get("subfolder") else root
    from runner.data.preflight import path_problem

    root = Path(ds["path"])
    if problem := path_problem(_where(ctx, ds), root):  # validate's own message
        raise DatasetError(problem)
    return root


def _where(ctx: RunContext, ds: dict[str, Any]) -> str:
    """The dataset's place in the spec, e.g. "spec.datasets[0]", as validate names it."""
    return f"spec.datasets[{[d['name'] for d in ctx.spec_dict['datasets']].index(ds['name'])}]"


def plan_datasets(ctx: RunContext, quiet: bool = False) -> list[tuple[dict[str, Any], Any]]:
    """Plan every enabled dataset and check sizes, all before any model loads. `quiet` for
    cache workers: the process that launched them has already listed skipped images."""
    from runner.data.discovery import DigestMemo
    from runner.data.preflight import plan_dataset

    spec = ctx.spec_dict
    memo = DigestMemo(ctx.paths.digests)
    plans = []
    for ds in enabled_datasets(spec):
        root = dataset_root(ctx, ds)
        plan = plan_dataset(ds, root, seed=spec["training"]["seed"], digest=memo)
        if plan.skipped and not quiet:
            ctx.log(f"dataset {ds['name']}: skipped {len(plan.skipped)} image(s):")
            for rel, reason in plan.skipped:
                ctx.log(f"  {rel}: {reason}")
        plans.append((ds, plan))
    memo.save()
    check_sizes(ctx, plans)
    return plans


def drop_broken(ctx: RunContext, plans, broken, report: CacheReport):
    """Remove images that failed to decode, report them, and re-check dataset sizes."""
    if not broken:
        return plans
    bad = {id(item): reason for item, reason in broken}
    out = []
    for ds, plan in plans:
        gone = [(it.info.rel, bad[id(it)]) for it in plan.items if id(it) in bad]
        if gone:
            ctx.log(f"dataset {ds['name']}: skipped {len(gone)} image(s) that do not decode:")
            for rel, reason in gone:
                ctx.log(f"  {rel}: {reason}")
            report.skipped += [(ds["name"], rel, reason) for rel, reason in gone]
            plan = dataclasses.replace(plan, items=tuple(it for it in plan.items if id(it) not in bad),
                                       skipped=tuple(plan.skipped) + tuple(gone))
        out.append((ds, plan))
    check_sizes(ctx, out)
    return out


def check_sizes(ctx: RunContext, plans) -> None:
    """Stop when a dataset cannot fill one optimizer step, with validate's message (the skipped
    images named as the cause, images that failed to decode here included)."""
    from runner.data.preflight import plan_problem
    from runner.spec.semantics import world_size

    training = ctx.spec_dict["training"]
    # The spec's world size, not this process's: the cache runs once for all trainers.
    problems = [plan_problem(_where(ctx, ds), ds, plan, training["batchSize"], training["gradientAccumulationSteps"],
                             world_size(ctx.spec_dict)) for ds, plan in plans]
    if any(problems):
        raise DatasetError("\n".join(p for p in problems if p))
