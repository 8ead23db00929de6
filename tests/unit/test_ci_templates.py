"""The CI templates in examples/ci and the pre-commit hook parse and say what they should.

actionlint (with shellcheck for the run: scripts) lints the GitHub workflow; the GitLab job gets
a YAML and structure check and shellcheck over its script. tests/e2e/test_ci_workflow_run.py
runs the workflow's steps in a fresh clone.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WORKFLOW = REPO / "examples" / "ci" / "github-actions.yml"
GITLAB = REPO / "examples" / "ci" / "gitlab-ci.yml"
HOOKS = REPO / ".pre-commit-hooks.yaml"


def tool(name: str) -> str:
    path = BIN / name
    assert path.is_file(), f"{name} is missing from {BIN}: run `make install` (it is pinned in the dev extra)"
    return str(path)


def actionlint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([tool("actionlint"), "-no-color", "-shellcheck", tool("shellcheck"), str(path)],
                          capture_output=True, text=True, timeout=120)


def test_actionlint_passes_the_workflow():
    proc = actionlint(WORKFLOW)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr


@pytest.mark.parametrize("broken, finding", [
    ("runs-on: ubuntu-latest", "runs_on: ubuntu-latest"),  # an unknown key
    ('trainingjob validate "${specs[@]}"', "trainingjob validate ${specs[@]}"),  # shellcheck: unquoted array
])
def test_actionlint_would_catch_a_broken_copy(tmp_path, broken, finding):
    text = WORKFLOW.read_text()
    assert broken in text
    copy = tmp_path / "workflow.yml"
    copy.write_text(text.replace(broken, finding))
    assert actionlint(copy).returncode == 1


def test_the_workflow_runs_the_three_commands_on_changed_trainingjobs():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    steps = workflow["jobs"]["trainingjobs"]["steps"]
    runs = "\n".join(step.get("run", "") for step in steps)
    for command in ("trainingjob validate", "trainingjob run \"$file\" --smoke --junit",
                    "trainingjob render \"$file\"", "kubernetes-validate"):
        assert command in runs
    assert workflow[True]["pull_request"]["paths"] == ["**.yaml", "**.yml"]  # YAML 1.1 reads `on` as True
    upload = next(step for step in steps if step.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and upload["with"]["path"] == "smoke-reports/"


def test_the_gitlab_job_parses_and_its_script_passes_shellcheck(tmp_path):
    config = yaml.safe_load(GITLAB.read_text())
    job = config["trainingjob"]
    assert set(job) <= {"stage", "image", "variables", "rules", "before_script", "script", "artifacts"}
    assert all(isinstance(line, str) for line in job["before_script"] + job["script"])
    script = "\n".join(job["script"])
    for command in ("trainingjob validate", "trainingjob run \"$file\" --smoke --junit",
                    "trainingjob render \"$file\"", "kubernetes-validate"):
        assert command in script
    # GitLab runs every entry in one shell: an `exit` would skip the entries after it.
    assert not re.search(r"^\s*exit\b", script, re.M)
    assert job["artifacts"]["reports"]["junit"] == "smoke-reports/*.xml" and "smoke-reports/" in script
    assert {r["if"] for r in job["rules"]} == {'$CI_PIPELINE_SOURCE == "merge_request_event"',
                                              "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"}
    sh = tmp_path / "gitlab.sh"
    sh.write_text("#!/bin/bash\n" + script + "\n")
    proc = subprocess.run([tool("shellcheck"), str(sh)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout


def test_the_pre_commit_hook_validates_the_files_it_matches(tmp_path):
    hooks = yaml.safe_load(HOOKS.read_text())
    hook = next(h for h in hooks if h["id"] == "trainingjob-validate")
    assert hook["language"] == "python" and hook["entry"].split()[0] == "trainingjob"
    files = re.compile(hook["files"])
    matched = ["trainingjobs/a.yaml", "team/trainingjob/b.yml", "pixart.trainingjob.yaml"]
    for path in matched:
        assert files.search(path), path
    for path in (".gitlab-ci.yml", "k8s/crd.yaml", "examples/ci/github-actions.yml", "trainingjobs.md"):
        assert not files.search(path), path

    # The entry, as pre-commit calls it: the matched files as arguments.
    good = tmp_path / "trainingjobs" / "smoke.yaml"
    good.parent.mkdir()
    shutil.copy(REPO / "examples" / "smoke.yaml", good)
    bad = tmp_path / "trainingjobs" / "bad.yaml"
    bad.write_text(good.read_text().replace("maxSteps: 20", "maxSteps: -1"))
    argv = [str(BIN / shlex.split(hook["entry"])[0])] + shlex.split(hook["entry"])[1:]
    ok = subprocess.run(argv + [str(good)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    failed = subprocess.run(argv + [str(good), str(bad)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 2 and f"{bad}: spec.training.maxSteps: -1 is less than the minimum of 1" in failed.stderr
