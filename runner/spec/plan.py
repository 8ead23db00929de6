"""Pure planning: where every stage reads and writes, derived from the spec alone."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping



REPORT_FILE, HISTORY_FILE = "report.html", "metrics.jsonl"  # in spec.output.dir (runner/observe/report.py)
MANIFESTS = "manifests"  # in spec.cacheDir: one manifest per cache configuration
EXPORTED_SPEC = "trainingjob.yaml"  # in the exported model folder: the effective spec that trained it


def exported_document(document: Mapping[str, Any]) -> dict[str, Any]:
    """The effective spec as it leaves the machine with the model (model/trainingjob.yaml, the
    Hub model card): without spec.kubernetes, whose env values, pod labels and annotations and
    affinity describe the cluster (internal mirrors, proxies, node labels), not the model, and
    would go to a possibly public repo. The run's own trainingjob.effective.yaml keeps it."""
    spec = {k: v for k, v in document["spec"].items() if k != "kubernetes"}
    return {**document, "spec": spec}


@dataclass(frozen=True)
class JobPaths:
    cache_dir: Path
    text_dir: Path
    output_dir: Path

    def manifest(self, fingerprint: str) -> Path:
        """The cache manifest of one cache configuration (`cache_fingerprint`). Named by it, not
        one file per cache dir: jobs share a cache dir (entries are content-keyed), and a job
        caching other settings must not replace the manifest another job's train stage reads."""
        return self.cache_dir / MANIFESTS / f"{fingerprint}.json"

    def dataset_manifest(self, fingerprint: str, dataset: Mapping[str, Any]) -> Path:
        """The items of one dataset under that configuration (beside its cache manifest, not in
        the dataset's vaeCacheDir, which two datasets may share)."""
        return self.cache_dir / MANIFESTS / fingerprint / f"{dataset['name']}.json"

    @property
    def checkpoints(self) -> Path:
        return self.output_dir / "checkpoints"

    @property
    def validation(self) -> Path:
        return self.output_dir / "validation"

    @property
    def model(self) -> Path:
        return self.output_dir / "model"

    @property
    def exported_spec(self) -> Path:
        """The effective spec of the run that exported model/, inside it: it moves with the model
        (`resume: none`) and outlives the effective specs later runs write as they start."""
        return self.model / EXPORTED_SPEC

    @property
    def logs(self) -> Path:
        return self.output_dir / "logs"

    @property
    def finished(self) -> Path:
        """Written last by a train stage that finished (export and push included)."""
        return self.output_dir / "trainingjob.complete.json"

    @property
    def report(self) -> Path:
        return self.output_dir / REPORT_FILE

    @property
    def history(self) -> Path:
        """The run's history (runner/observe/runlog.py), what report.html is drawn from."""
        return self.output_dir / HISTORY_FILE

    @property
    def effective_spec(self) -> Path:
        """The spec the newest run ran (overrides applied, defaults filled in)."""
        return self.output_dir / "trainingjob.effective.yaml"

    @property
    def earlier_effective_spec(self) -> Path:
        """The one before, when the newest run's differs: `resume: none` moves it aside with that run."""
        return self.output_dir / "trainingjob.effective.earlier.yaml"

    def train_run_outputs(self) -> tuple[Path, ...]:
        """What a train run leaves in spec.output.dir besides its history: `resume: none` moves
        these (and the history's records of that run) aside together."""
        return (self.checkpoints, self.validation, self.logs, self.model, self.report, self.finished)

    def vae_dir(self, dataset: Mapping[str, Any]) -> Path:
        return Path(dataset["vaeCacheDir"]) if dataset.get("vaeCacheDir") else self.cache_dir / "vae" / dataset["name"]

    @property
    def digests(self) -> Path:
        return self.cache_dir / "digests.json"

    def samples_dir(self) -> Path:
        return self.cache_dir / "samples"

    def hub_dataset_dir(self, dataset: Mapping[str, Any]) -> Path:
        return self.cache_dir / "hub" / dataset["repo"].replace("/", "--") / dataset.get("revision", "main")


def manifest_path(spec: Mapping[str, Any]) -> Path:
    """The cache manifest the spec's train stage reads (and its cache stage writes)."""
    return job_paths(spec).manifest(cache_fingerprint(spec))


def job_paths(spec: Mapping[str, Any]) -> JobPaths:
    cache = Path(spec["cacheDir"])
    text = Path(spec["textEmbeds"]["cacheDir"]) if spec["textEmbeds"].get("cacheDir") else cache / "text"
    return JobPaths(cache_dir=cache, text_dir=text, output_dir=Path(spec["output"]["dir"]))


def enabled_datasets(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [dict(ds) for ds in spec["datasets"] if not ds["disabled"]]


def cache_fingerprint(spec: Mapping[str, Any]) -> str:
    """Hash of the spec fields the cached dataset depends on; it names the cache manifest
    (JobPaths.manifest), so the train stage finds the one built for its own settings or none
    (run the cache stage). Validation prompts are not part of it: they are looked up by key, so
    turning validation off or back on to already-cached prompts needs no re-caching."""
    model = spec["model"]
    relevant = {
        "model": {k: model[k] for k in ("family", "pretrained", "revision", "textEncoderMaxLength", "vaeDtype", "textEncoderDtype")},
        "datasets": [{k: v for k, v in ds.items() if k not in ("disabled", "repeats")} for ds in enabled_datasets(spec)],
        "vaeCacheDisable": spec["vaeCacheDisable"],
        "seed": spec["training"]["seed"],
        # Where the text entries are (the manifest records it, as the datasets' vaeCacheDir):
        # two jobs that differ only in it must not share, and overwrite, one manifest.
        "textCacheDir": spec["textEmbeds"].get("cacheDir"),
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StepPlan:
    steps_per_epoch: int
    total_steps: int


def step_plan(spec: Mapping[str, Any], batches_per_epoch: int) -> StepPlan:
    """Optimizer steps per epoch and in total; batches_per_epoch is per rank."""
    accum = spec["training"]["gradientAccumulationSteps"]
    per_epoch = batches_per_epoch // accum
    if per_epoch < 1:
        raise ValueError(f"one epoch yields {batches_per_epoch} batches per process, fewer than "
                         f"gradientAccumulationSteps={accum}: lower it or spec.training.batchSize, or add images")
    limits = []
    if spec["training"].get("maxSteps"):
        limits.append(spec["training"]["maxSteps"])
    if spec["training"].get("epochs"):
        limits.append(spec["training"]["epochs"] * per_epoch)
    return StepPlan(steps_per_epoch=per_epoch, total_steps=min(limits))

