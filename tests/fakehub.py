"""One in-process fake of the Hugging Face Hub HTTP API, spoken to by the real huggingface_hub client.

It serves the union of what the tests need, from a routing table:
  GET  /api/agent-harnesses                          the client's user-agent registry (no credentials)
  POST /api/repos/create                             create_repo; the payload is kept in `created`
  POST /api/validate-yaml                            README front matter check (create_commit)
  GET  /api/{models,datasets}/{repo}[/revision/{rev}] repo_info: 404 RepoNotFound / RevisionNotFound, 401 gated
  GET  /api/{models,datasets}/{repo}/tree/{rev}[/..]  the file listing (LFS files with their sha256)
  POST /api/{models,datasets}/{repo}/preupload/{rev} every file "regular", so contents come inline
  POST /api/{models,datasets}/{repo}/commit/{rev}    NDJSON commit: recorded in `commits`, files stored
  GET  [/datasets]/{repo}/resolve/{rev}/{file}       file bytes with the Hub's headers, byte ranges

Repos are `Repo`s keyed by (kind, id). Every request is recorded in `requests` (method, path, lower-cased
headers, body, and the route's name); requests no route answers are kept in `unknown` and answered 404.
`faults` make it misbehave: each is a dict matching on `route` (a name below) and/or `path` (a regex
searched in "METHOD /path"), with `kind` (an HTTP status to answer instead; "stall": answer only after
`seconds`; "drop": send the headers and half the body, then close the connection), `headers` (sent
with an HTTP status `kind`, e.g. {"Retry-After": "7"}) and `times` (how many matching requests it hits;
absent or None: all of them).

huggingface_hub reads HF_ENDPOINT and friends at import time: `point_client_at` patches them in this
process, `client_env` is the environment for a client subprocess.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
SHA = "0123456789abcdef0123456789abcdef01234567"  # the commit every revision resolves to
ERRORS = {401: "Invalid credentials in Authorization header", 500: "Internal Error - the fake Hub is down"}

_REPO = r"/api/(?P<kind>model|dataset)s/(?P<repo>[^/]+/[^/]+)"
ROUTES = [  # (methods, path regex, name of the FakeHub method that answers)
    ("GET", r"/api/agent-harnesses", "harnesses"),
    ("POST", r"/api/repos/create", "create"),
    ("POST", r"/api/validate-yaml", "validate"),
    ("GET HEAD", _REPO + r"(?:/revision/(?P<rev>.+))?", "info"),
    ("GET", _REPO + r"/tree/(?P<rev>[^/]+)(?:/.*)?", "tree"),
    ("POST", _REPO + r"/preupload/(?P<rev>.+)", "preupload"),
    ("POST", _REPO + r"/commit/(?P<rev>.+)", "commit"),
    ("GET HEAD", r"(?:/(?P<kind>dataset)s)?/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", "resolve"),
]


@dataclass
class Repo:
    files: dict[str, bytes] = field(default_factory=dict)
    revisions: set[str] = field(default_factory=lambda: {"main"})  # besides SHA, which always resolves
    lfs: set[str] = field(default_factory=set)  # files stored as LFS objects (answered with X-Linked-Etag)
    gated: bool = False


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.headers = status, {"X-Error-Code": code} if code else {}


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(content: bytes) -> bytes:
    return (b"version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %d\n"
            % (hashlib.sha256(content).hexdigest().encode(), len(content)))


class FakeHub:
    """`models` / `datasets` map repo ids to a `Repo` or just its files; the server runs until close()."""

    def __init__(self, models: dict | None = None, datasets: dict | None = None):
        self.repos: dict[tuple[str, str], Repo] = {}
        for kind, repos in (("model", models or {}), ("dataset", datasets or {})):
            for repo_id, repo in repos.items():
                self.repos[kind, repo_id] = repo if isinstance(repo, Repo) else Repo(dict(repo))
        self.requests: list[dict] = []
        self.unknown: list[tuple[str, str]] = []
        self.faults: list[dict] = []
        self.created: dict[str, dict] = {}
        self.commits: list[dict] = []
        self.closing, self.lock = threading.Event(), threading.Lock()
        self.server = _Server(("127.0.0.1", 0), type("Handler", (_Handler,), {"hub": self}))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.closing.set()  # wakes stalled requests
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ what the tests read

    def repo_requests(self) -> list[dict]:
        """The requests about repos (not the client's user-agent registry fetch)."""
        return [r for r in self.requests if r["route"] != "harnesses"]

    def calls(self) -> list[tuple[str, str]]:
        return [(r["method"], r["path"]) for r in self.repo_requests()]

    def file_gets(self) -> list[str]:
        return [r["path"] for r in self.requests if r["route"] == "resolve" and r["method"] == "GET"]

    # ------------------------------------------------------------------ serving

    def answer(self, req: dict) -> tuple[int, object, dict, bool]:
        """(status, body: bytes or JSON, headers, drop) for a recorded request."""
        name, params = None, {}
        for methods, pattern, route in ROUTES:
            m = re.fullmatch(pattern, req["path"])
            if m and req["method"] in methods.split():
                name, params = route, {k: v for k, v in m.groupdict().items() if v is not None}
                break
        req["route"] = name
        fault = self._fault(name, f"{req['method']} {req['path']}") or {}
        if isinstance(fault.get("kind"), int):
            return fault["kind"], {"error": ERRORS.get(fault["kind"], "error")}, dict(fault.get("headers") or {}), False
        if fault.get("kind") == "stall":
            self.closing.wait(fault["seconds"])
        if name is None:
            self.unknown.append((req["method"], req["path"]))
            return 404, {"error": f"fake hub: no route for {req['method']} {req['path']}"}, {}, False
        try:
            status, body, headers = getattr(self, name)(req, **params)
        except HubError as e:
            status, body, headers = e.status, {"error": str(e)}, e.headers
        return status, body, headers, fault.get("kind") == "drop"

    def _fault(self, route: str | None, line: str) -> dict | None:
        with self.lock:
            for f in self.faults:
                if f.get("times") != 0 and f.get("route", route) == route and re.search(f.get("path", ""), line):
                    if f.get("times") is not None:
                        f["times"] -= 1
                    return f
        return None

    def _repo(self, kind: str, repo_id: str, rev: str | None = None) -> Repo:
        repo = self.repos.get((kind, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        if repo.gated:
            raise HubError(401, "Access to this repo is restricted", "GatedRepo")
        if rev is not None and rev not in repo.revisions | {SHA}:
            raise HubError(404, "Invalid rev id", "RevisionNotFound")
        return repo

    # ------------------------------------------------------------------ the routes

    def harnesses(self, req):
        return 200, {"standardEnvVars": [], "harnesses": {}}, {}

    def create(self, req):
        payload = req["json"] = json.loads(req["body"])
        repo_id = f"{payload['organization']}/{payload['name']}"
        self.created[repo_id] = payload
        self.repos.setdefault((payload.get("type") or "model", repo_id), Repo())
        return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": "r1"}, {}

    def validate(self, req):
        req["json"] = json.loads(req["body"])
        return 200, {"errors": [], "warnings": []}, {}

    def info(self, req, kind, repo, rev="main"):
        files = self._repo(kind, repo, rev).files
        return 200, {"id": repo, "sha": SHA, "private": False, "siblings": [{"rfilename": f} for f in files]}, {}

    def tree(self, req, kind, repo, rev):
        r, tree = self._repo(kind, repo), []
        for name, content in r.files.items():
            entry = {"type": "file", "path": name, "size": len(content), "oid": git_blob_id(content)}
            if name in r.lfs:  # git holds a pointer; the bytes are an LFS object
                pointer = lfs_pointer(content)
                entry |= {"oid": git_blob_id(pointer), "lfs": {"oid": hashlib.sha256(content).hexdigest(),
                                                               "size": len(content), "pointerSize": len(pointer)}}
            tree.append(entry)
        return 200, tree, {}

    def preupload(self, req, kind, repo, rev):
        self._repo(kind, repo)
        payload = req["json"] = json.loads(req["body"])
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in payload["files"]]
        return 200, {"files": files, "commitOid": SHA}, {}

    def commit(self, req, kind, repo, rev):
        target = self._repo(kind, repo)
        lines = req["ndjson"] = [json.loads(ln) for ln in req["body"].decode().splitlines() if ln.strip()]
        files, other = {}, []
        for line in lines[1:]:
            if line["key"] == "file" and line["value"].get("encoding") == "base64":
                files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
            else:
                other.append(line)
        target.files.update(files)
        self.commits.append({"repo": repo, "revision": rev, "header": lines[0], "files": files, "other": other,
                             "content_type": req["headers"].get("content-type")})
        return 200, {"commitUrl": f"{self.url}/{repo}/commit/{SHA}", "commitOid": SHA, "success": True}, {}

    def resolve(self, req, repo, rev, file, kind="model"):
        r = self._repo(kind, repo)
        content = r.files.get(file)
        if content is None:
            raise HubError(404, "Entry not found", "EntryNotFound")
        headers = {"X-Repo-Commit": SHA, "ETag": f'"{git_blob_id(content)}"', "Accept-Ranges": "bytes"}
        if file in r.lfs:
            headers |= {"ETag": f'"{git_blob_id(lfs_pointer(content))}"',
                        "X-Linked-Etag": f'"{hashlib.sha256(content).hexdigest()}"', "X-Linked-Size": str(len(content))}
        start = re.fullmatch(r"bytes=(\d+)-", req["headers"].get("range", ""))
        if start and req["method"] == "GET":  # resuming a dropped download
            first = int(start.group(1))
            headers["Content-Range"] = f"bytes {first}-{len(content) - 1}/{len(content)}"
            return 206, content[first:], headers
        return 200, content, headers


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client gone (timed out, say) is no error
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Transport only: read and record the request, send what FakeHub.answer says."""
    protocol_version = "HTTP/1.1"
    hub: FakeHub

    def log_message(self, *args):
        pass

    def serve(self):
        req = {"method": self.command, "path": unquote(urlparse(self.path).path), "route": None,
               "headers": {k.lower(): v for k, v in self.headers.items()}, "body": self.read_body()}
        self.hub.requests.append(req)
        status, body, headers, drop = self.hub.answer(req)
        if not isinstance(body, bytes):
            body, headers = json.dumps(body).encode(), {"Content-Type": "application/json", **headers}
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body[: len(body) // 2] if drop else body)
        if drop:  # the connection dies mid-body
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    do_GET = do_HEAD = do_POST = do_PUT = serve

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        out = b""
        while size := int(self.rfile.readline().strip(), 16):
            out += self.rfile.read(size)
            self.rfile.readline()
        self.rfile.readline()
        return out


# ---------------------------------------------------------------------- pointing the client at it

def point_client_at(monkeypatch, tmp_path: Path, url: str) -> None:
    """Aim this process's huggingface_hub at `url`: the constants it read at import time are patched,
    the env is set for later readers, and its user-agent registry is cached in tmp (refetched per test)."""
    import huggingface_hub.constants as hf_constants
    from huggingface_hub.utils import _detect_agent

    monkeypatch.setattr(hf_constants, "ENDPOINT", url)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(hf_constants, "AGENT_HARNESSES_PATH", str(tmp_path / "hf-home" / ".agent_harnesses.json"))
    monkeypatch.setattr(_detect_agent, "_registry", None)
    for name, value in {"HF_HOME": str(tmp_path / "hf-home"), "HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1",
                        "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)


def client_env(tmp_path: Path, *, offline=False, endpoint="http://127.0.0.1:9", hub_cache="hf-cache", **extra):
    """The environment of a client process: its own Hub cache, the given endpoint, short
    timeouts (HF_HUB_ETAG_TIMEOUT, HF_HUB_DOWNLOAD_TIMEOUT: the documented knobs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update({
        "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_CACHE": str(tmp_path / hub_cache),
        "HF_ENDPOINT": endpoint, "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "5",
        "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_XET": "1",
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", "PYTHONPATH": str(REPO_ROOT), **extra,
    })
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


# ---------------------------------------------------------------------- a dataset repo, downloaded

def image_bytes(fmt: str = "PNG", size=(16, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (5, 6, 7)).save(buf, format=fmt)
    return buf.getvalue()


FILES = {  # a dataset repo: images with captions, at two depths, and files that are not downloaded
    "a.png": image_bytes(),
    "a.txt": b"a caption",
    "photos/b.JPG": image_bytes("JPEG"),
    "photos/b.txt": b"b caption",
    "photos/deep/c.webp": image_bytes("WEBP"),
    "README.md": b"# dataset card",
    "data/train.parquet": b"PAR1",
}

DRIVER = r"""
import json, sys, time
from pathlib import Path
from runner.data import DatasetError, HubUnavailable
from runner.data.hub import download_dataset
out = []
retry = json.loads(sys.argv[2])
for repo, revision, dest, subfolder in json.loads(sys.argv[1]):
    t = time.monotonic()
    try:
        root = download_dataset(repo, revision, Path(dest), subfolder, **retry)
        assert root == Path(dest), root
        root = root / subfolder if subfolder else root
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                       if p.is_file() and ".cache" not in p.parts)
        out.append({"root": str(root), "files": files, "s": time.monotonic() - t})
    except (DatasetError, HubUnavailable) as e:
        out.append({"error": str(e), "kind": type(e).__name__, "s": time.monotonic() - t})
print("RESULT " + json.dumps(out))
"""


def run_calls(tmp_path: Path, calls, *, retries=2, backoff_s=0.05, **env):
    """runner.data.hub.download_dataset for each [repo, revision, dest, subfolder] call, in one fresh
    process (the library reads its settings at import); `env` goes to client_env. Retries are kept
    quick through download_dataset's own arguments."""
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(calls),
                           json.dumps({"retries": retries, "backoff_s": backoff_s})], env=client_env(tmp_path, **env),
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])
