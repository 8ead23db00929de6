"""Cache keys in action: reruns reuse, changed parameters re-encode only what they affect."""
from __future__ import annotations

import re
import shutil

import pytest
from PIL import Image

from tests.e2e.conftest import assert_clean, dataset_manifest

pytestmark = pytest.mark.e2e


def test_rerun_reencodes_nothing_and_changes_reencode_only_what_they_affect(runner, tmp_path):
    assert_clean(runner.run(stage="cache"))
    first = runner.cache_report()
    assert first["text_encoded"] == first["text_total"] > 0
    assert first["latents_encoded"] == first["latents_total"] >= 12

    assert_clean(runner.run(stage="cache"))
    again = runner.cache_report()
    assert again["text_encoded"] == 0 and again["latents_encoded"] == 0

    # A new resolution changes every crop plan: all latents re-encode, no text embed does.
    assert_clean(runner.run("spec.datasets.0.resolution=64", stage="cache"))
    res = runner.cache_report()
    assert res["latents_encoded"] == res["latents_total"] and res["text_encoded"] == 0

    # A new T5 max length changes every text embedding and no latent.
    assert_clean(runner.run("spec.model.textEncoderMaxLength=16", stage="cache"))
    tok = runner.cache_report()
    assert tok["text_encoded"] == tok["text_total"] and tok["latents_encoded"] == 0

    # Back to the original settings: everything is still there.
    assert_clean(runner.run(stage="cache"))
    back = runner.cache_report()
    assert back["text_encoded"] == 0 and back["latents_encoded"] == 0

    # The model is its content: the same bytes in a new folder with new mtimes (a pod that
    # downloads the same revision again) re-encode nothing ...
    copy = tmp_path / "downloaded-again"
    shutil.copytree(runner.model, copy, copy_function=shutil.copy)  # contents only: new mtimes
    assert_clean(runner.run(f"spec.model.pretrained={copy}", stage="cache"))
    moved = runner.cache_report()
    assert moved["text_encoded"] == 0 and moved["latents_encoded"] == 0
    # ... and one changed byte in the VAE's weights re-encodes every latent, no text embedding.
    weights = copy / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # the last byte of the last tensor: still a valid file, other weights
    weights.write_bytes(bytes(data))
    assert_clean(runner.run(f"spec.model.pretrained={copy}", stage="cache"))
    vae = runner.cache_report()
    assert vae["latents_encoded"] == vae["latents_total"] and vae["text_encoded"] == 0


def test_train_stage_refuses_a_cache_built_for_other_settings(runner):
    assert_clean(runner.run(stage="cache"))
    proc = runner.run("spec.datasets.0.resolution=64", stage="train")
    assert_clean(proc, code=2)
    assert "no cache manifest; run the cache stage first" in proc.stderr


def test_train_stage_refuses_an_incomplete_cache_and_the_cache_stage_repairs_it(runner):
    from runner.cache.keys import entry_path

    assert_clean(runner.run(stage="cache"))
    items = dataset_manifest(runner.cache)["items"]
    entry_path(runner.cache / "vae" / "photos", items[3]["latent_key"]).unlink()
    proc = runner.run(stage="train")
    assert_clean(proc, code=2)
    assert "cache is incomplete: 1 entry is missing" in proc.stderr
    assert_clean(runner.run(stage="cache"))
    assert runner.cache_report()["latents_encoded"] == 1


def test_repeats_change_training_without_recaching(runner):
    """`repeats` changes no cached bytes: the train stage takes it from the live spec."""
    assert_clean(runner.run(stage="cache"))
    sets = ("spec.training.maxSteps=1", "spec.validation.prompts=[]")
    once = runner.run(*sets, stage="train")
    assert_clean(once)
    twice = runner.run(*sets, "spec.datasets.0.repeats=1", "spec.output.dir=" + str(runner.tmp / "out2"),
                       stage="train")
    assert_clean(twice)
    per_epoch = [int(re.search(r"\((\d+) per epoch\)", p.stdout).group(1)) for p in (once, twice)]
    assert per_epoch[1] >= 2 * per_epoch[0]


