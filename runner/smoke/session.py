"""`trainingjob run FILE --smoke`: the user's own spec, shrunk, end to end on the CPU.

The order is the point: everything that needs no model (the spec, token variables, PVC
names, the Hub, every dataset against the *real* batch) is checked first and all at once, so
a broken spec fails in seconds without loading torch. Only then is a sample of each dataset
copied into the smoke folder, the spec shrunk (runner.smoke.shrink) and the ordinary cache and
train stages run on it. Each part is timed against the budget.

Layout of the smoke folder (never the spec's own output or cache):
    <smoke-dir>/.trainingjob-smoke   marker: this folder is ours to clear
    <smoke-dir>/smoke-spec.yaml      the shrunk spec that ran
    <smoke-dir>/data/<dataset>/      the sampled images (and caption files)
    <smoke-dir>/cache/               cache stage, the builtin tiny model; kept between runs
    <smoke-dir>/output/              checkpoints, validation images, model/; cleared each run
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from runner.envvars import DEBUG_ENV
from runner.exitcodes import EXIT_INTERNAL, EXIT_INVALID, EXIT_OK
from runner.files import atomic_write_bytes
from runner.smoke import checks as checks_mod
from runner.smoke.report import FAILED, PASSED, SKIPPED, Check, junit_xml, passed, text_report
from runner.smoke.shrink import SUBSTITUTE_NAME, shrink, substitute_dataset
from runner.spec.semantics import dataset_dirs, written_dirs
from runner.spec.errors import SpecError
from runner.spec.load import job_from_document, load_spec
from runner.spec.node import TrainingJob

DEFAULT_IMAGES = 8
DEFAULT_BUDGET_S = 120.0
MARKER = ".trainingjob-smoke"


@dataclass(frozen=True)
class SmokeOptions:
    smoke_dir: str | None = None  # default .smoke/<metadata.name>
    images: int = DEFAULT_IMAGES  # per dataset
    budget_s: float = DEFAULT_BUDGET_S
    junit: str | None = None


@dataclass
class Session:
    """What one smoke run has found so far."""

    source: str
    checks: list[Check] = field(default_factory=list)
    timings: list[tuple[str, float]] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)  # for JUnit's system-out and the smoke spec's header
    notes: list[str] = field(default_factory=list)  # for the text report

    def add(self, *found: Check) -> None:
        self.checks += found

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings.append((name, time.perf_counter() - t0))

    @property
    def failed(self) -> bool:
        return not passed(self.checks)


def run_smoke(path: str, overrides: list[str], opts: SmokeOptions, env: Mapping[str, str] = os.environ) -> int:
    s = Session(source=path)
    t0 = time.perf_counter()
    code = _run(s, path, overrides, opts, env)
    untimed = time.perf_counter() - t0 - sum(seconds for _, seconds in s.timings)
    if untimed > 0.5:  # the budget is for the whole smoke, not only the named parts
        s.timings.append(("other", untimed))
    s.add(checks_mod.budget_check(s.timings, opts.budget_s))
    if code == EXIT_OK and s.failed:
        code = EXIT_INTERNAL  # only the budget can fail after the stages passed: a machine limit
    sys.stdout.write(text_report(f"smoke run of {path}:", s.checks, s.notes))
    if opts.junit:
        atomic_write_bytes(Path(opts.junit), junit_xml(f"trainingjob smoke {path}", s.checks,
                                                       s.notes + s.changes).encode("utf-8"))
    return code


def _run(s: Session, path: str, overrides: list[str], opts: SmokeOptions, env: Mapping[str, str]) -> int:
    with s.timed("spec"):
        try:
            job = load_spec(path, overrides)
        except SpecError as e:
            for line in e.warnings + e.problems:
                print(line, file=sys.stderr)
            s.add(Check("spec", "spec", FAILED, "; ".join(p.removeprefix(f"{path}: ") for p in e.problems)))
            return EXIT_INVALID
    for w in job.warnings:
        print(w, file=sys.stderr)
    s.add(Check("spec", "spec", PASSED, f"valid TrainingJob {job.name!r}"))
    doc = job.document.to_dict()
    spec = doc["spec"]
    workdir = Path(opts.smoke_dir or Path(".smoke") / job.name)

    problem = _smoke_dir_problem(workdir, spec)
    if problem:
        s.add(Check("spec", "smoke folder", FAILED, problem))
        return EXIT_INVALID
    with s.timed("checks"):
        s.add(*checks_mod.token_checks(spec, env), *checks_mod.package_checks(spec),
              *checks_mod.hub_checks(checks_mod.hub_repos(spec), env))
    _prepare(workdir)
    with s.timed("datasets"):
        chosen, left_out = _sample_datasets(s, doc, workdir, opts.images)
        if s.failed:
            return EXIT_INVALID
        samples = {sample.name: _copy_sample(sample, workdir) for sample in chosen}

    shrunk = shrink(doc, workdir=str(workdir), samples=samples, left_out=left_out)
    s.changes = [c.line() for c in shrunk.changes]
    spec_file = workdir / "smoke-spec.yaml"
    sizes = "sizes unchanged" if round(1 / shrunk.scale) == 1 else f"sizes scaled by 1/{round(1 / shrunk.scale)}"
    s.notes = [f"the smoke differs from the real run in {len(s.changes)} field(s), {sizes}; each change and why "
               f"is listed at the top of {spec_file}"]
    header = "".join(f"# {line}\n" for line in [f"Smoke run of {path}: what differs from it, and why."] + s.changes)
    atomic_write_bytes(spec_file, (header + yaml.safe_dump(shrunk.document, sort_keys=False)).encode("utf-8"))
    # The shrunk spec goes through the same validation as any spec: a failure here is our bug.
    smoke_job = job_from_document(shrunk.document, source=str(spec_file))
    return _run_stages(s, smoke_job)


def _smoke_dir_problem(workdir: Path, spec: Mapping[str, Any]) -> str | None:
    """The smoke folder must be its own: not the real output or cache, not inside or around them."""
    mine = workdir.resolve()
    for where, value in written_dirs(spec) + dataset_dirs(spec):
        other = Path(value).resolve()
        if mine == other or mine.is_relative_to(other) or other.is_relative_to(mine):
            return (f"--smoke-dir {workdir} overlaps {where} ({value}); a smoke never writes next to the real "
                    "run: pick another --smoke-dir")
    if workdir.is_dir() and any(workdir.iterdir()) and not (workdir / MARKER).exists():
        return f"--smoke-dir {workdir} exists and was not made by a smoke run; pick an empty or new folder"
    return None


def _prepare(workdir: Path) -> None:
    """Clear what the last smoke left (its sample and outputs); keep its cache (the tiny model)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by `trainingjob run --smoke`; data/ and output/ are cleared on each run\n")
    for sub in ("data", "output"):
        shutil.rmtree(workdir / sub, ignore_errors=True)


