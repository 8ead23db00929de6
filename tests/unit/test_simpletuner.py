"""`trainingjob import-simpletuner`: the quickstart converts, values are parsed as SimpleTuner
writes them, and every option without an equivalent is listed, never dropped."""
from __future__ import annotations

import json

import pytest
import yaml

from runner.importers.simpletuner import options as simpletuner
from runner.spec.load import load_spec

# SimpleTuner's PixArt Sigma quickstart (documentation/quickstart/SIGMA.md).
QUICKSTART_CONFIG = {
    "model_type": "full",
    "use_bitfit": False,
    "pretrained_model_name_or_path": "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",
    "model_family": "pixart_sigma",
    "output_dir": "/home/user/output/models",
    "validation_resolution": "1024x1024,1280x768",
    "validation_guidance": 3.5,
}
QUICKSTART_BACKENDS = [
    {
        "id": "pseudo-camera-10k-pixart",
        "type": "local",
        "crop": True,
        "crop_aspect": "square",
        "crop_style": "random",
        "resolution": 1.0,
        "minimum_image_size": 0.25,
        "maximum_image_size": 1.0,
        "target_downsample_size": 1.0,
        "resolution_type": "area",
        "cache_dir_vae": "cache/vae/pixart/pseudo-camera-10k",
        "instance_data_dir": "datasets/pseudo-camera-10k",
        "disabled": False,
        "skip_file_discovery": "",
        "caption_strategy": "filename",
        "metadata_backend": "discovery",
    },
    {
        "id": "text-embeds",
        "type": "local",
        "dataset_type": "text_embeds",
        "default": True,
        "cache_dir": "cache/text/pixart/pseudo-camera-10k",
        "disabled": False,
        "write_batch_size": 128,
    },
]


def write_inputs(tmp_path, config, backends):
    c, b = tmp_path / "config.json", tmp_path / "multidatabackend.json"
    c.write_text(json.dumps(config))
    b.write_text(json.dumps(backends))
    return c, b


def test_the_quickstart_converts_and_validates(tmp_path, cli, monkeypatch):
    from PIL import Image

    config, backends = write_inputs(tmp_path, QUICKSTART_CONFIG, QUICKSTART_BACKENDS)
    out = tmp_path / "job.yaml"
    result = cli("import-simpletuner", config, backends, "--output", out)
    assert result.code == 0, result.err
    # 3.5 is below PixArt Sigma's sweet spot: a warning, not an error.
    assert "warning: spec.validation.guidance: 3.5 is outside 3.6-4.4" in result.err
    # The dataset path is relative, as in the quickstart: validate from where it exists.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "datasets" / "pseudo-camera-10k").mkdir(parents=True)
    Image.new("RGB", (768, 768), (90, 120, 30)).save(tmp_path / "datasets" / "pseudo-camera-10k" / "a_red_fox.png")
    validated = cli("validate", out)
    assert validated.code == 0, validated.err
    job = load_spec(out)
    spec = job.spec
    assert spec.model.family == "pixart_sigma" and spec.model.type == "full" and spec.model.bitFit is False
    assert spec.model.pretrained == "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"
    assert spec.output.dir == "/home/user/output/models"
    assert spec.validation.resolutions == "1024x1024,1280x768" and spec.validation.guidance == 3.5
    [ds] = spec.datasets
    assert (ds.name, ds.type, ds.path) == ("pseudo-camera-10k-pixart", "local", "datasets/pseudo-camera-10k")
    assert (ds.crop, ds.cropAspect, ds.cropStyle) == (True, "square", "random")
    assert (ds.resolution, ds.resolutionType) == (1.0, "area")
    assert (ds.minimumImageSize, ds.maximumImageSize, ds.targetDownsampleSize) == (0.25, 1.0, 1.0)
    assert (ds.vaeCacheDir, ds.captionStrategy, ds.metadataBackend, ds.disabled) == (
        "cache/vae/pixart/pseudo-camera-10k", "filename", "discovery", False)
    assert spec.textEmbeds.cacheDir == "cache/text/pixart/pseudo-camera-10k"
    assert spec.textEmbeds.writeBatchSize == 128
    assert spec.training.epochs == 1  # SimpleTuner's default when no length is given
    # The one option without an equivalent is listed on stderr and atop the YAML.
    assert "skip_file_discovery" in result.err
    header = out.read_text().split("apiVersion:")[0]
    assert "no TrainingJob equivalent" in header and "skip_file_discovery" in header