def test_train_stage_warns_about_images_changed_since_the_cache(runner, sample_photos):
    """The train stage trains on the cache: images deleted or rewritten since then train as they
    were cached. It says so, naming them, and trains; an unchanged folder gets no warning."""
    photos = runner.tmp / "photos"
    shutil.copytree(sample_photos, photos)
    for image in photos.glob("*.png"):
        image.with_suffix(".txt").write_text(image.stem + "\n")
    local = ("spec.datasets.0.type=local", f"spec.datasets.0.path={photos}", "spec.training.maxSteps=1",
             "spec.validation.prompts=[]", "spec.datasets.0.captionStrategy=textfile")
    assert_clean(runner.run(*local, stage="cache"))
    quiet = runner.run(*local, stage="train")
    assert_clean(quiet)
    assert "changed since the cache stage" not in quiet.stdout + quiet.stderr
    images = sorted(p for p in photos.rglob("*") if p.suffix in (".png", ".jpg"))
    images[0].unlink()
    images[1].write_bytes(images[1].read_bytes() + b"\0")  # same pixels, another file
    caption = images[2].with_suffix(".txt")  # the image as cached, its caption not: the embedding is stale
    caption.write_text("a caption written after the cache stage\n")
    proc = runner.run(*local, f"spec.output.dir={runner.tmp / 'out2'}", stage="train")
    assert_clean(proc)
    out = proc.stdout + proc.stderr
    assert "warning: 3 image(s) or caption(s) changed since the cache stage (" in out, out[-3000:]
    assert f"photos/{images[0].relative_to(photos).as_posix()} (gone)" in out
    assert f"photos/{images[1].relative_to(photos).as_posix()} (rewritten)" in out
    assert f"photos/{images[2].relative_to(photos).as_posix()} (caption changed)" in out


def test_jobs_sharing_a_cache_dir_each_train_on_their_own_manifest(runner):
    """One manifest per cache dir used to be overwritten by the next job that cached other
    settings there: job A's train stage then exited 2 ("the cache was built for different
    settings"), and a report showed whatever cache the dir held last, even another job's."""
    quick = ("spec.training.maxSteps=1", "spec.training.lrWarmupSteps=0", "spec.validation.prompts=[]",
             "spec.tracking.tensorboard=false")
    job_a = ("metadata.name=job-a", f"spec.output.dir={runner.tmp / 'out-a'}", *quick)
    assert_clean(runner.run(*job_a, stage="cache"))
    job_b = runner.run("metadata.name=job-b", f"spec.output.dir={runner.tmp / 'out-b'}", *quick,
                       "spec.datasets.0.resolution=192")
    assert_clean(job_b)
    train_a = runner.run(*job_a, stage="train")
    assert_clean(train_a)
    assert "for 1 step" in train_a.stdout
    assert len(list((runner.cache / "manifests").glob("*.json"))) == 2  # one per cache configuration
    # The same settings under another job name share A's manifest: nothing is encoded again.
    assert_clean(runner.run("metadata.name=job-c", f"spec.output.dir={runner.tmp / 'out-c'}", *quick, stage="cache"))
    assert runner.cache_report()["latents_encoded"] == runner.cache_report()["text_encoded"] == 0
    assert len(list((runner.cache / "manifests").glob("*.json"))) == 2

    # A job whose cache stage fails shows no other job's cache in its report. (A missing folder
    # is refused before any report is written; one image for a batch of 2 fails in the stage.)
    lonely = runner.tmp / "one-image"
    lonely.mkdir()
    Image.new("RGB", (256, 256), (120, 30, 200)).save(lonely / "only.jpg")
    (lonely / "only.txt").write_text("a purple square")
    failed = runner.run("metadata.name=job-d", f"spec.output.dir={runner.tmp / 'out-d'}", *quick,
                        "spec.datasets.0.type=local", f"spec.datasets.0.path={lonely}",
                        "spec.datasets.0.captionStrategy=textfile", "spec.training.batchSize=2")
    assert_clean(failed, code=2)
    assert "0 usable image(s) but one optimizer step needs 2" in failed.stderr, failed.stderr
    assert "No cache manifest yet" in (runner.tmp / "out-d" / "report.html").read_text()
    assert "No cache manifest yet" not in (runner.tmp / "out-a" / "report.html").read_text()  # A's own cache
