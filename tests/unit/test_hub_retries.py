"""A Hub that answers 500, stalls, or drops the connection mid-download.

Everything runs through the real huggingface_hub client against the fake Hub of
tests/fakehub.py, told to misbehave. Timeouts are shortened with the documented
HF_HUB_ETAG_TIMEOUT / HF_HUB_DOWNLOAD_TIMEOUT, retries with download_dataset's arguments.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fakehub import FILES, SHA, FakeHub, client_env, run_calls

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPECTED = ["a.png", "a.txt", "photos/b.JPG", "photos/b.txt", "photos/deep/c.webp"]


@pytest.fixture
def hub():
    with FakeHub(datasets={"owner/pics": FILES}) as fake:
        yield fake


def count(hub: FakeHub, pattern: str) -> int:
    return sum(bool(re.search(pattern, f"{m} {p}")) for m, p in hub.calls())


def assert_whole(dest, files=EXPECTED):
    for rel in files:
        assert (dest / rel).read_bytes() == FILES[rel], rel


def test_transient_failures_are_retried_and_the_files_arrive_whole(tmp_path, hub):
    hub.faults = [
        {"path": r"GET /api/datasets/owner/pics/revision/main", "kind": 500, "times": 2},
        {"path": r"GET /api/datasets/owner/pics/tree/", "kind": 500, "times": 1},
        {"path": r"GET .*/resolve/.*/a\.png$", "kind": 500, "times": 1},          # not retried by the library
        {"path": r"GET .*/resolve/.*/photos/b\.JPG$", "kind": "drop", "times": 1},  # resumed with a Range request
        {"path": r"GET .*/resolve/.*/c\.webp$", "kind": "stall", "seconds": 30, "times": 1},  # read timeout
    ]
    dest = tmp_path / "dest"
    [res] = run_calls(tmp_path, [["owner/pics", "main", str(dest), None]], endpoint=hub.url, retries=3,
                      HF_HUB_DOWNLOAD_TIMEOUT="1")
    assert res.get("files") == EXPECTED, res
    assert_whole(dest)
    assert count(hub, r"GET /api/datasets/owner/pics/revision/main") == 3
    assert count(hub, r"GET .*/resolve/.*/photos/b\.JPG$") >= 2 and res["s"] < 60


def test_a_hub_that_keeps_answering_500_gives_a_clear_error_and_no_files(tmp_path, hub):
    hub.faults = [{"path": r"/api/datasets/", "kind": 500, "times": None}]
    dest = tmp_path / "dest"
    [res] = run_calls(tmp_path, [["owner/pics", "main", str(dest), None]], endpoint=hub.url, retries=2)
    err = res["error"]
    for fragment in ["'owner/pics'", "'main'", "HTTP 500", "tried 3 times", "HF_ENDPOINT", "HF_TOKEN",
                     "unset HF_HUB_OFFLINE", f"pre-download the files into {dest}"]:
        assert fragment in err, (fragment, err)
    assert res["kind"] == "HubUnavailable"  # still failing after the retries: exit 1, the pod is retried
    assert count(hub, r"GET /api/datasets/owner/pics/revision/main") == 3  # 1 + 2 retries, then stop
    assert not [p for p in dest.rglob("*") if p.is_file()]


def test_a_stalled_hub_times_out_instead_of_hanging(tmp_path, hub):
    # huggingface_hub asks for the repo info with no timeout at all: without our own, this
    # request would wait the full 30 s stall (and forever on a Hub that never answers).
    hub.faults = [{"path": r"GET /api/datasets/owner/pics/revision/", "kind": "stall", "seconds": 30, "times": None}]
    t = time.monotonic()
    [res] = run_calls(tmp_path, [["owner/pics", "main", str(tmp_path / "dest"), None]], endpoint=hub.url,
                      retries=1, HF_HUB_ETAG_TIMEOUT="1")
    assert time.monotonic() - t < 25
    assert "could not be reached (tried 2 times)" in res["error"] and "Timeout" in res["error"], res
    assert res["kind"] == "HubUnavailable"


def test_a_download_cut_for_good_is_never_used_and_a_later_run_resumes_it(tmp_path, hub):
    half = len(FILES["photos/b.JPG"]) // 2
    hub.faults = [{"path": r"GET .*/resolve/.*/photos/b\.JPG$", "kind": "drop", "times": 1},
                  {"path": r"GET .*/resolve/.*/photos/b\.JPG$", "kind": 500, "times": None}]
    dest = tmp_path / "dest"
    [res] = run_calls(tmp_path, [["owner/pics", "main", str(dest), None]], endpoint=hub.url, retries=1)
    assert "HTTP 500 (tried 2 times)" in res["error"] and "photos/b.JPG" in res["error"], res
    assert not (dest / "photos" / "b.JPG").exists()  # only huggingface_hub's hidden .incomplete holds the half
    assert_whole(dest, ["a.png", "photos/deep/c.webp"])

    # Offline on another machine's Hub cache (no record of the commit there): the half
    # download is refused, not handed to the cache stage as a smaller dataset.
    [offline] = run_calls(tmp_path, [["owner/pics", "main", str(dest), None]], offline=True, hub_cache="other-cache")
    assert "did not finish" in offline["error"] and "unset HF_HUB_OFFLINE" in offline["error"], offline
    assert offline["kind"] == "DatasetError"  # offline stays offline: retrying the pod cannot mend it
    # The Hub still down: the same.
    hub.faults = [{"path": r"/api/datasets/", "kind": 500, "times": None}]
    [down] = run_calls(tmp_path, [["owner/pics", "main", str(dest), None]], endpoint=hub.url, retries=0)
    assert "HTTP 500" in down["error"], down

    # The Hub back: the download resumes where it stopped and completes.
    hub.faults, hub.requests = [], []
    [again] = run_calls(tmp_path, [["owner/pics", "main", str(dest), None]], endpoint=hub.url)
    assert again.get("files") == EXPECTED, again
    assert_whole(dest)
    assert count(hub, r"GET .*/resolve/.*/a\.png$") == 0  # finished files are not fetched again
    assert half > 0

    # A complete download is trusted offline, and when the Hub is down.
    [offline] = run_calls(tmp_path, [["owner/pics", "main", str(dest), None]], offline=True, hub_cache="other-cache")
    assert offline.get("files") == EXPECTED, offline
    hub.faults = [{"path": r"/api/", "kind": 500, "times": None}]
    [down] = run_calls(tmp_path, [["owner/pics", "main", str(dest), None]], endpoint=hub.url, retries=0)
    assert down.get("files") == EXPECTED, down


MODEL_DRIVER = r"""
import json, sys
from pathlib import Path
from runner.data import HubUnavailable
from runner.models.pipeline import ModelError
from runner.models.registry import family
out = {}
for repo in sys.argv[1:]:
    try:
        folder = family("pixart_sigma").resolve(repo, "main", Path("unused"), retries=1, backoff_s=0.05)
        out[repo] = {"files": sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())}
    except (ModelError, HubUnavailable) as e:
        out[repo] = {"error": str(e), "kind": type(e).__name__}
