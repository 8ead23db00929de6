"""Hub publishing: the token comes only from the environment and never reaches text we write."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from runner.spec.load import job_from_document
from runner.train.publish import PublishError, hub_token, model_card

REPO = Path(__file__).resolve().parents[2]
SECRET = "hf_SuperSecretTokenValue1234567890"


def _document(**hub) -> dict:
    doc = yaml.safe_load((REPO / "examples" / "smoke.yaml").read_text())
    doc["spec"]["output"]["hub"] = {"push": True, "repoId": "me/pixart-ft", **hub}
    return job_from_document(doc).document.to_dict()


DOC = _document()


@pytest.mark.parametrize("env_name", ["HF_TOKEN", "MY_CUSTOM_HUB_TOKEN"])
def test_hub_token_missing(monkeypatch, capsys, env_name: str) -> None:
    monkeypatch.delenv(env_name, raising=False)
    monkeypatch.setenv("HF_TOKEN_OTHER", SECRET)  # a token elsewhere must not leak into the message
    with pytest.raises(PublishError) as info:
        hub_token({"tokenEnv": env_name})
    msg = str(info.value)
    assert env_name in msg and "empty" in msg
    assert SECRET not in msg
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err


@pytest.mark.parametrize("value", ["", None])
def test_hub_token_empty_is_missing(monkeypatch, value) -> None:
    if value is None:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    else:
        monkeypatch.setenv("HF_TOKEN", value)
    with pytest.raises(PublishError, match="HF_TOKEN"):
        hub_token({"tokenEnv": "HF_TOKEN"})


@pytest.mark.parametrize("env_name", ["HF_TOKEN", "MY_CUSTOM_HUB_TOKEN"])
def test_hub_token_set(monkeypatch, capsys, env_name: str) -> None:
    monkeypatch.setenv(env_name, SECRET)
    assert hub_token({"tokenEnv": env_name}) == SECRET
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err


def test_hub_token_reads_the_named_variable_only(monkeypatch) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.delenv("OTHER_TOKEN", raising=False)
    with pytest.raises(PublishError, match="OTHER_TOKEN"):
        hub_token({"tokenEnv": "OTHER_TOKEN"})


def test_hub_token_defaults_from_spec(monkeypatch) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    assert DOC["spec"]["output"]["hub"]["tokenEnv"] == "HF_TOKEN"
    assert hub_token(DOC["spec"]["output"]["hub"]) == SECRET


@pytest.mark.parametrize("images", [
    [],
    [Path("/out/validation/step-20-0-a_cat.png")],
    [Path("/out/validation/step-20-0.png"), Path("/x/step-20-1.png")],
])
def test_model_card(images: list[Path]) -> None:
    card = model_card(DOC, images, "me/pixart-ft")
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "base_model: builtin:tiny-pixart-sigma" in front
    assert "library_name: diffusers" in front
    assert body.startswith("# me/pixart-ft")
    assert "`builtin:tiny-pixart-sigma`" in body
    for p in images:
        assert f"![{p.stem}](validation/{p.name})" in card
    assert card.count("![") == len(images)
    # The TrainingJob YAML is embedded and parses back to the document, but for spec.kubernetes.
    yaml_block = card.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(yaml_block) == {**DOC, "spec": {k: v for k, v in DOC["spec"].items() if k != "kubernetes"}}
    # model_card never reads the environment: that the token stays out of the card is shown by
    # the push tests in test_publish_hub.py, on the code path that reads it.


def test_model_card_base_model_from_document() -> None:
    doc = copy.deepcopy(DOC)
    doc["spec"]["model"]["pretrained"] = "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"
    card = model_card(doc, [], "me/x")
    assert "base_model: PixArt-alpha/PixArt-Sigma-XL-2-1024-MS" in card
    assert "tiny-pixart-sigma" not in card.split("```yaml")[0]


# What describes the cluster, not the model: a mirror, a proxy, node labels, pod labels and annotations.
POD_OPTIONS = {"env": [{"name": "HF_ENDPOINT", "value": "https://hub-mirror.corp.internal"},
                       {"name": "HTTPS_PROXY", "value": "http://proxy.corp.internal:3128"}],
               "podMetadata": {"labels": {"team": "vision-secret-project"},
                               "annotations": {"cost-center": "cc-4711"}},
               "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                   {"matchExpressions": [{"key": "corp.internal/gpu-pool", "operator": "In",
                                          "values": ["h200-a"]}]}]}}},
               "volumes": {"cache": {"claimName": "corp-cache"}, "output": {"claimName": "corp-output"}}}
CLUSTER_WORDS = ("hub-mirror", "proxy.corp", "vision-secret-project", "cc-4711", "gpu-pool", "corp-cache",
                 "kubernetes:")


def _with_pod_options():
    doc = yaml.safe_load((REPO / "examples" / "smoke.yaml").read_text())
    doc["spec"]["output"]["hub"] = {"push": True, "repoId": "me/pixart-ft"}
    doc["spec"]["kubernetes"] = copy.deepcopy(POD_OPTIONS)
    return job_from_document(doc)


def test_the_model_card_and_the_exported_spec_leave_the_pod_options_out() -> None:
    """The card went to a possibly public Hub repo with the whole job document: env values, pod
    labels and annotations, affinity. The run's own effective spec keeps them."""
    job = _with_pod_options()
    card = model_card(job.document.to_dict(), [], "me/pixart-ft")
    exported = job.effective_yaml(exported=True).decode()
    for text in (card, exported):
        assert not [w for w in CLUSTER_WORDS if w in text], text
    assert yaml.safe_load(exported) == yaml.safe_load(card.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert yaml.safe_load(exported)["spec"]["training"] == job.document.to_dict()["spec"]["training"]
    own = job.effective_yaml().decode()  # trainingjob.effective.yaml, on the run's own disk
    assert yaml.safe_load(own)["spec"]["kubernetes"]["env"] == POD_OPTIONS["env"]
