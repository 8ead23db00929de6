"""runner.data.hub: Hub dataset downloads, tested without the internet.

The library reads HF_ENDPOINT / HF_HUB_OFFLINE / HF_HUB_CACHE at import time, so each
scenario runs `download_dataset` in a subprocess with its own environment (run_calls).
"Online" cases talk to the fake Hub of tests/fakehub.py, served from this process, which can
also be told to misbehave (tests/unit/test_hub_retries.py).
"""
from __future__ import annotations

import hashlib
import os
import socket
import time

import pytest

from runner.data.hub import allow_patterns
from tests.fakehub import FILES, SHA, FakeHub, run_calls
from tests.fakehub import image_bytes as png_bytes


@pytest.fixture
def fake_hub():
    with FakeHub(datasets={"owner/pics": FILES, "owner/no-images": {"README.md": b"x", "data.csv": b"a,b"}}) as hub:
        yield hub


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
    assert res["kind"] == "HubUnavailable"


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
    assert [results[i]["kind"] for i in (3, 4, 5)] == ["DatasetError"] * 3  # retrying cannot mend these: exit 2
    assert "revision 'v9' does not exist" in results[4]["error"]
    assert "no images" in results[5]["error"] and "'owner/no-images'" in results[5]["error"]

    # and the downloaded dest is reused offline
    [again] = run_calls(tmp_path, [["owner/pics", "main", str(dest), None]], offline=True)
    assert again["files"] == results[0]["files"]