# ----------------------------------------------------------------------------- datasets

@dataclass(frozen=True)
class Sample:
    """The images of one dataset the smoke trains on."""

    name: str
    root: Path
    items: tuple[Any, ...]  # preflight PlannedItems
    caption_strategy: str


def _sample_datasets(s: Session, doc: dict[str, Any], workdir: Path, n: int) -> tuple[list[Sample], dict[str, str]]:
    """Plan every enabled dataset with the real spec (so the real batch is what is checked) and
    sample up to `n` images of each over its buckets. Returns the samples and, by dataset name,
    why a dataset is left out."""
    spec = doc["spec"]
    samples: list[Sample] = []
    left_out: dict[str, str] = {}
    for i, ds in enumerate(spec["datasets"]):
        if ds["disabled"]:
            continue
        reason = _left_out_reason(ds, spec)
        if reason:
            left_out[ds["name"]] = reason
            s.add(Check("datasets", f"dataset {ds['name']}", SKIPPED, f"spec.datasets[{i}]: {reason}"))
            continue
        sample = _sample_one(s, ds, f"spec.datasets[{i}]", spec, workdir, n)
        if sample:
            samples.append(sample)
    if not samples and not s.failed:
        sample = _sample_one(s, substitute_dataset(doc), SUBSTITUTE_NAME, spec, workdir, n,
                             stand_in_for=spec["datasets"][0]["name"])
        if sample:
            samples.append(sample)
    return samples, left_out


