"""runner.smoke.checks: token variables, PVC names, Hub repos and the time budget.

The Hub checks run the real huggingface_hub client against the in-process fake Hub of
tests/fakehub.py (its repo-info endpoints, `GET /api/{models,datasets}/{id}[/revision/{rev}]`).
"""
from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from runner.smoke.checks import HubRepo, budget_check, hub_checks, hub_repos, token_checks
from runner.smoke.report import FAILED, PASSED, SKIPPED
from runner.spec.load import job_from_document
from tests.fakehub import FakeHub, Repo, point_client_at

REPO = Path(__file__).resolve().parents[2]
SECRET = "hf_smoke_secret_value_123"


def spec(**updates) -> dict:
    doc = yaml.safe_load((REPO / "examples" / "pixart-sigma-1024.yaml").read_text())
    doc["spec"].update(updates)
    return job_from_document(doc).document.to_dict()["spec"]


# ----------------------------------------------------------------------------- tokens

PUSH = {"hub": {"push": True, "repoId": "me/x", "tokenEnv": "TJ_HUB"}}
WANDB = {"wandb": {"enabled": True, "project": "p", "apiKeyEnv": "TJ_WANDB"}}


@pytest.mark.parametrize("updates, env, expected", [
    ({}, {}, []),  # nothing pushed, no W&B: no token is read
    ({"output": PUSH}, {"TJ_HUB": SECRET}, [("token variable TJ_HUB", PASSED)]),
    ({"output": PUSH}, {}, [("token variable TJ_HUB", FAILED)]),
    ({"output": PUSH}, {"TJ_HUB": ""}, [("token variable TJ_HUB", FAILED)]),
    ({"tracking": WANDB}, {}, [("token variable TJ_WANDB", FAILED)]),
    ({"output": PUSH, "tracking": WANDB}, {"TJ_WANDB": SECRET},
     [("token variable TJ_HUB", FAILED), ("token variable TJ_WANDB", PASSED)]),
    # filled from a Secret in the pod: not expected in the CI environment
    ({"output": PUSH, "kubernetes": {"secrets": {"hubToken": {"name": "hf", "key": "token"}}}}, {},
     [("token variable TJ_HUB", SKIPPED)]),
])
def test_token_variables_are_checked_for_being_set(updates, env, expected):
    found = token_checks(spec(**updates), env)
    assert [(c.name, c.status) for c in found] == expected
    for c in found:
        assert SECRET not in c.message
        if c.status == FAILED:
            assert "is not set or empty" in c.message and c.message.startswith("spec.")


# ----------------------------------------------------------------------------- PVCs

@pytest.mark.parametrize("name, ok", [
    ("training-data", True), ("data.v2", True), ("a", True), ("a" * 253, True),
    ("a" * 254, False), ("Training-Data", False), ("training_data", False), ("-data", False), ("data-", False),
    ("data..v2", False),
])
def test_pvc_names_are_dns_1123_subdomains_in_the_schema(name, ok):
    """The schema refuses them (validate, the CRD, and so the smoke, which starts from a valid spec)."""
    from runner.spec.errors import SpecError

    if ok:
        spec(kubernetes={"volumes": {"data": {"claimName": name}}})
        return
    with pytest.raises(SpecError, match="spec.kubernetes.volumes.data.claimName"):
        spec(kubernetes={"volumes": {"data": {"claimName": name}}})


# ----------------------------------------------------------------------------- hub