def test_dashed_keys_and_string_values_are_parsed_properly(tmp_path, cli):
    config = {
        "--model_type": "full", "--model_family": "pixart_sigma", "--use_bitfit": "true",
        "--pretrained_model_name_or_path": "me/pixart", "--output_dir": "out",
        "--train_batch_size": "4", "--gradient_accumulation_steps": 2, "--learning_rate": "1e-5",
        "--lr_scheduler": "cosine", "--lr_warmup_steps": "100", "--optimizer": "adamw_bf16",
        "--max_train_steps": "1000", "--num_train_epochs": 0, "--mixed_precision": "bf16",
        "--gradient_checkpointing": "False",  # SimpleTuner once read this as true
        "--max_grad_norm": "0.5", "--seed": "7", "--checkpointing_steps": 250, "--checkpoints_total_limit": "2",
        "--resume_from_checkpoint": "latest", "--validation_prompt": "a photo of a cat",
        "--validation_negative_prompt": "blurry", "--validation_guidance": "4.2",
        "--validation_num_inference_steps": "30", "--validation_steps": 100, "--validation_seed": "3",
        "--validation_resolution": "1024", "--report_to": "wandb", "--tracker_project_name": "proj",
        "--tracker_run_name": "My Run", "--push_to_hub": "true", "--hub_model_id": "me/tuned",
        "--caption_dropout_probability": "0.05", "--tokenizer_max_length": "120",
        "--vae_cache_ondemand": "true", "--data_backend_config": "config/multidatabackend.json",
    }
    backends = [{"id": "Dogs!", "type": "local", "instance_data_dir": "/data/dogs", "repeats": "2",
                 "disabled": "False", "caption_strategy": "instanceprompt", "instance_prompt": "a sks dog",
                 "crop": "true", "crop_style": "centre", "resolution": 1024, "resolution_type": "pixel_area",
                 "minimum_image_size": 512}]
    c, b = write_inputs(tmp_path, config, backends)
    out = tmp_path / "job.yaml"
    result = cli("import-simpletuner", c, b, "--output", out)
    assert result.code == 0, result.err
    spec = load_spec(out).spec
    t = spec.training
    assert (t.batchSize, t.gradientAccumulationSteps, t.learningRate) == (4, 2, pytest.approx(1e-5))
    assert (t.lrScheduler, t.lrWarmupSteps, t.optimizer) == ("cosine", 100, "adamw")
    assert (t.maxSteps, t.epochs, t.mixedPrecision) == (1000, None, "bf16")
    assert t.gradientCheckpointing is False
    assert (t.maxGradNorm, t.seed, t.checkpointEvery, t.checkpointsTotalLimit) == (0.5, 7, 250, 2)
    assert (t.resume, t.captionDropout) == ("auto", 0.05)
    v = spec.validation
    assert (v.prompts, v.negativePrompt, v.guidance) == (("a photo of a cat",), "blurry", 4.2)
    assert (v.inferenceSteps, v.every, v.seed, v.resolutions) == (30, 100, 3, "1024x1024")
    assert spec.model.bitFit is True and spec.model.textEncoderMaxLength == 120
    assert spec.model.pretrained == "me/pixart"
    assert spec.tracking.wandb.enabled is True and spec.tracking.wandb.project == "proj"
    assert spec.tracking.tensorboard is False
    assert spec.output.hub.push is True and spec.output.hub.repoId == "me/tuned"
    assert spec.vaeCacheDisable is True
    assert load_spec(out).name == "my-run"
    [ds] = spec.datasets
    assert (ds.name, ds.path, ds.repeats, ds.disabled) == ("dogs", "/data/dogs", 2, False)
    assert (ds.captionStrategy, ds.instancePrompt, ds.crop, ds.cropStyle) == ("instanceprompt", "a sks dog", True, "center")
    # pixel_area: 1024 px -> 1.0 MP, 512 px -> 0.25 MP.
    assert (ds.resolutionType, ds.resolution, ds.minimumImageSize) == ("area", 1.0, 0.25)