def _left_out_reason(ds: Mapping[str, Any], spec: Mapping[str, Any]) -> str | None:
    if ds["type"] == "huggingface":
        return (f"Hub dataset {ds.get('repo')!r} is not downloaded in a smoke run (its repo is checked instead); "
                "to smoke-run your images, --set its type=local and path=DIR with a few of them")
    if ds["type"] == "local":
        from runner.data.preflight import _on_data_volume  # validate's own rule, so the two agree

        path = Path(ds["path"])
        if not path.exists() and _on_data_volume(spec, path):
            return (f"{path} is on the data volume, so it exists only in the pod; "
                    "--set its path=DIR with a few of your images to smoke-run them")
    return None


def skipped_note(summary: str | None, stand_in_for: str | None = None) -> str:
    """The skipped images' part of a dataset check: the real run skips the same ones, unless the
    images are the stand-in photos, which the real run never reads."""
    if not summary:
        return ""
    return f"; {summary} ({'by its settings' if stand_in_for else 'the real run skips them too'})"


def dataset_detail(usable: int, buckets: int, sampled: str, skipped: str | None = None,
                   stand_in_for: str | None = None, too_few: str | None = None, dropped: str | None = None) -> str:
    """What a passed dataset check says: `usable` images the real run trains, in `buckets`
    buckets, and (`dropped`, preflight.dropped_summary) those in buckets too small for one of its
    batches. For the bundled photos standing in for a dataset a
    smoke cannot read, it says so: their counts show the settings work, not that the real
    dataset fills a batch; and a batch they are too few to fill (`too_few`, why) fails nothing,
    as it says nothing about the real dataset."""
    counts = f"{usable} usable image(s) in {buckets} bucket(s)"
    if stand_in_for:
        fill = (f"(too few to fill a batch of the real size, {too_few}, which says nothing about {stand_in_for})"
                if too_few else "fill a batch of the real size")
        head = (f"stand-in sample photos, not dataset {stand_in_for} (a smoke run does not read it), checked with "
                f"its settings: {counts} {fill}")
    else:
        head = f"{counts} fill the real batch"
    if dropped:
        head += f"; {dropped}"
    return f"{head}; sampled {sampled}{skipped_note(skipped, stand_in_for)}"


def _sample_one(s: Session, ds: dict[str, Any], where: str, spec: Mapping[str, Any], workdir: Path,
                n: int, stand_in_for: str | None = None) -> Sample | None:
    from runner.data import DatasetError
    from runner.data.buckets import stratified_sample
    from runner.data.preflight import dropped_summary, plan_dataset, plan_problem, size_report, trained_buckets
    from runner.spec.semantics import world_size

    label = f"dataset {ds['name']}"
    training = spec["training"]
    try:
        root = _dataset_root(ds, where, workdir)
        plan = plan_dataset(ds, root, seed=training["seed"])
    except DatasetError as e:
        s.add(Check("datasets", label, FAILED, str(e)))
        return None
    if stand_in_for:
        where = f"{where} (stand-in sample photos for dataset {stand_in_for})"
    batch = training["batchSize"] * training["gradientAccumulationSteps"] * world_size(spec)
    report = size_report(ds, plan, training["batchSize"], training["gradientAccumulationSteps"], world_size(spec))
    # validate's and the real run's message; too few stand-in photos for the real batch fail nothing
    problem = plan_problem(where, ds, plan, training["batchSize"], training["gradientAccumulationSteps"],
                           world_size(spec))
    if problem and (not plan.items or not stand_in_for):
        s.add(Check("datasets", label, FAILED, problem))
        return None
    usable, dropped = trained_buckets(plan, report)  # as validate counts them
    # Only images the real run trains: one in a bucket too small for the real batch is dropped
    # there, so the smoke (batch 1) must not train it either. Stand-in photos too few to fill
    # any real batch are all sampled: the real run never reads them.
    trained = [item for item in plan.items if item.bucket in usable] or list(plan.items)
    chosen = stratified_sample(trained, n, seed=training["seed"])
    counts = ", ".join(f"{b}: {k}" for b, k in Counter(item.bucket for item in chosen).items())
    s.add(Check("datasets", label, PASSED,
                dataset_detail(sum(usable.values()), len(usable), f"{len(chosen)} ({counts})",
                               plan.skipped_summary() if plan.skipped else None, stand_in_for,
                               too_few=f"{batch} images an optimizer step" if problem else None,
                               dropped=dropped_summary(dropped, report.per_batch))))
    return Sample(ds["name"], root, tuple(chosen), ds["captionStrategy"])


