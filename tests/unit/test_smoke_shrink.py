"""runner.smoke.shrink: the user's spec -> the smoke spec and the list of what changed (pure)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runner.models.registry import traits
from runner.smoke.shrink import (SMOKE_SIDE, SMOKE_STEPS, SUBSTITUTE_NAME, scale_factor, scale_size, shrink,
                                 substitute_dataset)
from runner.spec.load import job_from_document

REPO = Path(__file__).resolve().parents[2]
WORK = "/tmp/smoke-work"


def user_doc(**spec_updates) -> dict:
    """The real 1024 px example, defaulted, with spec sections replaced or added."""
    doc = yaml.safe_load((REPO / "examples" / "pixart-sigma-1024.yaml").read_text())
    doc["spec"].update(spec_updates)
    return job_from_document(doc).document.to_dict()


def changed(result) -> dict[str, tuple]:
    return {c.field: (c.before, c.after) for c in result.changes}


@pytest.mark.parametrize("sides, factor", [
    ([], 1),
    ([128], 1),
    ([256], 1),
    ([257], 1 / 2),
    ([512], 1 / 2),
    ([1024], 1 / 4),
    ([1024, 2048], 1 / 8),
    ([1448.2], 1 / 8),  # 2 MP area: a 1448 px square
])
def test_scale_factor_is_the_largest_power_of_two_that_fits(sides, factor):
    assert scale_factor(sides) == factor
    assert all(side * factor <= SMOKE_SIDE for side in sides)


@pytest.mark.parametrize("size, factor, expected", [
    ((1024, 1024), 1 / 4, (256, 256)),
    ((1280, 768), 1 / 4, (320, 192)),  # 5:3 kept exactly
    ((1280, 768), 1 / 8, (160, 96)),
    ((1040, 1040), 1 / 4, (256, 256)),  # 260 rounds to the nearest multiple of 16
    ((200, 40), 1 / 4, (48, 16)),  # never below one token
])
def test_scale_size_keeps_aspect_on_the_token_grid(size, factor, expected):
    assert scale_size(*size, factor, 16) == expected


def test_the_real_1024_example_shrinks_to_a_valid_cpu_job():
    doc = user_doc()
    result = shrink(doc, workdir=WORK, samples={SUBSTITUTE_NAME: f"{WORK}/data/{SUBSTITUTE_NAME}"},
                    left_out={"pseudo-camera-10k": "a Hub dataset"})
    out = result.document["spec"]
    c = changed(result)

    assert out["model"]["pretrained"] == traits("pixart_sigma").tiny_model == "builtin:tiny-pixart-sigma"
    assert c["spec.model.pretrained"] == ("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", "builtin:tiny-pixart-sigma")
    # The Hub dataset is disabled, not removed (field paths keep their indexes), and the bundled
    # photos stand in, cropped and bucketed like it.
    assert out["datasets"][0]["disabled"] is True and c["spec.datasets[0].disabled"] == (False, True)
    sub = out["datasets"][1]
    assert sub["name"] == SUBSTITUTE_NAME and sub["type"] == "local" and sub["path"].startswith(WORK)
    assert (sub["crop"], sub["cropAspect"], sub["cropStyle"], sub["minimumImageSize"]) == (True, "square", "random", 0.25)
    assert sub["resolution"] == 1.0 / 16  # 1 MP at 1/4 linear scale: 256x256
    assert result.scale == 1 / 4
    assert out["validation"]["resolutions"] == "256x256,320x192"
    assert out["validation"]["prompts"] == doc["spec"]["validation"]["prompts"]
    assert out["training"]["maxSteps"] == SMOKE_STEPS and "epochs" not in out["training"]
    assert out["training"]["compile"] is False and out["training"]["mixedPrecision"] == "no"
    assert out["hardware"] == {"accelerator": "cpu", "gpusPerNode": 1, "nodes": 1}
    assert out["cacheDir"] == f"{WORK}/cache" and out["output"]["dir"] == f"{WORK}/output"
    # the input is untouched
    assert doc["spec"]["model"]["pretrained"] == "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"
    # and the result passes the same validation as any spec
    assert job_from_document(result.document).spec.model.pretrained == "builtin:tiny-pixart-sigma"


def test_every_change_says_why_and_unchanged_fields_are_not_listed():
    doc = user_doc(training={"maxSteps": SMOKE_STEPS, "batchSize": 1, "mixedPrecision": "no"})
    result = shrink(doc, workdir=WORK, samples={"pseudo-camera-10k": f"{WORK}/data/p"})
    fields = [c.field for c in result.changes]
    assert "spec.training.maxSteps" not in fields and "spec.training.batchSize" not in fields
    assert len(fields) == len(set(fields))
    assert all(c.why and c.before != c.after for c in result.changes)
    assert "spec.model.pretrained: 'PixArt-alpha/PixArt-Sigma-XL-2-1024-MS' -> 'builtin:tiny-pixart-sigma' (" in \
        [c.line() for c in result.changes][0]


def local(name: str, **kw) -> dict:
    return {"name": name, "type": "local", "path": f"/data/{name}", **kw}


@pytest.mark.parametrize("datasets, validation, want_scale, want_res, want_val", [
    # area in megapixels scales with the square of the linear factor
    ([local("a", resolution=1.0)], "1024x1024", 1 / 4, [1.0 / 16], "256x256"),
    ([local("a", resolution=0.25)], "512x512,768x512", 1 / 2, [0.0625], "256x256,384x256"),
    # pixel is the shorter side: linear
    ([local("a", resolution=512, resolutionType="pixel")], "512x768", 1 / 2, [256], "256x384"),
    ([local("a", resolution=128, resolutionType="pixel")], "128x128,192x128", 1, [128], "128x128,192x128"),
    # one factor for the job, from the largest dataset; the smaller keeps its proportion
    ([local("a", resolution=1024, resolutionType="pixel"), local("b", resolution=512, resolutionType="pixel")],
     "1024x1024", 1 / 4, [256, 128], "256x256"),
])
def test_sizes_scale_by_one_factor(datasets, validation, want_scale, want_res, want_val):
    doc = user_doc(datasets=datasets, validation={"resolutions": validation})
    result = shrink(doc, workdir=WORK, samples={ds["name"]: f"{WORK}/data/{ds['name']}" for ds in datasets})
    out = result.document["spec"]
    assert result.scale == want_scale
    assert [ds["resolution"] for ds in out["datasets"]] == want_res
    assert out["validation"]["resolutions"] == want_val
    job_from_document(result.document)


def test_source_size_filters_stay_so_the_smoke_keeps_the_same_images():
    ds = local("a", resolution=1.0, minimumImageSize=0.5, maximumImageSize=4.0, targetDownsampleSize=2.0)
    result = shrink(user_doc(datasets=[ds]), workdir=WORK, samples={"a": f"{WORK}/data/a"})
    out = result.document["spec"]["datasets"][0]
    assert (out["minimumImageSize"], out["maximumImageSize"], out["targetDownsampleSize"]) == (0.5, 4.0, 2.0)


def test_nothing_points_at_the_real_cache_output_or_remote_services():
    datasets = [local("a", vaeCacheDir="/real/vae-a")]
    doc = user_doc(datasets=datasets, textEmbeds={"cacheDir": "/real/text"},
                   output={"dir": "/real/out", "hub": {"push": True, "repoId": "me/x", "tokenEnv": "MY_TOKEN"}},
                   tracking={"wandb": {"enabled": True, "project": "p"}},
                   evaluation={"clipScore": True}, metrics={"port": 9090},
                   training={"maxSteps": 10, "resume": "/real/out/checkpoints/step-5"})
    out = shrink(doc, workdir=WORK, samples={"a": f"{WORK}/data/a"}).document["spec"]
    text = yaml.safe_dump(out)
    assert "/real" not in text
    assert out["datasets"][0]["vaeCacheDir"].startswith(WORK) and "cacheDir" not in out["textEmbeds"]
    assert out["output"]["hub"]["push"] is False and out["tracking"]["wandb"]["enabled"] is False
    assert out["evaluation"]["clipModel"] == "builtin:tiny-clip"
    assert out["metrics"]["port"] == 0 and out["training"]["resume"] == "none"


def test_disabled_datasets_stay_disabled_and_every_enabled_one_must_be_accounted_for():
    doc = user_doc(datasets=[local("a"), local("b", disabled=True)])
    result = shrink(doc, workdir=WORK, samples={"a": f"{WORK}/data/a"})
    assert result.document["spec"]["datasets"][1] == doc["spec"]["datasets"][1]
    with pytest.raises(ValueError, match="neither sampled nor left out"):
        shrink(doc, workdir=WORK, samples={})


@pytest.mark.parametrize("first, caption", [
    (local("a", captionStrategy="textfile", cropAspect="preserve", resolution=512, resolutionType="pixel"), "filename"),
    (local("a", captionStrategy="instanceprompt", instancePrompt="sks dog"), "filename"),
])
def test_the_substitute_copies_crops_but_captions_by_file_name(first, caption):
    doc = user_doc(datasets=[first])
    sub = substitute_dataset(doc)
    ds = doc["spec"]["datasets"][0]
    assert sub["type"] == "samples" and sub["captionStrategy"] == caption
    assert all(sub[k] == ds[k] for k in ("crop", "cropAspect", "cropStyle", "resolution", "resolutionType"))
    assert "instancePrompt" not in sub
