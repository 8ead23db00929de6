"""Secrets never leak through what the light commands print.

- `import-simpletuner` names unmapped options but never prints their values; values of
  secret-looking options are hidden everywhere it prints (stderr, YAML comments, YAML body).
- A token pasted where the NAME of an environment variable (or of a Kubernetes Secret)
  belongs is refused, and the refusal does not echo the token.
"""
from __future__ import annotations

import json

import pytest
import yaml

from runner.spec import redact
from runner.spec import schema as schema_mod

# SimpleTuner's own config/multidatabackend.json.example (bghira/SimpleTuner), verbatim: a local
# dataset, an S3 dataset and an S3 text-embed cache with credentials, and a local text-embed cache.
SIMPLETUNER_BACKENDS_EXAMPLE = """\
[
    {
        "id": "something-special-to-remember-by",
        "type": "local",
        "instance_data_dir": "/path/to/data/tree",
        "crop": false,
        "crop_style": "random|center|corner",
        "crop_aspect": "square|preserve",
        "minimum_image_size": 1024,
        "maximum_image_size": 1536,
        "target_downsample_size": 1024,
        "resolution": 1024,
        "resolution_type": "pixel_area|area|pixel",
        "prepend_instance_prompt": false,
        "instance_prompt": "cat girls",
        "only_instance_prompt": false,
        "caption_strategy": "filename",
        "cache_dir_vae": "/path/to/vaecache",
        "vae_cache_clear_each_epoch": true,
        "probability": 1.0,
        "repeats": 5,
        "text_embeds": "alt-embed-cache",
        "skip_file_discovery": "vae,aspect,text,metadata",
        "preserve_data_backend_cache": true
    },
    {
        "id": "another-special-name-for-another-backend",
        "type": "aws",
        "aws_bucket_name": "something-yummy",
        "aws_region_name": null,
        "aws_endpoint_url": "https://foo.bar/",
        "aws_access_key_id": "wpz-764e9734523434",
        "aws_secret_access_key": "xyz-sdajkhfhakhfjd",
        "aws_data_prefix": "",
        "cache_dir_vae": "s3prefix/for/vaecache",
        "vae_cache_clear_each_epoch": true,
        "repeats": 2,
        "ignore_epochs": false
    },
    {
        "id": "an example backend for text embeds.",
        "dataset_type": "text_embeds",
        "default": true,
        "type": "aws",
        "aws_bucket_name": "textembeds-something-yummy",
        "aws_region_name": null,
        "aws_endpoint_url": "https://foo.bar/",
        "aws_access_key_id": "wpz-764e9734523434",
        "aws_secret_access_key": "xyz-sdajkhfhakhfjd",
        "aws_data_prefix": "",
        "cache_dir": ""
    },
    {
        "id": "alt-embed-cache",
        "dataset_type": "text_embeds",
        "default": false,
        "type": "local",
        "cache_dir": "/path/to/textembed_cache"
    }
]
"""
HF_TOKEN = "hf_QmV7zLp2XcN9rT4wY8sK1dF6gH3jA5bE0uIo"
WANDB_KEY = "3f9c2a7e5b1d8c4f6a0e9b2d7c5a1f3e8b6d4c2a"
WEBHOOK_URL = "https://discord.com/api/webhooks/1234567890/s3cretW3bhookT0kenXYZ"
SECRET_VALUES = ("wpz-764e9734523434", "xyz-sdajkhfhakhfjd", HF_TOKEN, WANDB_KEY, "s3cretW3bhookT0kenXYZ",
                 "hunter2-db-password")
CONFIG = {
    "model_type": "full", "model_family": "pixart_sigma",
    "pretrained_model_name_or_path": "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",
    "output_dir": "output/models", "max_train_steps": 100,
    "hub_token": HF_TOKEN, "wandb_api_key": WANDB_KEY,
    "webhook_config": {"webhook_type": "discord", "webhook_url": WEBHOOK_URL},
    "--db_password": "hunter2-db-password",
}


def write_inputs(tmp_path, config, backends_text):
    c, b = tmp_path / "config.json", tmp_path / "multidatabackend.json"
    c.write_text(json.dumps(config))
    b.write_text(backends_text)
    return c, b


def assert_no_secret(text: str) -> None:
    for value in SECRET_VALUES:
        assert value not in text, f"secret value {value!r} printed:\n{text}"


# ----------------------------------------------------------------------------- import-simpletuner

def test_simpletuners_own_example_never_prints_its_credentials(tmp_path, cli):
    # Verbatim, the example's placeholders ("pixel_area|area|pixel") cannot be converted: the
    # import fails, and the failure must not print the credentials either.
    c, b = write_inputs(tmp_path, CONFIG, SIMPLETUNER_BACKENDS_EXAMPLE)
    result = cli("import-simpletuner", c, b)
    assert result.code == 2
    assert "resolution_type" in result.err
    assert_no_secret(result.text)