def _dataset_root(ds: Mapping[str, Any], where: str, workdir: Path) -> Path:
    """The folder to plan: the user's own, or the bundled photos written into the smoke cache."""
    from runner.data import DatasetError

    if ds["type"] == "samples":
        from runner.data.samples import materialize_samples

        try:
            return materialize_samples(workdir / "cache" / "samples")
        except DatasetError as e:
            raise DatasetError(f"{where}: {e}") from None
    from runner.data.preflight import path_problem

    root = Path(ds["path"])
    if problem := path_problem(where, root):  # validate's own message
        raise DatasetError(problem)
    return root


def _copy_sample(sample: Sample, workdir: Path) -> str:
    """Copy the sampled images (and their caption files) to workdir/data/<dataset>, keeping
    their paths below the dataset folder, so file-name captions stay what they were."""
    from runner.data.captions import caption_path

    folder = workdir / "data" / sample.name
    for item in sample.items:
        src = Path(item.info.path)
        dest = folder / item.info.rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
        if sample.caption_strategy == "textfile":
            shutil.copy2(caption_path(src), caption_path(dest))
    return str(folder)


# ----------------------------------------------------------------------------- stages

def _run_stages(s: Session, job: TrainingJob) -> int:
    spec = job.spec.to_dict()
    with s.timed("tiny model"):
        code = _stage(s, "tiny model", lambda: _build_tiny_model(spec))
    if code is not True:
        return code
    from runner.launch.run import run_job

    for stage in ("cache", "train"):
        name = f"{stage} stage"
        with s.timed(name):
            code = _stage(s, name, lambda: run_job(job, stage=stage))
        if code is not True:
            return code
    with s.timed("export"):
        code = _stage(s, "export", lambda: _load_export(Path(spec["output"]["dir"]) / "model"))
    return EXIT_OK if code is True else code


def _stage(s: Session, name: str, fn) -> bool | int:
    """Run one part; record it as a check. True when it passed, else the exit code to return."""
    t0 = time.perf_counter()
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - the report and the JUnit file must still be written
        if os.environ.get(DEBUG_ENV):
            raise
        s.add(Check("run", name, FAILED, f"internal error: {type(e).__name__}: {e} (rerun with {DEBUG_ENV}=1 "
                                         "for the traceback)", time.perf_counter() - t0))
        return EXIT_INTERNAL
    seconds = time.perf_counter() - t0
    if isinstance(result, int) and not isinstance(result, bool):
        if result != EXIT_OK:
            s.add(Check("run", name, FAILED, f"exited with code {result}; its error is printed above", seconds))
            return result
        result = "done"
    s.add(Check("run", name, PASSED, str(result), seconds))
    return True


def _build_tiny_model(spec: Mapping[str, Any]) -> str:
    from runner.models.tiny import resolve_builtin

    ref = spec["model"]["pretrained"]
    resolve_builtin(ref, Path(spec["cacheDir"]))
    return f"{ref} ready"


def _load_export(model_dir: Path) -> str:
    """The export loads back as a pipeline, as the user's inference code will load it."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(model_dir))
    return f"{model_dir} loads as {type(pipe).__name__}"