def test_options_without_equivalent_are_listed_never_dropped(tmp_path, cli):
    config = dict(QUICKSTART_CONFIG, validation_guidance=4.0, **{"--use_ema": "true", "lora_rank": 64,
                                                                    "optimizer": "prodigy"})
    backends = [dict(QUICKSTART_BACKENDS[0], probability=0.5, crop_aspect="random"),
                {"id": "s3", "type": "aws", "aws_bucket_name": "b"}, QUICKSTART_BACKENDS[1],
                {"id": "cond", "dataset_type": "conditioning", "type": "local"}]
    c, b = write_inputs(tmp_path, config, backends)
    result = cli("import-simpletuner", c, b)
    assert result.code == 0, result.err
    header = result.out.split("apiVersion:")[0]
    for option in ("config.json: use_ema", "config.json: lora_rank", "optimizer = \"prodigy\"", "probability",
                   "crop_aspect", "type \"aws\"", "dataset_type \"conditioning\""):
        assert option in result.err, option
        assert option in header, option
    # Unknown options are named, their values never shown (they may be credentials).
    assert "use_ema =" not in result.text and "lora_rank = 64" not in result.text and "0.5" not in result.text
    assert all(line.startswith("#") for line in header.splitlines())
    assert yaml.safe_load(result.out)["spec"]["training"].get("optimizer") is None


PIXART = {"model_type": "full", "model_family": "pixart_sigma"}


@pytest.mark.parametrize("config, expect", [
    ({"model_type": "lora", "model_family": "pixart_sigma"}, "model_type: \"lora\" is not supported"),
    ({"model_type": "full", "model_family": "flux"}, "model_family: \"flux\" is not supported"),
    (dict(PIXART, train_batch_size="four"), "config.json: train_batch_size: \"four\" is not a number"),
    (dict(PIXART, gradient_checkpointing="maybe"), "gradient_checkpointing: \"maybe\" is not a boolean"),
    (dict(PIXART, train_batch_size=0), "spec.training.batchSize: 0 is less than the minimum of 1"),
    # SimpleTuner has no default family: a config without one is not guessed to be PixArt Sigma.
    ({"model_type": "full"}, "config.json: model_family is not set; add \"model_family\": \"pixart_sigma\""),
    ({"model_type": "full", "model_family": ""}, "config.json: model_family is not set"),
    (["not", "an", "object"], "expected a JSON object of SimpleTuner options, got a list"),
    # A misplaced file may be full of secrets: its content is never echoed.
    (["hf_QmV7zLp2XcN9rT4wY8sK1dF6gH3jA5bE0uIo"], "got a list"),
])
def test_unconvertible_configs_exit_2(tmp_path, cli, config, expect):
    c, b = write_inputs(tmp_path, config, QUICKSTART_BACKENDS)
    result = cli("import-simpletuner", c, b)
    assert result.code == 2
    assert expect in result.err, result.err
    assert result.out == "" and "Traceback" not in result.err
    assert "hf_QmV7" not in result.err


def test_no_image_dataset_exits_2(tmp_path, cli):
    c, b = write_inputs(tmp_path, QUICKSTART_CONFIG, [QUICKSTART_BACKENDS[1]])
    result = cli("import-simpletuner", c, b)
    assert result.code == 2 and "no image dataset" in result.err


@pytest.mark.parametrize("content, expect", [
    ("{", "invalid JSON at line 1"),
    ('{"a": 1, "a": 2}', "duplicate key 'a'"),
    ("[" * 100000 + "]" * 100000, "unreadable JSON"),
    (None, "no such file"),
])
def test_unreadable_inputs_exit_2(tmp_path, cli, content, expect):
    c, b = write_inputs(tmp_path, QUICKSTART_CONFIG, QUICKSTART_BACKENDS)
    if content is None:
        c.unlink()
    else:
        c.write_text(content)
    result = cli("import-simpletuner", c, b)
    assert result.code == 2 and expect in result.err and "Traceback" not in result.err


def test_hub_id_without_owner_disables_push_with_a_note(tmp_path, cli):
    config = dict(QUICKSTART_CONFIG, push_to_hub="true", hub_model_id="simpletuner-lora")
    c, b = write_inputs(tmp_path, config, QUICKSTART_BACKENDS)
    result = cli("import-simpletuner", c, b)
    assert result.code == 0, result.err
    assert 'hub_model_id "simpletuner-lora" has no owner; push disabled' in result.err
    assert yaml.safe_load(result.out)["spec"]["output"]["hub"] == {"push": False}


