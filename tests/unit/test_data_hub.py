"""runner.data.hub: Hub dataset downloads, tested without the internet.

The library reads HF_ENDPOINT / HF_HUB_OFFLINE / HF_HUB_CACHE at import time, so each
scenario runs `download_dataset` in a subprocess with its own environment. "Online" cases
talk to a small fake Hub (repo info, tree listing, file resolve, byte ranges) served from this
process, which can also be told to misbehave (tests/unit/test_hub_retries.py).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from PIL import Image

from runner.data.hub import allow_patterns

REPO_ROOT = Path(__file__).resolve().parents[2]
SHA = "0123456789abcdef0123456789abcdef01234567"


def image_bytes(fmt: str = "PNG", size=(16, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (5, 6, 7)).save(buf, format=fmt)
    return buf.getvalue()


png_bytes = image_bytes


FILES = {
    "a.png": png_bytes(),
    "a.txt": b"a caption",
    "photos/b.JPG": image_bytes("JPEG"),
    "photos/b.txt": b"b caption",
    "photos/deep/c.webp": image_bytes("WEBP"),
    "README.md": b"# dataset card",
    "data/train.parquet": b"PAR1",
}


class FakeHub:
    """Just enough of the Hub HTTP API for snapshot_download of a dataset (or model) repo.

    `faults` make it misbehave: each is a dict with `path` (a regex searched in
    "METHOD /path"), `kind` ("500": answer HTTP 500; "stall": answer only after `seconds`;
    "drop": send the headers and half the body, then close the connection) and `times` (how
    many matching requests it hits; None: all of them)."""

    def __init__(self, repos: dict[str, dict[str, bytes]], revisions=("main",), models=None):
        self.repos, self.revisions = repos, set(revisions) | {SHA}
        self.models: dict[str, dict[str, bytes]] = models or {}
        self.requests: list[tuple[str, str]] = []
        self.faults: list[dict] = []
        self.closing = threading.Event()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, code, body=b"", headers=None, drop=False):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body[: len(body) // 2] if drop else body)
                if drop:  # the connection dies mid-body
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)

            def fault(self, path):
                for f in hub.faults:
                    if re.search(f["path"], f"{self.command} {path}") and f.get("times") != 0:
                        if f.get("times") is not None:
                            f["times"] -= 1
                        return f
                return None

            def route(self):
                path = unquote(urlparse(self.path).path)
                hub.requests.append((self.command, path))
                fault = self.fault(path)
                kind = fault and fault["kind"]
                if kind == "500":
                    return self.send(500, b'{"error":"Internal Error - the fake Hub is down"}',
                                     {"Content-Type": "application/json"})
                if kind == "stall":
                    hub.closing.wait(fault["seconds"])
                parts = path.strip("/").split("/")
                json_headers = {"Content-Type": "application/json"}
                if parts[:1] == ["api"] and parts[1:2] in (["datasets"], ["models"]) and len(parts) >= 5:
                    repo, kind, rest = "/".join(parts[2:4]), parts[4], parts[5:]
                    files = (hub.repos if parts[1] == "datasets" else hub.models).get(repo)
                    if files is None:
                        return self.send(404, b'{"error":"Repository not found"}',
                                         {"X-Error-Code": "RepoNotFound", **json_headers})
                    if kind == "revision":
                        if "/".join(rest) not in hub.revisions:
                            return self.send(404, b'{"error":"Invalid rev id"}',
                                             {"X-Error-Code": "RevisionNotFound", **json_headers})
                        body = {"id": repo, "sha": SHA, "private": False, "siblings": [{"rfilename": f} for f in files]}
                        return self.send(200, json.dumps(body).encode(), json_headers)
                    if kind == "tree":
                        body = [{"type": "file", "path": f, "size": len(c), "oid": hashlib.sha1(c).hexdigest()}
                                for f, c in files.items()]
                        return self.send(200, json.dumps(body).encode(), json_headers)
                base = 1 if parts[:1] == ["datasets"] else 0  # datasets/owner/name/resolve/... or owner/name/resolve/...
                if len(parts) >= base + 5 and parts[base + 2] == "resolve":
                    repos = hub.repos if base else hub.models
                    repo, name = "/".join(parts[base:base + 2]), "/".join(parts[base + 4:])
                    content = repos.get(repo, {}).get(name)
                    if content is None:
                        return self.send(404, b"", {"X-Error-Code": "EntryNotFound"})
                    headers = {"X-Repo-Commit": SHA, "ETag": f'"{hashlib.sha1(content).hexdigest()}"',
                               "Accept-Ranges": "bytes"}
                    start = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
                    if start and self.command == "GET":  # resuming a dropped download
                        first = int(start.group(1))
                        headers["Content-Range"] = f"bytes {first}-{len(content) - 1}/{len(content)}"
                        return self.send(206, content[first:], headers, drop=kind == "drop")
                    return self.send(200, content, headers, drop=kind == "drop")
                return self.send(404, b"")

            do_GET = do_HEAD = route

        # ThreadingHTTPServer's threads are daemons, so a stalled request never holds up close().
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def file_gets(self) -> list[str]:
        return [p for m, p in self.requests if m == "GET" and "/resolve/" in p]

    def close(self):
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_hub():
    hub = FakeHub({"owner/pics": FILES, "owner/no-images": {"README.md": b"x", "data.csv": b"a,b"}})
    yield hub
    hub.close()


DRIVER = r"""
import json, sys, time
from pathlib import Path
from runner.data import DatasetError
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
    except DatasetError as e:
        out.append({"error": str(e), "s": time.monotonic() - t})