print("RESULT " + json.dumps(out))
"""

PIPELINE = {"model_index.json": b'{"_class_name": "PixArtSigmaPipeline"}', "vae/config.json": b"{}",
            "vae/diffusion_pytorch_model.safetensors": b"\x00" * 4096, "scheduler/scheduler_config.json": b"{}",
            "README.md": b"# card"}


def test_model_downloads_are_retried_checked_and_worded(tmp_path):
    """One process (runner.models imports torch: slow to start) resolves two Hub models."""
    hub = FakeHub(models={"owner/flaky": PIPELINE, "owner/down": PIPELINE})
    hub.faults = [
        {"path": r"GET /owner/flaky/resolve/.*/vae/diffusion_pytorch_model\.safetensors$", "kind": 500, "times": 1},
        {"path": r"GET /api/models/owner/flaky/tree/", "kind": 500, "times": 1},
        # (a HEAD answered 500 is retried by huggingface_hub itself, with its own fixed backoff)
        {"path": r"GET /owner/down/resolve/.*/vae/", "kind": 500, "times": None},
    ]
    try:
        proc = subprocess.run([sys.executable, "-c", MODEL_DRIVER, "owner/flaky", "owner/down"],
                              env=client_env(tmp_path, endpoint=hub.url), cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
    finally:
        hub.close()
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    res = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert res["owner/flaky"].get("files") == sorted(set(PIPELINE) - {"README.md"}), res
    # The branch's commit is recorded, so a later HF_HUB_OFFLINE=1 run finds the model.
    assert (tmp_path / "hf-cache" / "models--owner--flaky" / "refs" / "main").read_text() == SHA
    err = res["owner/down"]["error"]
    for fragment in ["spec.model.pretrained: owner/down@main", "HTTP 500", "after retries", "HF_ENDPOINT",
                     "HF_TOKEN", "HF_HUB_OFFLINE=1"]:
        assert fragment in err, (fragment, err)
    assert res["owner/down"]["kind"] == "HubUnavailable"  # exit 1: a later try of the pod may work


@pytest.mark.parametrize("dataset, code", [
    ("owner/pics", 1),  # the Hub keeps answering 500: exit 1, so Kubernetes retries the pod
    ("owner/nope", 2),  # not found: bad input, the Job fails at once
])
def test_the_exit_code_of_a_failed_dataset_download(monkeypatch, tmp_path, capfd, hub, dataset, code):
    """`run --stage cache` in this process, the download real, its retries made quick."""
    from runner.data import hub as hub_module
    from runner.exitcodes import EXIT_INTERNAL, EXIT_INVALID
    from runner.launch import run as launch_run
    from runner.spec.load import load_spec
    from tests.fakehub import point_client_at

    point_client_at(monkeypatch, tmp_path, hub.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setitem(hub_module.download_dataset.__kwdefaults__, "retries", 1)
    monkeypatch.setitem(hub_module.download_dataset.__kwdefaults__, "backoff_s", 0.01)
    hub.faults = [{"path": r"/api/datasets/owner/pics/", "kind": 500, "times": None}]
    job = load_spec(REPO_ROOT / "examples" / "smoke.yaml",
                    [f"spec.output.dir={tmp_path / 'out'}", f"spec.cacheDir={tmp_path / 'cache'}", "spec.metrics.port=0",
                     "spec.datasets.0.type=huggingface", f"spec.datasets.0.repo={dataset}"])
    assert launch_run.run_job(job, "cache") == {1: EXIT_INTERNAL, 2: EXIT_INVALID}[code]
    err = capfd.readouterr().err
    assert f"'{dataset}'" in err and ("HTTP 500 (tried 2 times)" in err if code == 1 else "repository not found" in err)


def test_retry_after_sets_the_wait_between_tries(hub):
    """A 429 or 503 carrying Retry-After (seconds) is waited out as the Hub asks, capped at a
    minute; an answer without it keeps the exponential backoff."""
    from huggingface_hub import HfApi

    from runner.data.hub import with_retries

    info = r"GET /api/datasets/owner/pics/revision/main"
    hub.faults = [
        {"path": info, "kind": 429, "headers": {"Retry-After": "7"}, "times": 1},
        {"path": info, "kind": 503, "headers": {"Retry-After": "0"}, "times": 1},
        {"path": info, "kind": 429, "headers": {"Retry-After": "3600"}, "times": 1},
        {"path": info, "kind": 503, "times": 1},
    ]
    waits, lines = [], []
    sha = with_retries(lambda: HfApi(endpoint=hub.url).repo_info("owner/pics", repo_type="dataset", revision="main").sha,
                       "dataset owner/pics@main", retries=4, backoff_s=2.0, log=lines.append, sleep=waits.append)
    assert sha == SHA
    assert waits == [7.0, 0.0, 60.0, 16.0]
    assert count(hub, info) == 5
    assert "retrying in 7s (the Hub's Retry-After) (1/4)" in lines[0] and "Retry-After" not in lines[3]
