"""runner.train.publish.push_to_hub against the fake Hub of tests/fakehub.py, through the real
huggingface_hub client.

The push runs in-process with the client's import-time constants patched (point_client_at).
With Xet disabled and every file answered as "regular" by the preupload endpoint, the client sends
file contents inline, base64, in the NDJSON commit body - which the fake Hub decodes and records.
create_repo + upload_folder of small files use: POST /api/repos/create, GET /api/models/{repo}
(repo_info, only when create answered 401/402/403: exist_ok), POST /api/validate-yaml (README front
matter), POST .../preupload/{revision}, POST .../commit/{revision}, and GET /api/agent-harnesses
(the user-agent registry, once per process, without credentials).

Failures: the fake Hub answers 5xx/429 (then success), 401, 403, or nothing listens on the port.
Transient ones are retried with the backoff counted through push_to_hub's `sleep` argument (no
real waiting), the attempts counted at the server; the end is PublishRetryable (exit 1) or
PublishError (exit 2), and run_job's exit code is checked the same way.
"""
from __future__ import annotations

import io
import json
import socket
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from runner.spec.load import job_from_document
from runner.exitcodes import EXIT_INTERNAL, EXIT_INVALID, EXIT_OK
from runner.spec.plan import exported_document
from runner.train.publish import PublishError, PublishRetryable, push_to_hub
from tests.fakehub import SHA as COMMIT_OID
from tests.fakehub import FakeHub, point_client_at

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "hf_fake_secret_123"
TOKEN_ENV = "TJ_TEST_TOKEN"
REPO_ID = "me/tiny"


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    with FakeHub() as hub:
        point_client_at(monkeypatch, tmp_path, hub.url)
        monkeypatch.setenv(TOKEN_ENV, TOKEN)
        yield hub


def job_document() -> dict:
    doc = yaml.safe_load((REPO_ROOT / "examples" / "smoke.yaml").read_text())
    doc["spec"]["output"]["hub"] = {"push": True, "repoId": REPO_ID, "private": True, "tokenEnv": TOKEN_ENV}
    return job_from_document(doc).document.to_dict()