print("RESULT " + json.dumps(out))
"""


def hub_env(tmp_path: Path, *, offline=False, endpoint="http://127.0.0.1:9", hub_cache="hf-cache", **extra):
    """The environment of a client process: its own Hub cache, the given endpoint, short
    timeouts (HF_HUB_ETAG_TIMEOUT, HF_HUB_DOWNLOAD_TIMEOUT: the documented knobs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update({
        "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_CACHE": str(tmp_path / hub_cache),
        "HF_ENDPOINT": endpoint, "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "5",
        "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_XET": "1",
        "PYTHONPATH": str(REPO_ROOT), **extra,
    })
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def run_calls(tmp_path: Path, calls, *, offline=False, endpoint="http://127.0.0.1:9", retries=2, backoff_s=0.05,
              **env_extra):
    """download_dataset for each call, in one fresh process. Retries are kept quick through
    download_dataset's own arguments."""
    env = hub_env(tmp_path, offline=offline, endpoint=endpoint, **env_extra)
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(calls),
                           json.dumps({"retries": retries, "backoff_s": backoff_s})], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("subfolder,expected", [
    (None, ["*.jpg", "*.JPG", "*.jpeg", "*.JPEG", "*.png", "*.PNG", "*.webp", "*.WEBP", "*.txt", "*.TXT"]),
    ("photos", ["photos/*.jpg", "photos/*.JPG", "photos/*.jpeg", "photos/*.JPEG", "photos/*.png", "photos/*.PNG",
                "photos/*.webp", "photos/*.WEBP", "photos/*.txt", "photos/*.TXT"]),
    ("/photos/", None),
    ("/", None),
])
def test_allow_patterns(subfolder, expected):
    if subfolder == "/photos/":
        assert allow_patterns(subfolder) == allow_patterns("photos")
    elif subfolder == "/":
        assert allow_patterns(subfolder) == allow_patterns(None)
    else:
        assert allow_patterns(subfolder) == expected


def test_allow_patterns_match_like_the_hub():
    from huggingface_hub.utils import filter_repo_objects

    kept = list(filter_repo_objects(items=list(FILES), allow_patterns=allow_patterns(None)))
    assert kept == ["a.png", "a.txt", "photos/b.JPG", "photos/b.txt", "photos/deep/c.webp"]
    kept = list(filter_repo_objects(items=list(FILES), allow_patterns=allow_patterns("photos")))
    assert kept == ["photos/b.JPG", "photos/b.txt", "photos/deep/c.webp"]


