"""The GitHub workflow's own commands, run in a fresh clone of this repository.

A commit in the clone changes one TrainingJob (examples/smoke.yaml) and one YAML file that is
not a TrainingJob; then every `run:` step of examples/ci/github-actions.yml runs as Actions runs
it (`bash --noprofile --norc -eo pipefail`), in order, with the step's env. What is not run:
the `uses:` steps (checkout, setup-python, upload-artifact: GitHub's own actions) and
"Install trainingjob", which needs the network; this test's virtualenv stands in for it (its
bin/ first on PATH). `${{ }}` expressions get what GitHub would put there: the base commit,
and empty secrets.
"""
from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = Path("examples") / "ci" / "github-actions.yml"
NEEDS_NETWORK = {"Install trainingjob"}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=ci", "-c", "user.email=ci@example.invalid", *args], cwd=cwd,
                          check=True, capture_output=True, text=True, timeout=120).stdout.strip()


def expression(name: str, value: str, base: str) -> str:
    if "${{" not in str(value):
        return str(value)
    if "secrets." in value:
        return ""  # a secret nobody defined, as on a fork's pull request
    if name == "BASE":
        return base
    raise AssertionError(f"the test does not know what GitHub puts in {name}: {value}")


def test_the_workflow_steps_run_in_a_fresh_clone(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    base = git(clone, "rev-parse", "HEAD")
    spec = clone / "examples" / "smoke.yaml"
    spec.write_text(spec.read_text() + "# changed by the CI workflow test\n")
    (clone / "ci-notes.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n")
    git(clone, "add", "-A")
    git(clone, "commit", "-q", "-m", "change a TrainingJob and a YAML file that is not one")

    workflow = yaml.safe_load((clone / WORKFLOW).read_text())
    job = workflow["jobs"]["trainingjobs"]
    runner_temp = tmp_path / "runner-temp"
    runner_temp.mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "RUNNER_TEMP": str(runner_temp), "HF_HUB_OFFLINE": "1", "CI": "true"}
    env.pop("HF_TOKEN", None)
    env.update({k: expression(k, v, base) for k, v in workflow.get("env", {}).items()})

    ran = []
    for i, step in enumerate(job["steps"]):
        if "run" not in step or step.get("name") in NEEDS_NETWORK:
            continue
        script = tmp_path / f"step-{i}.sh"
        script.write_text(step["run"])
        step_env = {**env, **{k: expression(k, v, base) for k, v in step.get("env", {}).items()}}
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=clone,
                              env=step_env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"step {step['name']!r}:\n{(proc.stdout + proc.stderr)[-4000:]}"
        ran.append((step["name"], proc.stdout))
    names = [name for name, _ in ran]
    assert names == ["Find the changed TrainingJobs", "Validate", "Smoke run on the CPU",
                     "Render and check the Kubernetes manifests"]
    out = dict(ran)

    # Only the changed TrainingJob, not the other YAML file.
    assert (runner_temp / "trainingjobs.txt").read_text() == "examples/smoke.yaml\n"
    assert "examples/smoke.yaml: valid TrainingJob 'smoke'" in out["Validate"]
    assert "smoke run passed" in out["Smoke run on the CPU"]
    report = ET.parse(clone / "smoke-reports" / "examples_smoke.xml").getroot().find("testsuite")
    assert report.attrib["failures"] == "0" and int(report.attrib["tests"]) >= 6
    # smoke.yaml is local-only (no spec.kubernetes.volumes): not rendered, and said so.
    assert "examples/smoke.yaml: no spec.kubernetes.volumes" in out["Render and check the Kubernetes manifests"]

    # The same step on a cluster spec: render | kubernetes-validate --strict, every object checked.
    render_step = next(s for s in job["steps"] if s.get("name") == "Render and check the Kubernetes manifests")
    (runner_temp / "trainingjobs.txt").write_text("k8s/example-trainingjob.yaml\n")
    script = tmp_path / "render.sh"
    script.write_text(render_step["run"])
    proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "not rendered" not in proc.stdout
    for kind in ("configmap", "job", "service"):
        assert f"passed for resource {kind}/" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