def test_refuses_to_overwrite_without_force(tmp_path, cli):
    c, b = write_inputs(tmp_path, QUICKSTART_CONFIG, QUICKSTART_BACKENDS)
    out = tmp_path / "job.yaml"
    out.write_text("mine\n")
    assert cli("import-simpletuner", c, b, "--output", out).code == 2
    assert out.read_text() == "mine\n"
    assert cli("import-simpletuner", c, b, "--output", out, "--force").code == 0


@pytest.mark.parametrize("value, expected", [
    ("False", False), ("false", False), ("0", False), (0, False), (False, False), ("no", False),
    ("True", True), ("TRUE", True), ("1", True), (1, True), (True, True), ("yes", True),
])
def test_booleans_are_parsed_not_truth_tested(value, expected):
    assert simpletuner.to_bool(value) is expected


@pytest.mark.parametrize("value", ["", "maybe", 2, None, [1]])
def test_non_booleans_are_refused(value):
    with pytest.raises(simpletuner.Bad):
        simpletuner.to_bool(value)


def test_numbers_from_strings():
    assert simpletuner.to_float("1e-5") == pytest.approx(1e-5)
    assert simpletuner.to_int("20") == 20 and simpletuner.to_int(20.0) == 20
    for bad in ("1.5", "nan", True):
        with pytest.raises(simpletuner.Bad):
            simpletuner.to_int(bad)
    assert simpletuner.normalize_key("--Train-Batch-Size") == "train_batch_size"


# ----------------------------------------------------------------------------- real configs

def test_report_to_none_turns_every_tracker_off(tmp_path, cli):
    for value in ("none", "None", ""):
        c, b = write_inputs(tmp_path, dict(QUICKSTART_CONFIG, report_to=value), QUICKSTART_BACKENDS)
        result = cli("import-simpletuner", c, b)
        assert result.code == 0, (value, result.err)
        tracking = yaml.safe_load(result.out)["spec"]["tracking"]
        assert tracking == {"tensorboard": False}, value
        assert "report_to" not in result.err


def test_current_and_old_interval_names_are_both_mapped(tmp_path, cli):
    current = dict(QUICKSTART_CONFIG, checkpoint_step_interval=250, validation_step_interval="125")
    old = dict(QUICKSTART_CONFIG, checkpointing_steps=250, validation_steps="125")
    for config in (current, old):
        c, b = write_inputs(tmp_path, config, QUICKSTART_BACKENDS)
        result = cli("import-simpletuner", c, b)
        assert result.code == 0, result.err
        spec = yaml.safe_load(result.out)["spec"]
        assert (spec["training"]["checkpointEvery"], spec["validation"]["every"]) == (250, 125)
        assert "interval" not in result.err and "_steps" not in result.err.replace("max_train_steps", "")
    # Both spellings of one option: the later one wins, and a note says so.
    both = {**QUICKSTART_CONFIG, "checkpointing_steps": 100, "checkpoint_step_interval": 300}
    c, b = write_inputs(tmp_path, both, QUICKSTART_BACKENDS)
    result = cli("import-simpletuner", c, b)
    assert yaml.safe_load(result.out)["spec"]["training"]["checkpointEvery"] == 300
    assert "checkpoint_step_interval repeats option checkpoint_step_interval; the later value 300 is used" in result.err


def test_model_family_placeholders_in_paths_are_expanded(tmp_path, cli):
    config = dict(QUICKSTART_CONFIG, output_dir="output/{model_family}", cache_dir="cache/{model_family}")
    backends = [dict(QUICKSTART_BACKENDS[0], cache_dir_vae="cache/vae/{model_family}/pseudo-camera-10k",
                     instance_data_dir="datasets/{model_family}"),
                dict(QUICKSTART_BACKENDS[1], cache_dir="cache/text/{model_family}")]
    c, b = write_inputs(tmp_path, config, backends)
    result = cli("import-simpletuner", c, b)
    assert result.code == 0, result.err
    spec = yaml.safe_load(result.out)["spec"]
    assert spec["output"]["dir"] == "output/pixart_sigma" and spec["cacheDir"] == "cache/pixart_sigma"
    assert spec["textEmbeds"]["cacheDir"] == "cache/text/pixart_sigma"
    assert spec["datasets"][0]["vaeCacheDir"] == "cache/vae/pixart_sigma/pseudo-camera-10k"
    assert spec["datasets"][0]["path"] == "datasets/pixart_sigma"
    assert "{" not in result.out