def test_offline_cases(tmp_path):
    # a pre-downloaded dest
    pre = tmp_path / "pre"
    (pre / "x").mkdir(parents=True)
    (pre / "x" / "one.png").write_bytes(png_bytes())
    # a fake regular Hub cache holding owner/cached@main
    repo_dir = tmp_path / "hf-cache" / "datasets--owner--cached"
    snap = repo_dir / "snapshots" / SHA
    for rel, content in FILES.items():
        blob = repo_dir / "blobs" / hashlib.sha256(content).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        (snap / rel).symlink_to(os.path.relpath(blob, (snap / rel).parent))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(SHA)

    empty, from_cache, sub = tmp_path / "empty", tmp_path / "from-cache", tmp_path / "sub"
    results = run_calls(tmp_path, [
        ["owner/missing", "main", str(empty), None],
        ["owner/missing", "main", str(pre), None],
        ["owner/cached", "main", str(from_cache), None],
        ["owner/cached", "main", str(sub), "photos"],
        ["owner/cached", "v2", str(tmp_path / "other-rev"), None],
    ], offline=True)

    err = results[0]["error"]
    for fragment in ["'owner/missing'", "'main'", "HF_HUB_OFFLINE", "HF_ENDPOINT", "unset HF_HUB_OFFLINE",
                     f"pre-download the files into {empty}", "--repo-type dataset"]:
        assert fragment in err, (fragment, err)
    assert results[0]["s"] < 10

    assert results[1] == {"root": str(pre), "files": ["x/one.png"], "s": results[1]["s"]}

    assert results[2]["root"] == str(from_cache)
    assert results[2]["files"] == ["a.png", "a.txt", "photos/b.JPG", "photos/b.txt", "photos/deep/c.webp"]
    assert (from_cache / "a.png").read_bytes() == FILES["a.png"] and not (from_cache / "a.png").is_symlink()

    assert results[3]["root"] == str(sub / "photos")  # the driver appends the subfolder to the returned dest
    assert results[3]["files"] == ["b.JPG", "b.txt", "deep/c.webp"]
    assert not (sub / "a.png").exists()

    assert "'v2'" in results[4]["error"] and "HF_HUB_OFFLINE" in results[4]["error"]


def test_unreachable_endpoint(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now: connection refused
    t = time.monotonic()
    [res] = run_calls(tmp_path, [["owner/pics", "main", str(tmp_path / "d"), None]],
                      endpoint=f"http://127.0.0.1:{port}")
    assert time.monotonic() - t < 30
    assert "could not be reached" in res["error"] and f"127.0.0.1:{port}" in res["error"]
    assert "set HF_ENDPOINT to use a mirror" in res["error"]


def test_download_from_fake_hub(tmp_path, fake_hub):
    dest, sub = tmp_path / "dest", tmp_path / "sub"
    results = run_calls(tmp_path, [
        ["owner/pics", "main", str(dest), None],
        ["owner/pics", "main", str(dest), None],          # second run: nothing downloaded again
        ["owner/pics", "main", str(sub), "photos/"],
        ["owner/nope", "main", str(tmp_path / "x"), None],
        ["owner/pics", "v9", str(tmp_path / "y"), None],
        ["owner/no-images", "main", str(tmp_path / "z"), None],
    ], endpoint=fake_hub.url)
    assert results[0]["files"] == ["a.png", "a.txt", "photos/b.JPG", "photos/b.txt", "photos/deep/c.webp"]
    assert (dest / "photos" / "deep" / "c.webp").read_bytes() == FILES["photos/deep/c.webp"]
    assert results[1]["files"] == results[0]["files"]
    gets = fake_hub.file_gets()
    assert sorted(g.split(f"/{SHA}/")[1] for g in gets if "/owner/pics/" in g).count("a.png") == 1
    assert not any("README.md" in g or "parquet" in g for g in gets)

    assert results[2]["root"] == str(sub / "photos/")
    assert results[2]["files"] == ["b.JPG", "b.txt", "deep/c.webp"]

    assert "'owner/nope'" in results[3]["error"] and "repository not found" in results[3]["error"]
    assert "revision 'v9' does not exist" in results[4]["error"]
    assert "no images" in results[5]["error"] and "'owner/no-images'" in results[5]["error"]

    # and the downloaded dest is reused offline
    [again] = run_calls(tmp_path, [["owner/pics", "main", str(dest), None]], offline=True)
    assert again["files"] == results[0]["files"]
