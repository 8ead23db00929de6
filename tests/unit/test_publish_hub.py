"""runner.train.publish.push_to_hub against a fake Hub, through the real huggingface_hub client.

huggingface_hub reads HF_ENDPOINT and HF_HUB_DISABLE_XET into `huggingface_hub.constants` at
import time, and `HfApi()` copies `constants.ENDPOINT` when it is built (the commit helpers get
that endpoint passed down). So the push runs in-process with those two constants monkeypatched
(and the env vars set too, for anything reading them later). With Xet disabled and every file
answered as "regular" by the preupload endpoint, the client sends file contents inline, base64,
in the NDJSON commit body - which the fake Hub decodes and records.

Endpoints the client uses for create_repo + upload_folder of small files:
  POST /api/repos/create                       create_repo (JSON: name, organization, visibility, type)
  GET  /api/models/{repo}                      repo_info, only when create answered 401/402/403 (exist_ok)
  POST /api/validate-yaml                      README.md front matter check (create_commit)
  POST /api/models/{repo}/preupload/{revision} upload mode per file
  POST /api/models/{repo}/commit/{revision}    NDJSON: header line + one "file" line per file
  GET  /api/agent-harnesses                    user-agent registry, once per process, no credentials
"""
from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml
from PIL import Image

from runner.spec.load import job_from_document
from runner.train.publish import PublishError, push_to_hub

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "hf_fake_secret_123"
TOKEN_ENV = "TJ_TEST_TOKEN"
REPO_ID = "me/tiny"
COMMIT_OID = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Just enough of the Hub HTTP API for create_repo + upload_folder of small files.

    `fail` maps an endpoint name ("create", "validate", "preupload", "commit") to an HTTP
    status to answer instead. Every request is recorded; unknown ones answer 404 and are
    kept in `unknown` so a client change shows up as a clear test failure."""

    def __init__(self):
        self.requests: list[dict] = []
        self.unknown: list[tuple[str, str]] = []
        self.created: dict[str, dict] = {}
        self.commits: list[dict] = []
        self.fail: dict[str, int] = {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def send(self, code, body=None, headers=None):
                raw = json.dumps(body).encode() if body is not None else b""
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(raw)

            def read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def failed(self, name) -> bool:
                code = hub.fail.get(name)
                if code is None:
                    return False
                errors = {401: "Invalid credentials in Authorization header", 500: "Internal Error"}
                self.send(code, {"error": errors.get(code, "error")})
                return True

            def route(self):
                path = unquote(urlparse(self.path).path)
                body = self.read_body()
                req = {"method": self.command, "path": path,
                       "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
                hub.requests.append(req)
                parts = path.strip("/").split("/")

                if self.command == "POST" and path == "/api/repos/create":
                    if self.failed("create"):
                        return
                    payload = req["json"] = json.loads(body)
                    repo = f"{payload['organization']}/{payload['name']}"
                    hub.created[repo] = payload
                    return self.send(200, {"url": f"{hub.url}/{repo}", "name": repo, "id": "r1"})
                if self.command == "GET" and path == "/api/agent-harnesses":
                    # user-agent telemetry registry, fetched once per process without credentials
                    return self.send(200, {"standardEnvVars": [], "harnesses": {}})
                if self.command == "POST" and path == "/api/validate-yaml":
                    if self.failed("validate"):
                        return
                    req["json"] = json.loads(body)
                    return self.send(200, {"errors": [], "warnings": []})
                if parts[:2] == ["api", "models"] and len(parts) == 4 and self.command == "GET":
                    repo = "/".join(parts[2:4])
                    if repo not in hub.created:
                        return self.send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                    return self.send(200, {"id": repo, "sha": COMMIT_OID, "private": True, "siblings": []})
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and self.command == "POST":
                    repo, kind, revision = "/".join(parts[2:4]), parts[4], "/".join(parts[5:])
                    if repo not in hub.created:
                        return self.send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                    if kind == "preupload":
                        if self.failed("preupload"):
                            return
                        payload = req["json"] = json.loads(body)
                        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                 for f in payload["files"]]
                        return self.send(200, {"files": files, "commitOid": COMMIT_OID})
                    if kind == "commit":
                        if self.failed("commit"):
                            return
                        lines = [json.loads(ln) for ln in body.decode().splitlines() if ln.strip()]
                        req["ndjson"] = lines
                        files, other = {}, []
                        for line in lines[1:]:
                            if line["key"] == "file" and line["value"].get("encoding") == "base64":
                                files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                            else:
                                other.append(line)
                        hub.commits.append({"repo": repo, "revision": revision, "header": lines[0],
                                            "files": files, "other": other,
                                            "content_type": req["headers"].get("content-type")})
                        return self.send(200, {"commitUrl": f"{hub.url}/{repo}/commit/{COMMIT_OID}",
                                               "commitOid": COMMIT_OID, "success": True})
                hub.unknown.append((self.command, path))
                return self.send(404, {"error": f"fake hub: no route for {self.command} {path}"})

            do_GET = do_HEAD = do_POST = do_PUT = route

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def repo_requests(self) -> list[dict]:
        """The requests create_repo/upload_folder make (not the telemetry registry fetch)."""
        return [r for r in self.requests if r["path"] != "/api/agent-harnesses"]

    def calls(self) -> list[tuple[str, str]]:
        return [(r["method"], r["path"]) for r in self.repo_requests()]

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants
    from huggingface_hub.utils import _detect_agent

    hub = FakeHub()
    # The constants were read at import time: patch them, and set the env for later readers.
    monkeypatch.setattr(hf_constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
    # The client fetches an agent-harness registry for its user agent once per process and caches
    # it under HF_HOME: keep that file in tmp and refetch (from the fake) in every test.
    monkeypatch.setattr(hf_constants, "AGENT_HARNESSES_PATH", str(tmp_path / "hf-home" / ".agent_harnesses.json"))
    monkeypatch.setattr(_detect_agent, "_registry", None)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    yield hub
    hub.close()


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
    fake_hub.fail[stage] = status
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