def test_an_unknown_placeholder_is_never_copied_literally(tmp_path, cli):
    # In a cache dir it is listed and the default cache dir is used; in the data path it is refused.
    backends = [dict(QUICKSTART_BACKENDS[0], cache_dir_vae="cache/vae/{model_name}"), QUICKSTART_BACKENDS[1]]
    c, b = write_inputs(tmp_path, QUICKSTART_CONFIG, backends)
    result = cli("import-simpletuner", c, b)
    assert result.code == 0, result.err
    assert "cache_dir_vae: \"cache/vae/{model_name}\" holds the placeholder {model_name}" in result.err
    assert "vaeCacheDir" not in yaml.safe_load(result.out)["spec"]["datasets"][0]
    backends = [dict(QUICKSTART_BACKENDS[0], instance_data_dir="datasets/{id}"), QUICKSTART_BACKENDS[1]]
    c, b = write_inputs(tmp_path, QUICKSTART_CONFIG, backends)
    result = cli("import-simpletuner", c, b)
    assert result.code == 2 and "instance_data_dir: \"datasets/{id}\" holds the placeholder {id}" in result.err


@pytest.mark.parametrize("rtype", ["pixel_area|area|pixel", "megapixel", 5])
def test_an_unknown_resolution_type_is_refused_not_read_as_megapixels(tmp_path, cli, rtype):
    backends = [dict(QUICKSTART_BACKENDS[0], resolution=1024, resolution_type=rtype), QUICKSTART_BACKENDS[1]]
    c, b = write_inputs(tmp_path, QUICKSTART_CONFIG, backends)
    result = cli("import-simpletuner", c, b)
    assert result.code == 2, result.out
    assert f"resolution_type: {json.dumps(rtype)} has no equivalent (supported: area, pixel, pixel_area)" in result.err
    assert result.out == ""


def test_pixel_values_without_a_resolution_type_read_as_pixel_area(tmp_path, cli):
    entry = {k: v for k, v in QUICKSTART_BACKENDS[0].items() if k != "resolution_type"}
    backends = [dict(entry, resolution=1024, minimum_image_size=512, maximum_image_size=2048,
                     target_downsample_size=1024), QUICKSTART_BACKENDS[1]]
    c, b = write_inputs(tmp_path, QUICKSTART_CONFIG, backends)
    result = cli("import-simpletuner", c, b)
    assert result.code == 0, result.err
    ds = yaml.safe_load(result.out)["spec"]["datasets"][0]
    assert (ds["resolutionType"], ds["resolution"], ds["minimumImageSize"], ds["maximumImageSize"]) == (
        "area", 1.0, 0.25, 4.0)


TOKEN = "hf_SECRETVALUE123abcdefghij"


@pytest.mark.parametrize("options, note", [
    # An owner-less id is suggested back as OWNER/<id>: that fix must not quote a token.
    ({"hub_model_id": TOKEN, "push_to_hub": True}, "hub_model_id <hidden: may be a secret> was not converted"),
    ({"hub_model_id": f"me/{TOKEN}", "push_to_hub": True}, "hub_model_id <hidden: may be a secret> was not converted"),
    # A run name becomes metadata.name: slugged, a token would no longer look like one.
    ({"tracker_run_name": TOKEN}, "tracker_run_name <hidden: may be a secret> was not used as metadata.name"),
])
def test_credential_shaped_values_reach_neither_the_spec_nor_the_notes(tmp_path, cli, options, note):
    c, b = write_inputs(tmp_path, dict(QUICKSTART_CONFIG, **options), QUICKSTART_BACKENDS)
    result = cli("import-simpletuner", c, b)
    assert result.code == 0, result.err
    assert note in result.out + result.err
    for text in (result.out, result.err):
        assert "SECRETVALUE" not in text.upper(), text
    spec = yaml.safe_load(result.out)
    assert "repoId" not in spec["spec"].get("output", {}).get("hub", {})
    assert not spec["spec"].get("output", {}).get("hub", {}).get("push")


def test_scrub_hides_credential_shaped_parts_of_a_message():
    from runner.spec import redact

    assert redact.scrub(f"set it to OWNER/{TOKEN} to publish") == "set it to OWNER/<hidden: may be a secret> to publish"
    assert redact.scrub("https://user:pa55word@host/x") == "https<hidden: may be a secret>host/x"
    assert redact.scrub("a plain note about step 1000 and batch 8") == "a plain note about step 1000 and batch 8"
