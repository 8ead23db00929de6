"""Planning: paths, step counts and the cache fingerprint, all from the spec alone."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from runner.spec.load import job_from_document
from runner.spec.plan import cache_fingerprint, enabled_datasets, job_paths, manifest_path, step_plan

REPO = Path(__file__).resolve().parents[2]
SMOKE_DOC = yaml.safe_load((REPO / "examples" / "smoke.yaml").read_text())


def _spec(edit: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The smoke spec as the runner sees it (defaults filled in), after `edit` on the document."""
    doc = copy.deepcopy(SMOKE_DOC)
    if edit:
        edit(doc["spec"])
    return job_from_document(doc).spec.to_dict()


BASE = _spec()


# ----------------------------------------------------------------------------- job_paths

def test_job_paths_defaults() -> None:
    paths = job_paths(BASE)
    assert paths.cache_dir == Path("cache/smoke")
    assert paths.text_dir == Path("cache/smoke/text")
    assert paths.output_dir == Path("output/smoke")
    assert paths.manifest("0123abcd") == Path("cache/smoke/manifests/0123abcd.json")
    assert paths.dataset_manifest("0123abcd", BASE["datasets"][0]) == Path("cache/smoke/manifests/0123abcd/photos.json")
    assert manifest_path(BASE) == Path(f"cache/smoke/manifests/{cache_fingerprint(BASE)}.json")
    assert paths.checkpoints == Path("output/smoke/checkpoints")
    assert paths.validation == Path("output/smoke/validation")
    assert paths.model == Path("output/smoke/model")
    assert paths.logs == Path("output/smoke/logs")
    assert paths.samples_dir() == Path("cache/smoke/samples")
    assert paths.vae_dir(BASE["datasets"][0]) == Path("cache/smoke/vae/photos")


def _overrides(spec: dict[str, Any]) -> None:
    spec["cacheDir"] = "/data/cache"
    spec["textEmbeds"]["cacheDir"] = "/shared/t5"
    spec["output"]["dir"] = "/out/run1"
    spec["datasets"][0]["vaeCacheDir"] = "/fast/vae-photos"
    spec["datasets"].append({**spec["datasets"][0], "name": "more"})
    del spec["datasets"][1]["vaeCacheDir"]


def test_job_paths_overrides() -> None:
    spec = _spec(_overrides)
    paths = job_paths(spec)
    assert paths.cache_dir == Path("/data/cache")
    assert paths.text_dir == Path("/shared/t5")
    assert paths.output_dir == Path("/out/run1")
    assert paths.checkpoints == Path("/out/run1/checkpoints")
    assert paths.manifest("0123abcd") == Path("/data/cache/manifests/0123abcd.json")
    # Beside the cache manifest, not in the vaeCacheDir (two datasets may share one).
    assert paths.dataset_manifest("0123abcd", spec["datasets"][0]) == Path("/data/cache/manifests/0123abcd/photos.json")
    assert paths.vae_dir(spec["datasets"][0]) == Path("/fast/vae-photos")
    assert paths.vae_dir(spec["datasets"][1]) == Path("/data/cache/vae/more")


@pytest.mark.parametrize("repo, revision, expected", [
    ("user/photos", None, "cache/smoke/hub/user--photos/main"),
    ("org/set", "v2", "cache/smoke/hub/org--set/v2"),
])
def test_hub_dataset_dir(repo: str, revision: str | None, expected: str) -> None:
    ds = {"name": "x", "repo": repo, **({"revision": revision} if revision else {})}
    assert job_paths(BASE).hub_dataset_dir(ds) == Path(expected)


def test_enabled_datasets_drops_disabled() -> None:
    def two(spec):
        spec["datasets"].append({**spec["datasets"][0], "name": "off", "disabled": True})

    assert [d["name"] for d in enabled_datasets(_spec(two))] == ["photos"]


# ----------------------------------------------------------------------------- step_plan

def _training(**fields) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    spec["training"].pop("maxSteps", None)
    spec["training"].pop("epochs", None)
    spec["training"].update(fields)
    return spec


