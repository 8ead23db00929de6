"""`trainingjob import-simpletuner`: the quickstart converts, values are parsed as SimpleTuner
writes them, and every option without an equivalent is listed, never dropped."""
from __future__ import annotations

import json

import pytest
import yaml

from runner import simpletuner
from runner.spec import load_spec

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


def test_the_quickstart_converts_and_validates(tmp_path, cli):
    config, backends = write_inputs(tmp_path, QUICKSTART_CONFIG, QUICKSTART_BACKENDS)
    out = tmp_path / "job.yaml"
    result = cli("import-simpletuner", config, backends, "--output", out)
    assert result.code == 0, result.err
    # 3.5 is below PixArt Sigma's sweet spot: a warning, not an error.
    assert "warning: spec.validation.guidance: 3.5 is outside 3.6-4.4" in result.err
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
    for option in ("use_ema = \"true\"", "lora_rank = 64", "optimizer = \"prodigy\"", "probability = 0.5",
                   "crop_aspect", "type 'aws'", "dataset_type 'conditioning'"):
        assert option in result.err, option
        assert option in header, option
    assert all(line.startswith("#") for line in header.splitlines())
    assert yaml.safe_load(result.out)["spec"]["training"].get("optimizer") is None


@pytest.mark.parametrize("config, expect", [
    ({"model_type": "lora", "model_family": "pixart_sigma"}, "model_type: \"lora\" is not supported"),
    ({"model_type": "full", "model_family": "flux"}, "model_family: \"flux\" is not supported"),
    ({"model_type": "full", "train_batch_size": "four"}, "train_batch_size: 'four' is not a number"),
    ({"model_type": "full", "gradient_checkpointing": "maybe"}, "gradient_checkpointing: 'maybe' is not a boolean"),
    ({"model_type": "full", "train_batch_size": 0}, "spec.training.batchSize: 0 is less than the minimum of 1"),
    (["not", "an", "object"], "expected a JSON object"),
])
def test_unconvertible_configs_exit_2(tmp_path, cli, config, expect):
    c, b = write_inputs(tmp_path, config, QUICKSTART_BACKENDS)
    result = cli("import-simpletuner", c, b)
    assert result.code == 2
    assert expect in result.err, result.err
    assert result.out == "" and "Traceback" not in result.err


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
    assert "hub_model_id 'simpletuner-lora' has no owner; push disabled" in result.err
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