def test_unmapped_options_are_named_with_their_values_hidden(tmp_path, cli):
    backends = SIMPLETUNER_BACKENDS_EXAMPLE.replace('"pixel_area|area|pixel"', '"pixel_area"')
    c, b = write_inputs(tmp_path, CONFIG, backends)
    out = tmp_path / "job.yaml"
    result = cli("import-simpletuner", c, b, "--output", out)
    assert result.code == 0, result.err
    written = out.read_text()
    assert_no_secret(result.text)
    assert_no_secret(written)
    header = written.split("apiVersion:")[0]
    # Every unmapped option is still listed, by name, on stderr and atop the YAML.
    for key in ("hub_token", "wandb_api_key", "webhook_config", "db_password", "skip_file_discovery",
                "probability", "vae_cache_clear_each_epoch"):
        assert key in result.err, key
        assert key in header, key
    # The S3 backends have no equivalent at all: named, none of their options listed.
    assert "another-special-name-for-another-backend" in result.err
    assert "aws_access_key_id" not in result.err
    # The local text-embed cache is used instead of the S3 one marked default.
    assert yaml.safe_load(written)["spec"]["textEmbeds"]["cacheDir"] == "/path/to/textembed_cache"


def test_no_unmapped_value_is_printed_even_when_it_looks_harmless(tmp_path, cli):
    # An unknown option can hold anything; the converter cannot tell, so it prints the name only.
    config = dict(CONFIG, lora_rank=64, some_new_option="value-the-converter-does-not-understand")
    c, b = write_inputs(tmp_path, config, SIMPLETUNER_BACKENDS_EXAMPLE.replace('"pixel_area|area|pixel"',
                                                                                '"pixel_area"'))
    result = cli("import-simpletuner", c, b)
    assert result.code == 0, result.err
    assert "some_new_option" in result.err and "value-the-converter-does-not-understand" not in result.text
    assert "lora_rank" in result.err and "lora_rank = 64" not in result.text


def test_a_repeated_secret_option_is_noted_without_its_value(tmp_path, cli):
    text = json.dumps(CONFIG)[:-1] + f', "--hub_token": "{HF_TOKEN}x"}}'
    c, b = write_inputs(tmp_path, {}, SIMPLETUNER_BACKENDS_EXAMPLE.replace('"pixel_area|area|pixel"', '"pixel_area"'))
    c.write_text(text)
    result = cli("import-simpletuner", c, b)
    assert result.code == 0, result.err
    assert "repeats option hub_token" in result.err
    assert_no_secret(result.text)


# ----------------------------------------------------------------------------- the spec

SPEC = """\
apiVersion: diffusion.runner.dev/v1alpha1
kind: TrainingJob
metadata:
  name: leak
spec:
  datasets:
    - name: photos
      type: samples
  training:
    maxSteps: 10
"""


def spec_with(tmp_path, **fields) -> str:
    doc = yaml.safe_load(SPEC)
    for path, value in fields.items():
        node = doc
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    out = tmp_path / "job.yaml"
    out.write_text(yaml.safe_dump(doc))
    return str(out)


@pytest.mark.parametrize("field, value", [
    ("spec.output.hub.tokenEnv", HF_TOKEN),
    ("spec.tracking.wandb.apiKeyEnv", WANDB_KEY),
    ("spec.tracking.wandb.apiKeyEnv", "hf_token"),  # a lowercase name is no convention either
])
def test_a_secret_where_an_env_var_name_belongs_is_refused_without_echo(tmp_path, cli, field, value):
    result = cli("validate", spec_with(tmp_path, **{field: value}))
    assert result.code == 2
    assert f"{field}: " in result.err
    assert "must be the name of an environment variable, not the token itself" in result.err
    assert value not in result.text


@pytest.mark.parametrize("field", ["spec.output.hub.tokenEnv", "spec.tracking.wandb.apiKeyEnv"])
def test_a_secret_set_on_the_command_line_is_refused_without_echo(tmp_path, cli, field):
    result = cli("validate", spec_with(tmp_path), "--set", f"{field}={HF_TOKEN}")
    assert result.code == 2 and field in result.err
    assert HF_TOKEN not in result.text


