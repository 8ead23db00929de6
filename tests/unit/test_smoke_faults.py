"""Real faults planted in a copy of a user's spec: `--smoke` fails with the right message before
any model work.

"Before any model work" is enforced, not assumed: each run gets a `torch` package on PYTHONPATH
that raises when imported, so reaching the model (or the GPU) would turn into an internal error
instead of the expected message. The unbroken copy shows the poison works: it passes every
check and then stops exactly where the model is first needed.
"""
from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
POISON = "smoke fault test: torch was imported"


@pytest.fixture
def user(tmp_path) -> Path:
    """A user's spec: the real 1024 px example on a local folder of 6 square and 2 wide photos
    with .txt captions, batch 2 x 4 accumulation steps: exactly one optimizer step's worth."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, size in enumerate([(1024, 1024)] * 6 + [(2048, 1024)] * 2):
        name = f"photo-{i}"
        Image.new("RGB", size, (40 * i, 90, 200 - 20 * i)).save(photos / f"{name}.png")
        (photos / f"{name}.txt").write_text(f"a test photo number {i}\n")
    doc = yaml.safe_load((REPO / "examples" / "pixart-sigma-1024.yaml").read_text())
    ds = doc["spec"]["datasets"][0]
    for key in ("repo", "revision"):
        ds.pop(key, None)
    ds.update({"type": "local", "path": str(photos), "captionStrategy": "textfile", "cropAspect": "preserve"})
    doc["spec"]["training"].update({"batchSize": 2, "gradientAccumulationSteps": 4})
    spec = tmp_path / "user.yaml"
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    return spec


def edit(spec: Path, change) -> None:
    doc = yaml.safe_load(spec.read_text())
    change(doc["spec"])
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))


def smoke(spec: Path, tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, ET.Element]:
    poison = tmp_path / "poison" / "torch"
    poison.mkdir(parents=True, exist_ok=True)
    (poison / "__init__.py").write_text(f"raise ImportError({POISON!r})\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(poison.parent), str(REPO)]), "HF_HUB_OFFLINE": "1"}
    env.pop("TRAININGJOB_DEBUG", None)
    env.pop("TJ_SMOKE_FAULT_TOKEN", None)
    junit = tmp_path / "junit.xml"
    proc = subprocess.run([sys.executable, "-m", "runner", "run", str(spec), "--smoke", "--smoke-dir",
                           str(tmp_path / "smoke"), "--junit", str(junit), *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    return proc, ET.parse(junit).getroot()


def failures(root: ET.Element) -> dict[str, str]:
    return {case.attrib["name"]: case.find("failure").attrib["message"]
            for case in root.iter("testcase") if case.find("failure") is not None}


def assert_failed_before_the_model(proc, root, tmp_path) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out and POISON not in out, out
    assert "smoke run FAILED" in proc.stdout
    ran = {case.attrib["name"] for case in root.iter("testcase")}
    assert not ran & {"tiny model", "cache stage", "train stage", "export"}
    assert not (tmp_path / "smoke" / "cache" / "builtin").exists()
    assert not (tmp_path / "smoke" / "output").exists()


def test_the_unbroken_copy_passes_every_check_and_stops_at_the_poisoned_model(user, tmp_path):
    # A budget no run meets shows the over-budget report too, without a slow run to provoke it.
    proc, root = smoke(user, tmp_path, "--budget", "0.001")
    found = failures(root)
    assert found.pop("tiny model") == (f"internal error: ImportError: {POISON} (rerun with TRAININGJOB_DEBUG=1 "
                                       "for the traceback)"), proc.stdout + proc.stderr
    assert found.pop("time budget").startswith("took ") and "over the 0.001s budget; slowest part: " in \
        proc.stdout
    assert found == {}
    assert "dataset pseudo-camera-10k" in {c.attrib["name"] for c in root.iter("testcase")}
    assert proc.returncode == 1  # an internal error, not the user's input


def test_a_bucket_without_enough_images(user, tmp_path):
    (tmp_path / "photos" / "photo-7.png").unlink()  # the wide bucket keeps 1 image: less than one batch of 2
    proc, root = smoke(user, tmp_path)
    assert_failed_before_the_model(proc, root, tmp_path)
    message = failures(root)["dataset pseudo-camera-10k"]
    assert message.startswith("spec.datasets[0]: dataset 'pseudo-camera-10k' has 6 usable image(s) but one "
                              "optimizer step needs 8 (batchSize 2 x gradientAccumulationSteps 4 x 1 GPU)")
    assert "buckets with fewer than 2 image(s) (batchSize x GPUs) can never fill a batch and are dropped" in message


def test_missing_captions(user, tmp_path):
    for i in (0, 1, 2):
        (tmp_path / "photos" / f"photo-{i}.txt").unlink()
    proc, root = smoke(user, tmp_path)
    assert_failed_before_the_model(proc, root, tmp_path)
    message = failures(root)["dataset pseudo-camera-10k"]
    assert "has 5 usable image(s) but one optimizer step needs 8" in message
    assert "skipped: 3 without a caption .txt (photo-0.png, photo-1.png, photo-2.png). Fix: add the missing caption" in message


def test_a_validation_size_off_the_token_grid(user, tmp_path):
    edit(user, lambda spec: spec["validation"].update(resolutions="1024x1024,1000x600"))
    proc, root = smoke(user, tmp_path)
    assert_failed_before_the_model(proc, root, tmp_path)
    assert "spec.validation.resolutions: 1000x600 is not a multiple of 16 on both sides" in failures(root)["spec"]
    assert "try 1008x608" in failures(root)["spec"]


def test_an_unset_token_variable(user, tmp_path):
    edit(user, lambda spec: spec["output"].update(hub={"push": True, "repoId": "me/pixart-finetune",
                                                       "tokenEnv": "TJ_SMOKE_FAULT_TOKEN"}))
    proc, root = smoke(user, tmp_path)
    assert_failed_before_the_model(proc, root, tmp_path)
    assert failures(root) == {"token variable TJ_SMOKE_FAULT_TOKEN": (
        "spec.output.hub.tokenEnv: spec.output.hub.push is true but the environment variable TJ_SMOKE_FAULT_TOKEN "
        "is not set or empty; set it (a CI secret, or export TJ_SMOKE_FAULT_TOKEN=...), or on Kubernetes set "
        "spec.kubernetes.secrets.hubToken")}


def test_the_stand_in_photos_are_not_reported_as_the_real_dataset(tmp_path):
    """The example's Hub dataset is not read in a smoke: the bundled photos stand in for it. Their
    check must say so, not claim the real batch is filled or that the real run skips them."""
    proc, root = smoke(REPO / "examples" / "pixart-sigma-1024.yaml", tmp_path)
    cases = {case.attrib["name"]: case for case in root.iter("testcase")}
    assert cases["dataset pseudo-camera-10k"].find("skipped") is not None, proc.stdout
    line = next(ln for ln in proc.stdout.splitlines() if "dataset smoke-samples" in ln)
    assert line.split()[0] == "PASSED" and "stand-in sample photos, not dataset pseudo-camera-10k" in line, line
    assert "checked with its settings" in line and "5 smaller than minimumImageSize (" in line, line
    assert line.endswith("and 2 more) (by its settings)"), line
    assert "the real batch" not in line and "the real run skips them too" not in line, line


def test_too_few_stand_in_photos_for_the_real_batch_fail_nothing(tmp_path):
    """12 stand-in photos cannot fill a batch of 16 x 2 steps: that says nothing about the real
    dataset, so the check passes and says so (it failed the whole smoke before)."""
    proc, root = smoke(REPO / "examples" / "pixart-sigma-1024.yaml", tmp_path, "--set", "spec.training.batchSize=16")
    line = next(ln for ln in proc.stdout.splitlines() if "dataset smoke-samples" in ln)
    assert line.split()[0] == "PASSED", line
    assert "too few to fill a batch of the real size, 32 images an optimizer step, which says nothing about " \
           "pseudo-camera-10k" in line, line
    assert "dataset smoke-samples" not in failures(root)


def test_the_smoke_samples_only_images_the_real_run_trains(user, tmp_path):
    """One tall photo is alone in its bucket, too few for one batch of 2: the real run drops it,
    so the smoke (which trains batches of 1) must not sample it, though it samples each bucket
    the real run trains."""
    Image.new("RGB", (1024, 2048), (1, 2, 3)).save(tmp_path / "photos" / "tall.png")
    (tmp_path / "photos" / "tall.txt").write_text("a tall photo\n")
    proc, root = smoke(user, tmp_path)
    line = next(ln for ln in proc.stdout.splitlines() if "dataset pseudo-camera-10k" in ln)
    assert line.split()[0] == "PASSED", proc.stdout + proc.stderr
    assert "1 in a bucket too small for one batch of 2 is dropped (" in line, line
    dropped_bucket = line.split("is dropped (")[1].split()[0]
    sampled = line.split("; sampled ")[1]
    assert sampled.startswith("8 (") and dropped_bucket not in sampled, line
    copied = sorted(p.name for p in (tmp_path / "smoke" / "data" / "pseudo-camera-10k").glob("*.png"))
    assert copied == [f"photo-{i}.png" for i in range(8)], copied