@pytest.mark.parametrize("fields, batches, per_epoch, total", [
    ({"maxSteps": 20}, 10, 10, 20),                                  # maxSteps only: more than one epoch
    ({"maxSteps": 5}, 10, 10, 5),
    ({"maxSteps": 20, "gradientAccumulationSteps": 3}, 10, 3, 20),   # remainder batches dropped
    ({"epochs": 3}, 10, 10, 30),                                     # epochs only
    ({"epochs": 2, "gradientAccumulationSteps": 4}, 9, 2, 4),
    ({"epochs": 1}, 1, 1, 1),
    ({"epochs": 3, "maxSteps": 100}, 10, 10, 30),                    # both: the smaller
    ({"epochs": 3, "maxSteps": 7}, 10, 10, 7),
    ({"maxSteps": 4, "gradientAccumulationSteps": 5}, 5, 1, 4),      # accumulation == batches
])
def test_step_plan(fields: dict, batches: int, per_epoch: int, total: int) -> None:
    plan = step_plan(_training(**fields), batches)
    assert (plan.steps_per_epoch, plan.total_steps) == (per_epoch, total)


def test_step_plan_epochs_from_real_spec() -> None:
    def epochs_only(spec):
        del spec["training"]["maxSteps"]
        spec["training"]["epochs"] = 4

    spec = _spec(epochs_only)
    assert "maxSteps" not in spec["training"]
    assert step_plan(spec, 6).total_steps == 24


@pytest.mark.parametrize("accum, batches", [(2, 1), (8, 7), (3, 0)])
def test_step_plan_accumulation_larger_than_epoch(accum: int, batches: int) -> None:
    with pytest.raises(ValueError) as info:
        step_plan(_training(maxSteps=10, gradientAccumulationSteps=accum), batches)
    msg = str(info.value)
    assert f"gradientAccumulationSteps={accum}" in msg
    assert f"{batches} batches" in msg
    assert "batchSize" in msg and "add images" in msg


# ----------------------------------------------------------------------------- cache_fingerprint

def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(spec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = spec
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[last] = value
    return edit


BASE_FP = cache_fingerprint(BASE)


@pytest.mark.parametrize("path, value", [
    ("datasets.0.resolution", 256),
    # The same 128 px target measured as an area (128x128 = 1/64 MP): the unit alone changes the key.
    ("datasets", [dict(SMOKE_DOC["spec"]["datasets"][0], resolutionType="area", resolution=1 / 64,
                       minimumImageSize=1 / 256)]),
    ("datasets.0.cropStyle", "center"),
    ("datasets.0.cropAspect", "square"),
    ("model.textEncoderMaxLength", 64),
    ("model.pretrained", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"),
    ("model.revision", "v1"),
    ("model.vaeDtype", "bfloat16"),
    ("model.textEncoderDtype", "bfloat16"),
    ("training.seed", 7),
    ("vaeCacheDisable", True),
    ("textEmbeds.cacheDir", "/shared/t5"),  # the manifest records where its text entries are
])
def test_cache_fingerprint_changes(path: str, value: Any) -> None:
    assert cache_fingerprint(_spec(_set(path, value))) != BASE_FP


@pytest.mark.parametrize("path, value", [
    ("training.learningRate", 3e-5),
    ("training.maxSteps", 999),
    ("training.batchSize", 4),
    ("datasets.0.repeats", 3),
    ("validation.guidance", 7.5),
    ("validation.every", 2),
    ("validation.prompts", []),  # prompts are looked up by key, see training.data.text_entry
    ("validation.prompts", ["a photo of an astronaut", "a dog"]),
    ("validation.negativePrompt", "blurry"),
    ("output.dir", "/elsewhere"),
    ("tracking.tensorboard", False),
    ("cacheDir", "/elsewhere"),  # the manifests live in it: named by the fingerprint within it
    ("textEmbeds.writeBatchSize", 2),
])
def test_cache_fingerprint_ignores(path: str, value: Any) -> None:
    assert cache_fingerprint(_spec(_set(path, value))) == BASE_FP


def test_cache_fingerprint_ignores_disabled_dataset() -> None:
    def add_disabled(spec):
        spec["datasets"].append({**spec["datasets"][0], "name": "off", "resolution": 512, "disabled": True})

    assert cache_fingerprint(_spec(add_disabled)) == BASE_FP