def test_the_repos_the_real_run_downloads():
    s = spec(evaluation={"clipScore": True})
    assert hub_repos(s) == [
        HubRepo("spec.model.pretrained", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", "model", "main"),
        HubRepo("spec.datasets[0].repo", "bghira/pseudo-camera-10k", "dataset", "main"),
        HubRepo("spec.evaluation.clipModel", "openai/clip-vit-large-patch14", "model", None),
    ]
    local = spec(model={"pretrained": "builtin:tiny-pixart-sigma"},
                 datasets=[{"name": "a", "type": "local", "path": "/data/a"}])
    assert hub_repos(local) == []


@pytest.fixture
def repo_hub(monkeypatch, tmp_path):
    """Known repos at known revisions answer 200, others 404 with the X-Error-Code the client turns
    into RepositoryNotFound/RevisionNotFound, gated ones 401."""
    with FakeHub(models={"org/model": Repo(revisions={"main", "v1"}), "org/gated": Repo(gated=True)},
                 datasets={"org/data": {}}) as hub:
        point_client_at(monkeypatch, tmp_path, hub.url)
        yield hub


def test_hub_repos_that_exist_pass_and_missing_ones_fail_with_the_field(repo_hub):
    repos = [HubRepo("spec.model.pretrained", "org/model", "model", "v1"),
             HubRepo("spec.datasets[0].repo", "org/data", "dataset", "main"),
             HubRepo("spec.datasets[1].repo", "org/missing", "dataset", "main"),
             HubRepo("spec.model.pretrained", "org/model", "model", "v9"),
             HubRepo("spec.evaluation.clipModel", "org/gated", "model", None)]
    found = hub_checks(repos, env={})
    assert [c.status for c in found] == [PASSED, PASSED, FAILED, FAILED, FAILED]
    assert ("GET", "/api/models/org/model/revision/v1") in repo_hub.calls()
    assert ("GET", "/api/datasets/org/data/revision/main") in repo_hub.calls()
    assert found[2].message.startswith("spec.datasets[1].repo: org/missing@main: no dataset repo")
    assert "has no revision 'v9'" in found[3].message
    assert "is gated" in found[4].message


def test_offline_skips_every_repo_without_asking(repo_hub):
    repos = [HubRepo("spec.model.pretrained", "org/model", "model", "main")]
    found = hub_checks(repos, env={"HF_HUB_OFFLINE": "1"})
    assert [c.status for c in found] == [SKIPPED]
    assert "HF_HUB_OFFLINE is set" in found[0].message and "spec.model.pretrained" in found[0].message
    assert repo_hub.requests == []


def test_an_unreachable_hub_skips_with_a_notice_and_does_not_wait_per_repo(monkeypatch, tmp_path):
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    point_client_at(monkeypatch, tmp_path, f"http://127.0.0.1:{port}")
    repos = [HubRepo("spec.model.pretrained", "org/model", "model", "main"),
             HubRepo("spec.datasets[0].repo", "org/data", "dataset", "main")]
    found = hub_checks(repos, env={}, timeout=2)
    assert [c.status for c in found] == [SKIPPED, SKIPPED]
    assert all("could not be reached" in c.message for c in found)


# ----------------------------------------------------------------------------- budget

TIMINGS = [("spec", 0.2), ("datasets", 1.0), ("tiny model", 3.0), ("cache stage", 2.0), ("train stage", 9.0)]


def test_within_the_budget_passes():
    c = budget_check(TIMINGS, 120)
    assert c.status == PASSED and c.message == "took 15.2s of 120s"


def test_over_the_budget_fails_naming_the_slowest_part():
    c = budget_check(TIMINGS, 10)
    assert c.status == FAILED
    assert "took 15.2s, over the 10s budget; slowest part: train stage (9.0s, 59%)" in c.message
    assert "validation" in c.message  # what to change


def test_no_budget_is_skipped():
    assert budget_check(TIMINGS, 0).status == SKIPPED


def test_an_enabled_trackers_package_is_checked(tmp_path, monkeypatch):
    """The smoke passed a W&B spec whose real run then stopped at once: wandb not installed."""
    import importlib
    import sys

    from runner.smoke.checks import package_checks

    assert package_checks(spec()) == []  # W&B off: nothing to check
    on = spec(tracking=WANDB)
    [check] = package_checks(on)
    installed = importlib.util.find_spec("wandb") is not None
    assert check.status == (PASSED if installed else FAILED)
    if not installed:
        assert "the wandb package is not installed; pip install wandb" in check.message
        (tmp_path / "wandb").mkdir()  # a real package on the path: the import system finds it
        (tmp_path / "wandb" / "__init__.py").write_text("")
        monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
        importlib.invalidate_caches()
        [check] = package_checks(on)
        assert check.status == PASSED