@pytest.mark.parametrize("value", [
    "AKIAIOSFODNN7EXAMPLE",  # an AWS access key id is a valid-looking upper-case name
    "HF_" + "QMV7ZLP2XCN9RT4WY8SK1DF6GH3JA5BE0UIO",
])
def test_an_upper_case_token_is_refused_too(tmp_path, cli, value):
    result = cli("validate", spec_with(tmp_path, **{"spec.output.hub.tokenEnv": value}))
    assert result.code == 2
    assert "spec.output.hub.tokenEnv: " in result.err and "looks like a secret" in result.err
    assert value not in result.text


@pytest.mark.parametrize("field, value, expect", [
    ("spec.kubernetes.secrets.hubToken.name", HF_TOKEN, "name of a Kubernetes Secret"),
    ("spec.kubernetes.secrets.wandbApiKey.name", WANDB_KEY, "looks like a secret"),
    ("spec.kubernetes.secrets.wandbApiKey.key", WANDB_KEY, "looks like a secret"),
    ("spec.kubernetes.secrets.hubToken.key", "token value/with spaces", "key inside a Kubernetes Secret"),
])
def test_kubernetes_secret_references_follow_kubernetes_name_rules(tmp_path, cli, field, value, expect):
    ref = {"name": "hf-token", "key": "token"}
    *parent, leaf = field.split(".")
    result = cli("validate", spec_with(tmp_path, **{".".join(parent): {**ref, leaf: value}}))
    assert result.code == 2
    assert f"{field}: " in result.err and expect in result.err
    assert value not in result.text


def test_valid_references_still_validate(tmp_path, cli):
    path = spec_with(tmp_path, **{"spec.output.hub.tokenEnv": "MY_HF_TOKEN", "spec.tracking.wandb.apiKeyEnv": "WANDB_KEY_2",
                                  "spec.kubernetes.secrets.hubToken": {"name": "hf.token-1", "key": "HF_TOKEN"}})
    result = cli("validate", path)
    assert result.code == 0, result.err


def test_every_env_var_and_secret_reference_field_is_constrained():
    """The rule holds for every such field of the schema, including ones added later."""
    env_fields = [p for p, _ in schema_mod.iter_fields() if p.endswith("Env")]
    assert len(env_fields) >= 2
    for path in env_fields:
        assert schema_mod.subschema(path)["pattern"] == "^[A-Z_][A-Z0-9_]*$", path
    refs = [p for p, _ in schema_mod.iter_fields() if p.startswith("spec.kubernetes.secrets.") and p.count(".") == 4]
    assert {p.rsplit(".", 1)[1] for p in refs} == {"name", "key"}
    for path in refs:
        node = schema_mod.subschema(path)
        # Kubernetes: a Secret's name is a DNS-1123 subdomain; a key is letters, digits, '-', '_', '.'.
        expected = ("^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$" if path.endswith(".name")
                    else "^[-._a-zA-Z0-9]+$")
        assert (node["pattern"], node["maxLength"]) == (expected, 253), path


# ----------------------------------------------------------------------------- the one predicate

@pytest.mark.parametrize("name, secret", [
    ("hub_token", True), ("--hub-token", True), ("wandb_api_key", True), ("aws_access_key_id", True),
    ("aws_secret_access_key", True), ("webhook_config", True), ("db_password", True), ("PASSWD", True),
    ("credentials_file", True), ("tokenEnv", True), ("apiKeyEnv", True), ("hubToken", True),
    ("spec.kubernetes.secrets.hubToken.name", True), ("HF_TOKEN", True), ("auth_header", True),
    ("tokenizer_max_length", False), ("keep_top_k", False), ("monkey", False), ("caption_strategy", False),
    ("resolution", False), ("spec.output.dir", False), ("validation_prompt", False),
])
def test_looks_secret_by_name(name, secret):
    assert redact.looks_secret(name) is secret


@pytest.mark.parametrize("value, secret", [
    (HF_TOKEN, True), (WANDB_KEY, True), ("AKIAIOSFODNN7EXAMPLE", True), ("sk-" + "a1B2" * 8, True),
    ("ghp_" + "x9Y8" * 9, True), (WEBHOOK_URL, True), ("https://user:pa55word@host/x", True),
    ("HF_TOKEN", False), ("WANDB_API_KEY", False), ("cache/text", False), ("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", False),
    ("a photo of a cat", False), (1024, False), (None, False), ("main", False),
])
def test_looks_like_a_secret_value(value, secret):
    assert redact.looks_like_secret_value(value) is secret


def test_show_hides_by_name_or_by_value():
    assert redact.show("hub_token", "abc") == redact.HIDDEN
    assert redact.show("hub_model_id", HF_TOKEN) == redact.HIDDEN
    assert redact.show("hub_model_id", "me/model") == '"me/model"'
    assert redact.show("nested", {"url": WEBHOOK_URL}) == redact.HIDDEN
    assert len(redact.show("long", "x" * 500)) <= 80
