"""Hub repo ids in a spec (spec.output.hub.repoId, spec.datasets[].repo, spec.model.pretrained)
are checked by `validate` against the Hub's rules, so a bad id fails before the download or
the push, not after all the training."""
from __future__ import annotations

import pytest
import yaml
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from runner.spec.names import repo_id_problem
from runner.spec.validate import validate_document
from tests.unit.conftest import MINIMAL_SPEC

VALID = ["me/pixart-sigma-finetune", "Org_1/Foo-BAR_foo.bar123", "me/a.b-c_d", "me/_x_", "me/a-.b",
         "me/" + "x" * 96, "x" * 96 + "/y"]
# (id, the rule it breaks, as the problem line words it)
INVALID = [
    ("me/a--b", "'--' and '..' are not allowed"),
    ("me/a..b", "'--' and '..' are not allowed"),
    ("me/model.git", "must not end in '.git'"),
    ("me/" + "x" * 97, "at most 96 each"),
    ("me/a.", "start and end with a letter, digit or '_'"),
    ("me/-a", "start and end with a letter, digit or '_'"),
    ("me/a b", "only letters, digits, '-', '_' and '.'"),
    ("datasets/me/x", "one '/'"),
]


def _spec(field: str, repo_id: str) -> dict:
    doc = yaml.safe_load(MINIMAL_SPEC)
    spec = doc["spec"]
    if field == "spec.output.hub.repoId":
        spec["output"] = {"hub": {"push": True, "repoId": repo_id}}
    elif field == "spec.datasets[0].repo":
        spec["datasets"][0] = {"name": "photos", "type": "huggingface", "repo": repo_id}
    else:
        spec["model"] = {"pretrained": repo_id}
    return doc


FIELDS = ["spec.output.hub.repoId", "spec.datasets[0].repo", "spec.model.pretrained"]


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("repo_id", VALID)
def test_valid_repo_ids_pass(field, repo_id):
    _, problems, _ = validate_document(_spec(field, repo_id), "job.yaml")
    assert problems == []


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("repo_id, rule", INVALID, ids=[i for i, _ in INVALID])
def test_invalid_repo_ids_name_the_field_and_the_rule(field, repo_id, rule):
    _, problems, _ = validate_document(_spec(field, repo_id), "job.yaml")
    mine = [p for p in problems if p.startswith(f"job.yaml: {field}: ")]
    assert len(mine) == 1, problems
    if "does not match the required pattern" in mine[0]:  # the schema's pattern refuses it first
        assert field != "spec.model.pretrained"
    else:
        assert "is not a valid Hub repo id" in mine[0] and rule in mine[0], mine[0]


def test_the_cli_refuses_a_bad_push_target(tmp_path, cli):
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(_spec("spec.output.hub.repoId", "me/finetune.git")))
    result = cli("validate", spec)
    assert result.code == 2
    assert (f"{spec}: spec.output.hub.repoId: \"me/finetune.git\" is not a valid Hub repo id: "
            "it must not end in '.git'") in result.err


def test_a_pretrained_folder_that_exists_is_not_read_as_a_repo_id(tmp_path, monkeypatch):
    (tmp_path / "runs" / "a..b").mkdir(parents=True)
    (tmp_path / "runs" / "a..b" / "model_index.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    _, problems, _ = validate_document(_spec("spec.model.pretrained", "runs/a..b"), "job.yaml")
    assert problems == []


@pytest.mark.parametrize("repo_id", VALID + [i for i, _ in INVALID] + ["gpt2", "a", "/x", "x/", ".x/y", "me/y_.git"])
def test_the_rules_agree_with_huggingface_hub(repo_id):
    try:
        validate_repo_id(repo_id)
        hub_accepts = True
    except HFValidationError:
        hub_accepts = False
    assert (repo_id_problem(repo_id) is None) == hub_accepts
