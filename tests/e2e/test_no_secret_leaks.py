"""A planted token never leaves the environment: a whole run, pushed to a (fake) Hub, writes
it nowhere.

The smoke job runs as two workers (so the launcher writes `trainingjob.effective.yaml`) and
pushes to the fake Hub of tests/fakehub.py (so the model card is written), with
HF_TOKEN and WANDB_API_KEY set to distinctive values and named in the spec. Then neither value
may appear in stdout/stderr, in any file under the output and cache dirs (model card, cache
manifests, effective spec, trainer_state.json, TensorBoard events, images.json, checkpoints),
nor in anything uploaded. The Hub's Authorization header is the control: it must carry the
token, which shows the run really read the variable the spec names.

The Kubernetes manifests are checked the same way: `trainingjob render` (the builder the
operator uses too, runner/k8s/build.py) run with both tokens in its environment must print
neither; the pods get them only through secretKeyRef to the Secrets the spec names.
"""
from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runner.spec.plan import exported_document
from tests.e2e.conftest import REPO, assert_clean
from tests.fakehub import FakeHub

pytestmark = pytest.mark.e2e

HF_TOKEN = "hf_LeakCanary7Qz3Xv9Wm2Kp8Rt5Yn4Bd6Fg1Hj"
WANDB_KEY = "c0ffee5eed1eafc0de5ca1ab1ef00d5a1ad0b0e7"


def planted_forms(value: str) -> list[bytes]:
    """The token as it could be written: plain UTF-8, UTF-16 (some loggers) and base64 (HTTP bodies)."""
    raw = value.encode()
    return [raw, value.encode("utf-16-le"), base64.b64encode(raw), base64.b64encode(raw).rstrip(b"=")]


def leaks_in(root: Path) -> list[str]:
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        data = path.read_bytes()
        found += [f"{path.relative_to(root)}: {token[:8]}..." for token in (HF_TOKEN, WANDB_KEY)
                  if any(form in data for form in planted_forms(token))]
    return found


@pytest.fixture
def hub():
    with FakeHub() as fake:
        yield fake


def test_a_planted_token_is_never_written_or_printed(runner, hub, tmp_path):
    env = {k: v for k, v in runner.env().items() if k != "HF_HUB_OFFLINE"}  # the push needs the (fake) Hub
    env.update(HF_TOKEN=HF_TOKEN, WANDB_API_KEY=WANDB_KEY, HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HOME=str(tmp_path / "hf-home"), NO_PROXY="127.0.0.1,localhost",
               no_proxy="127.0.0.1,localhost")
    sets = ("spec.hardware.gpusPerNode=2", "spec.training.batchSize=1", "spec.training.maxSteps=4",
            "spec.training.checkpointEvery=2", "spec.validation.every=4", "spec.validation.resolutions=128x128",
            "spec.output.hub.push=true", "spec.output.hub.repoId=me/leak-check", "spec.output.hub.tokenEnv=HF_TOKEN",
            "spec.tracking.wandb.apiKeyEnv=WANDB_API_KEY",
            "spec.kubernetes.secrets.hubToken={name: hf-token, key: token}")
    proc = subprocess.run(runner.args(*sets), cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert_clean(proc)
    assert "pushed to the Hub" in proc.stdout + proc.stderr

    # The control: the token was read from the variable the spec names and sent where it belongs.
    auth = {r["headers"].get("authorization") for r in hub.repo_requests()}
    assert auth == {f"Bearer {HF_TOKEN}"}, auth

    for token in (HF_TOKEN, WANDB_KEY):
        assert token not in proc.stdout and token not in proc.stderr
    written = {p.relative_to(runner.out).as_posix() for p in runner.out.rglob("*") if p.is_file()}
    for expected in ("trainingjob.effective.yaml", "model/README.md", "model/trainingjob.yaml",
                     "checkpoints/step-4/trainer_state.json"):
        assert expected in written, sorted(written)
    # written by worker 0 from the spec it read: the launcher's effective spec, without spec.kubernetes
    effective = yaml.safe_load((runner.out / "trainingjob.effective.yaml").read_text())
    assert yaml.safe_load((runner.out / "model" / "trainingjob.yaml").read_text()) == exported_document(effective)
    assert effective["spec"]["kubernetes"]["secrets"] == {"hubToken": {"name": "hf-token", "key": "token"}}
    assert any(p.startswith("logs/") for p in written) and any(p.endswith("images.json") for p in written)
    assert list((runner.cache / "manifests").glob("*.json"))
    assert leaks_in(runner.out) == [] and leaks_in(runner.cache) == []

    [commit] = hub.commits
    assert "README.md" in commit["files"]
    uploaded = [name for name, data in commit["files"].items()
                for token in (HF_TOKEN, WANDB_KEY) if any(f in data for f in planted_forms(token))]
    assert uploaded == []
    bodies = b"".join(r["body"] for r in hub.requests)
    assert not any(f in bodies for token in (HF_TOKEN, WANDB_KEY) for f in planted_forms(token))
    assert os.environ.get("HF_TOKEN") != HF_TOKEN  # planted in the child only


def test_rendered_kubernetes_manifests_reference_the_secrets_never_their_values():
    env = {**os.environ, "HF_TOKEN": HF_TOKEN, "WANDB_API_KEY": WANDB_KEY, "MY_WANDB": WANDB_KEY}
    sets = ("spec.output.hub.push=true", "spec.output.hub.repoId=me/leak-check", "spec.tracking.wandb.enabled=true",
            "spec.tracking.wandb.project=leak", "spec.tracking.wandb.apiKeyEnv=MY_WANDB",
            "spec.kubernetes.secrets.hubToken={name: hf-token, key: token}",
            "spec.kubernetes.secrets.wandbApiKey={name: wandb, key: api-key}")
    cmd = [sys.executable, "-m", "runner", "render", str(REPO / "k8s" / "example-trainingjob.yaml"), "--pod-monitor"]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for token in (HF_TOKEN, WANDB_KEY):
        assert not any(form.decode() in proc.stdout + proc.stderr for form in planted_forms(token))

    # The control: every container that needs a token gets it, by reference to the spec's Secret.
    jobs = [o for o in yaml.safe_load_all(proc.stdout) if o and o["kind"] == "Job"]
    assert {j["metadata"]["labels"]["app.kubernetes.io/component"] for j in jobs} == {"cache", "train"}
    refs = {}
    for job in jobs:
        for container in job["spec"]["template"]["spec"]["containers"]:
            for var in container.get("env", []):
                if var["name"] in ("HF_TOKEN", "MY_WANDB", "WANDB_API_KEY"):
                    assert "value" not in var, (job["metadata"]["name"], var)
                    refs[var["name"]] = var["valueFrom"]["secretKeyRef"]
    assert refs["HF_TOKEN"] == {"name": "hf-token", "key": "token"}
    assert refs["MY_WANDB"] == {"name": "wandb", "key": "api-key"}