def png_bytes(color=(10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def model_dir(tmp_path) -> Path:
    import torch
    from safetensors.torch import save_file

    d = tmp_path / "final"
    (d / "transformer").mkdir(parents=True)
    (d / "model_index.json").write_text(json.dumps({"_class_name": "PixArtSigmaPipeline",
                                                    "transformer": ["diffusers", "PixArtTransformer2DModel"]}))
    (d / "transformer" / "config.json").write_text(json.dumps({"_class_name": "PixArtTransformer2DModel",
                                                               "num_layers": 1}))
    save_file({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)},
              str(d / "transformer" / "diffusion_pytorch_model.safetensors"))
    return d


@pytest.fixture
def images(tmp_path) -> list[Path]:
    vdir = tmp_path / "samples"
    vdir.mkdir()
    p = vdir / "step-20-0-a_cat.png"
    p.write_bytes(png_bytes())
    return [p]


def local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_push_uploads_the_folder(fake_hub, model_dir, images, capfd):
    doc = job_document()
    t = time.monotonic()
    url = push_to_hub(model_dir, doc, images)
    elapsed = time.monotonic() - t
    out = capfd.readouterr()

    assert fake_hub.unknown == []
    assert COMMIT_OID in url
    calls = fake_hub.calls()
    assert calls[0] == ("POST", "/api/repos/create")
    assert ("POST", f"/api/models/{REPO_ID}/preupload/main") in calls
    assert calls[-1] == ("POST", f"/api/models/{REPO_ID}/commit/main")

    # (3) created private, as a model repo, under the right namespace
    assert fake_hub.created[REPO_ID] == {"name": "tiny", "organization": "me", "visibility": "private",
                                         "type": "model"}

    # (1) one commit, every file inline and byte-identical to what is on disk
    assert len(fake_hub.commits) == 1
    commit = fake_hub.commits[0]
    assert commit["content_type"] == "application/x-ndjson"
    assert commit["header"]["key"] == "header"
    assert "PixArt Sigma" in commit["header"]["value"]["summary"]
    assert commit["other"] == []  # no LFS pointers, no deletions
    files = commit["files"]
    expected = {"model_index.json", "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
                "README.md", "validation/step-20-0-a_cat.png"}
    assert set(files) == expected
    assert files == local_files(model_dir)
    assert files["validation/step-20-0-a_cat.png"] == images[0].read_bytes() == png_bytes()

    readme = files["README.md"].decode()
    front = readme.split("---\n")[1]
    assert "base_model: builtin:tiny-pixart-sigma" in front
    assert "library_name: diffusers" in front
    assert "![step-20-0-a_cat](validation/step-20-0-a_cat.png)" in readme
    card_yaml = readme.split("```yaml\n", 1)[1].split("\n```", 1)[0]
    assert yaml.safe_load(card_yaml) == exported_document(doc)  # without spec.kubernetes (the cluster's)
    assert "kind: TrainingJob" in card_yaml and f"repoId: {REPO_ID}" in card_yaml

    # the README validation call saw the same card
    validate = [r for r in fake_hub.requests if r["path"] == "/api/validate-yaml"]
    assert validate and validate[0]["json"]["content"] == readme
    preupload = next(r for r in fake_hub.requests if r["path"].endswith("/preupload/main"))
    assert {f["path"] for f in preupload["json"]["files"]} == expected

    # (2) the token from spec.output.hub.tokenEnv authenticates every repo request...
    for r in fake_hub.repo_requests():
        assert r["headers"].get("authorization") == f"Bearer {TOKEN}", r["path"]
    # ...is not sent with the unauthenticated registry fetch...
    for r in fake_hub.requests:
        if r["path"] == "/api/agent-harnesses":
            assert "authorization" not in r["headers"]
    # ...and is written nowhere: not in the card, any uploaded file, any body, or the output
    for name, content in files.items():
        assert TOKEN.encode() not in content, name
    assert TOKEN not in readme
    for r in fake_hub.requests:
        assert TOKEN.encode() not in r["body"], r["path"]
    for p in model_dir.rglob("*"):
        if p.is_file():
            assert TOKEN.encode() not in p.read_bytes(), p
    assert TOKEN not in out.out + out.err
    assert elapsed < 10


def test_push_public_repo(fake_hub, model_dir, images):
    doc = job_document()
    doc["spec"]["output"]["hub"]["private"] = False
    push_to_hub(model_dir, doc, images)
    assert fake_hub.created[REPO_ID]["visibility"] == "public"


def test_push_again_into_an_existing_folder(fake_hub, model_dir, images):
    """A second push (README and validation/ already there from the first) uploads the same set."""
    doc = job_document()
    push_to_hub(model_dir, doc, images)
    push_to_hub(model_dir, doc, images)
    assert len(fake_hub.commits) == 2
    assert fake_hub.commits[0]["files"] == fake_hub.commits[1]["files"] == local_files(model_dir)


def calls_to(fake_hub: FakeHub, route: str) -> int:
    return sum(r["route"] == route for r in fake_hub.requests)


def no_token_in(fake_hub: FakeHub | None, *texts: str) -> None:
    """The token authenticated what reached the Hub (the control: the push really read it),
    and appears in none of `texts`."""
    for r in fake_hub.repo_requests() if fake_hub else []:
        assert r["headers"].get("authorization") == f"Bearer {TOKEN}", r["path"]
    for text in texts:
        assert TOKEN not in text


@pytest.mark.parametrize("stage,status", [
    ("create", 401),
    ("create", 403),
    ("validate", 401),
    ("preupload", 401),
    ("preupload", 403),
    ("commit", 401),
    ("commit", 403),
])
def test_auth_failures_are_not_retried_and_name_the_token_variable(fake_hub, model_dir, images, capfd, stage,
                                                                   status):
    """A refused token or a repo it may not write to: exit 2 (PublishError) at once, no retry."""
    fake_hub.faults = [{"route": stage, "kind": status}]
    waits = []
    with pytest.raises(PublishError) as info:
        push_to_hub(model_dir, job_document(), images, retries=3, backoff_s=0.01, sleep=waits.append)
    msg = str(info.value)
    out = capfd.readouterr()

    assert fake_hub.unknown == []
    assert waits == [] and calls_to(fake_hub, "create") == 1  # tried once
    for fragment in [REPO_ID, f"HTTP {status}", f"environment variable {TOKEN_ENV}",
                     "spec.kubernetes.secrets.hubToken", f"kept in {model_dir}"]:
        assert fragment in msg, (fragment, msg)
    if status == 403:
        assert "spec.output.hub.repoId" in msg
    assert "Traceback" not in msg and 'File "' not in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__
    no_token_in(fake_hub, msg, out.out, out.err)
    assert fake_hub.commits == []
    if stage == "create":  # exist_ok: the client checks whether the repo exists anyway, then gives up
        assert fake_hub.calls() == [("POST", "/api/repos/create"), ("GET", f"/api/models/{REPO_ID}")]


def test_a_repo_the_token_cannot_see_is_not_retried(fake_hub, model_dir, images, capfd):
    # create_repo succeeds (as for a repo that exists), then the Hub answers the upload with
    # 404 RepoNotFound: what it says for a repo the token may not see
    fake_hub.create = lambda req: (200, {"url": f"{fake_hub.url}/{REPO_ID}", "name": REPO_ID, "id": "r1"}, {})
    waits = []
    with pytest.raises(PublishError) as info:
        push_to_hub(model_dir, job_document(), images, retries=3, backoff_s=0.01, sleep=waits.append)
    msg = str(info.value)
    assert waits == [] and calls_to(fake_hub, "create") == 1
    assert f"the repo {REPO_ID} was not found" in msg and "spec.output.hub.repoId" in msg and TOKEN_ENV in msg
    out = capfd.readouterr()
    no_token_in(fake_hub, msg, out.out, out.err)


def test_an_invalid_repo_id_names_the_field_and_sends_nothing(fake_hub, model_dir, images, capfd):
    doc = job_document()
    doc["spec"]["output"]["hub"]["repoId"] = "me/a--b"  # passes the schema's pattern, not the Hub's rules
    with pytest.raises(PublishError) as info:
        push_to_hub(model_dir, doc, images, retries=3, backoff_s=0.01, sleep=pytest.fail)
    assert not isinstance(info.value, PublishRetryable)
    assert "spec.output.hub.repoId: 'me/a--b' is not a valid Hub repo id" in str(info.value)
    assert fake_hub.repo_requests() == []
    out = capfd.readouterr()
    no_token_in(fake_hub, str(info.value), out.out, out.err)


def test_offline_mode_is_not_retried(fake_hub, model_dir, images, monkeypatch):
    """HF_HUB_OFFLINE=1 makes every request fail with a ConnectionError; no retry can help."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    waits = []
    with pytest.raises(PublishError) as info:
        push_to_hub(model_dir, job_document(), images, retries=3, backoff_s=0.01, sleep=waits.append)
    assert not isinstance(info.value, PublishRetryable)
    assert waits == [] and fake_hub.repo_requests() == []
    assert "HF_HUB_OFFLINE is set" in str(info.value) and TOKEN not in str(info.value)


@pytest.mark.parametrize("faults, creates, commits", [
    ([{"route": "create", "kind": 503, "times": 2}], 3, 1),
    ([{"route": "create", "kind": 429, "times": 1}], 2, 1),
    ([{"route": "create", "kind": 500, "times": 1}], 2, 1),
    ([{"route": "commit", "kind": 503, "times": 1}], 2, 2),  # the whole push again: create_repo is idempotent
    ([{"route": "commit", "kind": 502, "times": 2}], 3, 3),
])
def test_transient_failures_are_retried_with_backoff_then_the_push_succeeds(fake_hub, model_dir, images, capfd,
                                                                            faults, creates, commits):
    fake_hub.faults = faults
    waits = []
    url = push_to_hub(model_dir, job_document(), images, retries=3, backoff_s=0.01, sleep=waits.append)
    out = capfd.readouterr()

    assert COMMIT_OID in url
    assert waits == [0.01, 0.02][: creates - 1]  # exponential: 0.01, then twice as long
    assert calls_to(fake_hub, "create") == creates and calls_to(fake_hub, "commit") == commits
    assert len(fake_hub.commits) == 1 and fake_hub.commits[0]["files"] == local_files(model_dir)
    assert out.err.count("retrying in") == creates - 1
    no_token_in(fake_hub, out.out, out.err)


@pytest.mark.parametrize("stage,status", [("create", 503), ("create", 429), ("commit", 500)])
def test_a_hub_that_stays_down_ends_retryable_after_the_retries(fake_hub, model_dir, images, capfd, stage, status):
    fake_hub.faults = [{"route": stage, "kind": status}]
    waits = []
    with pytest.raises(PublishRetryable) as info:
        push_to_hub(model_dir, job_document(), images, retries=3, backoff_s=0.01, sleep=waits.append)
    msg = str(info.value)
    out = capfd.readouterr()

    assert waits == [0.01, 0.02, 0.04]
    assert calls_to(fake_hub, stage) == 4  # 1 + 3 retries, then stop
    assert fake_hub.commits == []
    step = "creating the repo" if stage == "create" else "uploading the folder"
    for fragment in [f"Hub repo {REPO_ID} at {fake_hub.url} failed while {step} (tried 4 times): HTTP {status}",
                     f"The training and the export are complete and kept in {model_dir}",
                     "rerunning the same command trains no further steps", "HF_ENDPOINT"]:
        assert fragment in msg, (fragment, msg)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    no_token_in(fake_hub, msg, out.out, out.err)


def test_an_unreachable_hub_ends_retryable_after_the_retries(monkeypatch, tmp_path, model_dir, images, capfd):
    with socket.socket() as s:  # a port nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    point_client_at(monkeypatch, tmp_path, url)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    waits = []
    with pytest.raises(PublishRetryable) as info:
        push_to_hub(model_dir, job_document(), images, retries=2, backoff_s=0.01, sleep=waits.append)
    msg = str(info.value)
    out = capfd.readouterr()
    assert waits == [0.01, 0.02] and out.err.count("ConnectError") == 2  # each retry announced
    for fragment in [f"at {url} failed while creating the repo (tried 3 times): ConnectError",
                     f"kept in {model_dir}", f"network access to {url}", "HF_ENDPOINT"]:
        assert fragment in msg, (fragment, msg)
    no_token_in(None, msg, out.out, out.err)


@pytest.mark.parametrize("faults, code, creates", [
    ([{"route": "create", "kind": 503}], EXIT_INTERNAL, 3),  # retryable: Kubernetes retries the pod
    ([{"route": "create", "kind": 401}], EXIT_INVALID, 1),  # bad input: the Job fails at once
    ([{"route": "create", "kind": 503, "times": 1}], EXIT_OK, 2),
])
def test_the_exit_code_of_a_failed_push(fake_hub, tmp_path, monkeypatch, model_dir, capfd, faults, code, creates):
    """`run` with the training replaced by its result (an exported model), the push real."""
    from runner.launch import run as launch_run
    from runner.spec.load import load_spec
    from runner.train import loop, publish
    from runner.train.loop import TrainResult

    monkeypatch.setattr(publish, "PUSH_RETRIES", 2)
    monkeypatch.setattr(publish, "PUSH_BACKOFF_S", 0.01)
    monkeypatch.setattr(launch_run, "run_cache_stage", lambda *a, **k: None)
    monkeypatch.setattr(loop, "run_train", lambda _ctx: TrainResult(3, 1.0, None, model_dir, None))
    job = load_spec(REPO_ROOT / "examples" / "smoke.yaml",
                    [f"spec.output.dir={tmp_path / 'out'}", f"spec.cacheDir={tmp_path / 'cache'}",
                     "spec.metrics.port=0", "spec.output.hub.push=true", f"spec.output.hub.repoId={REPO_ID}",
                     f"spec.output.hub.tokenEnv={TOKEN_ENV}"])
    fake_hub.faults = faults
    assert launch_run.run_job(job, "all") == code
    out = capfd.readouterr()
    assert calls_to(fake_hub, "create") == creates
    if code == EXIT_OK:
        assert "pushed to the Hub" in out.out + out.err
    else:
        assert f"error: pushing {model_dir} to the Hub repo {REPO_ID}" in out.err
    no_token_in(fake_hub, out.out, out.err)


@pytest.mark.parametrize("name, value", [("HF_HUB_OFFLINE", "1"), ("HF_HUB_OFFLINE", "true"), ("TRANSFORMERS_OFFLINE", "1")])
def test_run_refuses_a_push_in_offline_mode_before_any_work(fake_hub, tmp_path, monkeypatch, capfd, name, value):
    """Offline mode forbids the push; `run` says so at its start (exit 2), not after the training."""
    from runner.launch import run as launch_run
    from runner.spec.load import load_spec

    ran = []
    monkeypatch.setattr(launch_run, "run_cache_stage", lambda *a, **k: ran.append("cache"))
    monkeypatch.setattr(launch_run, "run_train_stage", lambda *a, **k: ran.append("train") or 0)
    monkeypatch.setenv(name, value)
    job = load_spec(REPO_ROOT / "examples" / "smoke.yaml",
                    [f"spec.output.dir={tmp_path / 'out'}", f"spec.cacheDir={tmp_path / 'cache'}",
                     "spec.metrics.port=0", "spec.output.hub.push=true", f"spec.output.hub.repoId={REPO_ID}",
                     f"spec.output.hub.tokenEnv={TOKEN_ENV}"])
    assert launch_run.run_job(job, "all") == EXIT_INVALID
    err = capfd.readouterr().err
    assert f"error: spec.output.hub.push is true but {name} is set" in err and "push: false" in err
    assert ran == [] and fake_hub.requests == []
    assert not (tmp_path / "out" / "trainingjob.effective.yaml").exists()


def test_push_without_token_names_the_variable(fake_hub, model_dir, images, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV)
    with pytest.raises(PublishError) as info:
        push_to_hub(model_dir, job_document(), images)
    assert TOKEN_ENV in str(info.value)
    assert fake_hub.requests == []  # nothing reached the Hub (token checked before HfApi is used)


def test_push_with_empty_token_names_the_variable(fake_hub, model_dir, images, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "")
    with pytest.raises(PublishError, match=TOKEN_ENV):
        push_to_hub(model_dir, job_document(), images)
    assert fake_hub.requests == []
