"""runner.train.publish.push_to_hub against the fake Hub of tests/fakehub.py, through the real
huggingface_hub client.

The push runs in-process with the client's import-time constants patched (point_client_at).
With Xet disabled and every file answered as "regular" by the preupload endpoint, the client sends
file contents inline, base64, in the NDJSON commit body - which the fake Hub decodes and records.
create_repo + upload_folder of small files use: POST /api/repos/create, GET /api/models/{repo}
(repo_info, only when create answered 401/402/403: exist_ok), POST /api/validate-yaml (README front
matter), POST .../preupload/{revision}, POST .../commit/{revision}, and GET /api/agent-harnesses
(the user-agent registry, once per process, without credentials).
"""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from runner.spec.load import job_from_document
from runner.train.publish import PublishError, push_to_hub
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
    assert yaml.safe_load(card_yaml) == doc
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


@pytest.mark.parametrize("stage,status", [
    ("create", 401),
    ("create", 500),
    ("validate", 401),
    ("preupload", 401),
    ("commit", 401),
    ("commit", 500),
])
def test_push_server_errors_raise_publish_error(fake_hub, model_dir, images, capfd, stage, status):
    fake_hub.faults = [{"route": stage, "kind": status}]
    t = time.monotonic()
    with pytest.raises(PublishError) as info:
        push_to_hub(model_dir, job_document(), images)
    elapsed = time.monotonic() - t
    msg = str(info.value)
    out = capfd.readouterr()

    assert fake_hub.unknown == []
    assert REPO_ID in msg
    assert str(status) in msg
    assert "Traceback" not in msg and 'File "' not in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert TOKEN not in msg
    assert TOKEN not in out.out + out.err
    assert fake_hub.commits == []
    if (stage, status) == ("create", 401):  # exist_ok: the client checks whether the repo exists anyway
        assert fake_hub.calls() == [("POST", "/api/repos/create"), ("GET", f"/api/models/{REPO_ID}")]
    assert elapsed < 5  # no retry/backoff loop on these endpoints


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
