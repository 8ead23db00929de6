"""runner.data.preflight: plan_dataset and dataset_problems over real files."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from runner.data import DatasetError
from runner.data.discovery import DigestMemo
from runner.files import file_digest
from runner.data.preflight import DatasetPlan, dataset_problems, plan_dataset, seed_key_for

REPO = Path(__file__).resolve().parents[2]


def img(path: Path, size=(256, 256), caption: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 200, 90)).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)
    return path


def spec(datasets, batch=1, accum=1, gpus=1, nodes=1, seed=42):
    return {"datasets": datasets,
            "training": {"batchSize": batch, "gradientAccumulationSteps": accum, "seed": seed},
            "hardware": {"gpusPerNode": gpus, "nodes": nodes}}


def ds(path, **kw):
    base = {"name": "photos", "type": "local", "path": str(path), "crop": True, "cropAspect": "preserve",
            "cropStyle": "random", "resolution": 128, "resolutionType": "pixel", "captionStrategy": "filename",
            "disabled": False}
    return base | kw


@pytest.fixture
def mixed(tmp_path):
    root = tmp_path / "data"
    for i in range(4):
        img(root / f"square_{i}.png", (256, 256), caption=f"square {i}")
    for i in range(3):
        img(root / "wide" / f"wide ({i}).jpg", (384, 256))           # 192x128, no captions
    img(root / "tiny.png", (40, 40), caption="tiny")
    (root / "broken.png").write_bytes(b"not an image")
    return root


def test_plan_dataset_items_captions_buckets(mixed):
    plan = plan_dataset(ds(mixed, minimumImageSize=64), mixed, seed=1)
    assert isinstance(plan, DatasetPlan) and plan.name == "photos" and plan.root == mixed
    assert plan.bucket_counts() == {"128x128": 4, "192x128": 3}
    by_rel = {it.info.rel: it for it in plan.items}
    assert by_rel["wide/wide (1).jpg"].caption == "wide"
    assert by_rel["square_2.png"].caption == "square"
    assert all(it.digest is None for it in plan.items)
    assert all(it.bucket == f"{it.plan.target_size[0]}x{it.plan.target_size[1]}" for it in plan.items)
    reasons = dict(plan.skipped)
    assert set(reasons) == {"tiny.png", "broken.png"}
    assert "smaller than minimumImageSize 64" in reasons["tiny.png"]
    assert "2 skipped" in plan.skipped_summary()
    indices = plan.bucket_to_indices()
    assert {k: len(v) for k, v in indices.items()} == plan.bucket_counts()
    assert all(plan.items[i].bucket == k for k, idx in indices.items() for i in idx)


def test_plan_dataset_textfile_skips_uncaptioned(mixed):
    plan = plan_dataset(ds(mixed, captionStrategy="textfile"), mixed, seed=1)
    assert sorted(it.info.rel for it in plan.items) == ["square_0.png", "square_1.png", "square_2.png",
                                                        "square_3.png", "tiny.png"]
    assert [it.caption for it in plan.items if it.info.rel == "square_3.png"] == ["square 3"]
    reasons = dict(plan.skipped)
    assert reasons["wide/wide (0).jpg"].startswith("no caption file; captionStrategy textfile expects wide/wide (0).txt")
    assert "3 without a caption .txt" in plan.skipped_summary()


def test_plan_dataset_with_digest_changes_only_the_seed(mixed):
    a = plan_dataset(ds(mixed), mixed, seed=5)
    b = plan_dataset(ds(mixed), mixed, seed=5, digest=DigestMemo(None))
    assert [it.bucket for it in a.items] == [it.bucket for it in b.items]
    for it in b.items:
        assert it.digest == file_digest(it.info.path)
    # random crop seeded from content: identical files (same colour, same size) crop identically
    wide = [it.plan.crop_box for it in b.items if it.info.rel.startswith("wide/")]
    assert len(set(wide)) == 1
    assert seed_key_for(b.items[0].info, 5, b.items[0].digest) == f"{b.items[0].digest}:5"
    info = a.items[0].info
    assert seed_key_for(info, 5) == f"{info.rel}:{info.size_bytes}:{info.mtime_ns}:5"


def test_plan_dataset_is_reproducible(mixed):
    ds_ = ds(mixed, cropAspect="square")
    for _ in range(2):
        img(mixed / "big.png", (900, 300))
        os.utime(mixed / "big.png", ns=(1, 1))  # same mtime each time: same seed key
        first = {it.info.rel: it.plan for it in plan_dataset(ds_, mixed, seed=3).items}
        assert first == {it.info.rel: it.plan for it in plan_dataset(ds_, mixed, seed=3).items}
    assert first["big.png"].crop_box[1] == 0


def test_plan_dataset_works_on_undefaulted_entry(mixed):
    plan = plan_dataset({"name": "x"}, mixed, seed=0)  # schema defaults: area 1.0, crop false -> preserve
    assert plan.bucket_counts() == {"1024x1024": 5, "1280x832": 3}


def test_plan_dataset_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="no such directory"):
        plan_dataset(ds(tmp_path / "nope"), tmp_path / "nope", seed=0)


# ----------------------------------------------------------------------------- dataset_problems

PROBLEM_CASES = [
    # id, dataset overrides, spec kwargs, expected fragments (None = no problem)
    ("fits", {}, dict(batch=2, accum=2), None),
    ("needs-more", {}, dict(batch=2, accum=2, gpus=2),
     ["spec.datasets[0]: dataset 'photos' has 5 usable image(s) but one optimizer step needs 8",
      "(batchSize 2 x gradientAccumulationSteps 2 x 2 GPUs)", "128x128: 5, 192x128: 3", "dropped (3 of 8",
      "1 of 9 image(s) under", "skipped: 1 unreadable (broken.png). Fix: "]),
    ("world-size-is-gpus-times-nodes", {}, dict(batch=1, accum=2, gpus=2, nodes=2),
     ["needs 8", "x 4 GPUs"]),
    ("textfile-uncaptioned-unusable", {"captionStrategy": "textfile", "minimumImageSize": 64}, dict(batch=4),
     ["has 0 usable", "needs 4", "128x128: 3;", "dropped (3 of 3",
      "6 of 9 image(s) under", "skipped: 4 without a caption .txt (", "1 smaller than minimumImageSize (tiny.png), 1 unreadable (broken.png)"]),
    # repeats: 1 doubles every bucket (5 -> 10 square, 3 -> 6 wide), as the sampler sees it.
    ("repeats-count", {"repeats": 1}, dict(batch=2, accum=2, gpus=2), None),
    ("repeats-not-enough", {"repeats": 1}, dict(batch=4, accum=5), ["has 16 usable image(s)", "needs 20"]),
    ("square-merges-buckets", {"cropAspect": "square", "minimumImageSize": 64}, dict(batch=7), None),
    ("minimum-too-high", {"minimumImageSize": 10000}, dict(),
     ["spec.datasets[0]: dataset 'photos' has no usable images", "smaller than minimumImageSize"]),
]


@pytest.mark.parametrize("over", [
    {},                                                         # crop false: preserve target
    {"crop": False},
    {"cropAspect": "square"},
    {"cropAspect": "closest", "resolution": 1.0, "resolutionType": "area"},
    {"resolution": 1024, "minimumImageSize": 0},                # the sweep's case
])
def test_plan_dataset_skips_images_beyond_4_to_1(tmp_path, over):
    root = tmp_path / "data"
    img(root / "ok.png", (256, 256))
    img(root / "edge.png", (400, 100))                          # exactly 4:1: kept
    img(root / "long.png", (2000, 10))
    img(root / "tall.png", (3, 900))
    plan = plan_dataset(ds(root, **over), root, seed=1)
    assert {it.info.rel for it in plan.items} == {"ok.png", "edge.png"}
    reasons = dict(plan.skipped)
    assert set(reasons) == {"long.png", "tall.png"}
    assert reasons["long.png"].startswith("2000x10 has aspect ratio 200:1, beyond the 4:1 limit")
    assert reasons["tall.png"].startswith("3x900 has aspect ratio 300:1, beyond the 4:1 limit")
    assert plan.skipped_summary() == "2 skipped: 2 with an aspect ratio beyond 4:1 (long.png, tall.png)"
    for it in plan.items:
        w, h = it.plan.target_size
        assert max(w, h) <= 4 * min(w, h)


@pytest.mark.parametrize("case,over,kw,expected", PROBLEM_CASES, ids=[c[0] for c in PROBLEM_CASES])
def test_dataset_problems_table(mixed, case, over, kw, expected):
    if case == "textfile-uncaptioned-unusable":
        (mixed / "square_0.txt").unlink()  # 3 captioned squares + tiny(filtered) -> 3 usable
    problems = dataset_problems(spec([ds(mixed, **over)], **kw))
    if expected is None:
        assert problems == []
        return
    assert len(problems) == 1, problems
    for fragment in expected:
        assert fragment in problems[0], (fragment, problems[0])


def test_disabled_and_other_types_are_not_checked(tmp_path, mixed):
    problems = dataset_problems(spec([
        ds(tmp_path / "absent", disabled=True),
        ds(mixed, disabled=True, minimumImageSize=10000),
        {"name": "hub", "type": "huggingface", "repo": "a/b", "disabled": False},
        {"name": "s", "type": "samples", "disabled": False},
    ], batch=1000))
    assert problems == []


def test_a_missing_directory_is_reported_with_its_field_and_path(tmp_path, mixed):
    problems = dataset_problems(spec([ds(mixed), ds(tmp_path / "absent", name="second")]))
    assert problems == [f"spec.datasets[1].path: {tmp_path / 'absent'} does not exist; create it and put the "
                        "images there, or point path at your images"]


def test_a_path_on_the_kubernetes_data_volume_exists_only_in_the_pod(tmp_path):
    on_volume = spec([ds("/data/photos"), ds("/elsewhere/photos", name="second")])
    on_volume["kubernetes"] = {"volumes": {"data": {"claimName": "images", "mountPath": "/data"}}}
    assert [p.split(":")[0] for p in dataset_problems(on_volume)] == ["spec.datasets[1].path"]
    # Without the volume, /data/photos is a path on this machine like any other.
    del on_volume["kubernetes"]
    assert [p.split(":")[0] for p in dataset_problems(on_volume)] == ["spec.datasets[0].path", "spec.datasets[1].path"]


def test_path_that_is_a_file(tmp_path, mixed):
    f = tmp_path / "images.zip"
    f.write_bytes(b"PK")
    assert dataset_problems(spec([ds(mixed), ds(f)])) == [
        f"spec.datasets[1].path: {f} is a file, not a directory of images"]


def test_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no images")
    problems = dataset_problems(spec([ds(tmp_path / "empty")]))
    assert problems == [f"spec.datasets[0]: no images (.jpg, .jpeg, .png, .webp) found under {tmp_path / 'empty'}"]


def test_indexes_follow_spec_positions(tmp_path, mixed):
    problems = dataset_problems(spec([ds(mixed), ds(mixed, name="second", minimumImageSize=10000)], batch=2))
    assert [p.split(":")[0] for p in problems] == ["spec.datasets[1]"]


def test_with_a_loaded_spec(tmp_path, mixed):
    """The defaulted dict from runner.spec works as input."""
    from runner.spec.load import job_from_document

    doc = {"apiVersion": "diffusion.runner.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "t"},
           "spec": {"datasets": [{"name": "photos", "path": str(mixed), "crop": True, "cropAspect": "square",
                                  "resolution": 128, "resolutionType": "pixel"}],
                    "training": {"maxSteps": 1, "batchSize": 3, "gradientAccumulationSteps": 3},
                    "hardware": {"accelerator": "cpu"}}}
    full = job_from_document(doc).spec.to_dict()
    assert dataset_problems(full) == [
        "spec.datasets[0]: dataset 'photos' has 8 usable image(s) but one optimizer step needs 9 "
        "(batchSize 3 x gradientAccumulationSteps 3 x 1 GPU); images per bucket: 128x128: 8; "
        f"1 of 9 image(s) under {mixed} skipped: 1 unreadable (broken.png). "
        "Fix: replace or remove the unreadable files, add images, lower spec.training.batchSize "
        "or lower spec.training.gradientAccumulationSteps"]  # not cropAspect: square (set), nor minimumImageSize (unset)
    # the whole document (what `trainingjob validate` passes) works the same
    assert dataset_problems(job_from_document(doc).document.to_dict()) == dataset_problems(full)
    doc["spec"]["training"]["gradientAccumulationSteps"] = 2
    assert dataset_problems(job_from_document(doc).spec.to_dict()) == []


def test_data_layer_imports_neither_torch_nor_hub_eagerly():
    import subprocess
    import sys

    code = ("import sys, runner.data.discovery, runner.data.captions, runner.data.transforms, runner.data.buckets, "
            "runner.data.preflight, runner.data.samples, runner.data.hub; "
            "print(sorted(m for m in ('torch', 'huggingface_hub', 'skimage', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_digest_memo_reuses_unchanged_files_and_rehashes_rewritten_ones(tmp_path, mixed):
    import os

    memo_path = tmp_path / "digests.json"
    memo = DigestMemo(memo_path)
    first = plan_dataset(ds(mixed), mixed, seed=5, digest=memo)
    memo.save()
    target = mixed / "square_0.png"
    # A file rewritten in place (new content, new mtime) must be hashed again...
    Image.new("RGB", (256, 256), (1, 2, 3)).save(target)
    os.utime(target, ns=(1, 1))
    again = DigestMemo(memo_path)
    second = plan_dataset(ds(mixed), mixed, seed=5, digest=again)
    before = {it.info.rel: it.digest for it in first.items}
    after = {it.info.rel: it.digest for it in second.items}
    assert after["square_0.png"] == file_digest(target) != before["square_0.png"]
    # ...while the others come from the memo: poison one remembered digest to prove it is read.
    key = str((mixed / "square_1.png").resolve())
    again.entries[key][2] = "remembered"
    third = plan_dataset(ds(mixed), mixed, seed=5, digest=again)
    assert {it.info.rel: it.digest for it in third.items}["square_1.png"] == "remembered"
    assert {k: v for k, v in after.items() if k != "square_0.png"} == {k: v for k, v in before.items() if k != "square_0.png"}


@pytest.mark.parametrize("counts, skipped, expected", [
    ({"128x128": 10, "192x128": 6, "256x128": 1}, None,
     "spec.datasets[0] (photos): 17 usable images: 128x128 10, 192x128 6, 256x128 1"),
    ({"256x128": 6, "128x128": 10, "192x128": 6}, None,   # fullest first, ties by name
     "spec.datasets[0] (photos): 22 usable images: 128x128 10, 192x128 6, 256x128 6"),
    ({"128x128": 1}, "2 skipped: 2 unreadable",
     "spec.datasets[0] (photos): 1 usable image: 128x128 1; 2 skipped: 2 unreadable"),
])
def test_bucket_summary_table(counts, skipped, expected):
    from runner.data.preflight import bucket_summary

    assert bucket_summary("spec.datasets[0]", "photos", counts, skipped) == expected


@pytest.mark.parametrize("dropped, per_batch, expected", [
    ({}, 2, None),
    ({"320x128": 1}, 2, "1 in a bucket too small for one batch of 2 is dropped (320x128 1)"),
    ({"320x128": 1, "128x192": 3}, 4, "4 in buckets too small for one batch of 4 are dropped (128x192 3, 320x128 1)"),
])
def test_dropped_summary_table(dropped, per_batch, expected):
    from runner.data.preflight import dropped_summary

    assert dropped_summary(dropped, per_batch) == expected


@pytest.fixture
def lopsided(tmp_path):
    """Buckets 128x128 5, 128x192 1, 320x128 1 (at resolution 128 px, crop preserve)."""
    root = tmp_path / "lopsided"
    for i in range(5):
        img(root / f"square_{i}.png", (256, 256))
    img(root / "tall.png", (256, 384))
    img(root / "wide.png", (640, 256))
    return root


# id, dataset overrides, spec kwargs, the summary line (the user's report: batchSize 2 counted 7 usable)
DROPPED_CASES = [
    ("batch-1-trains-all", {}, dict(batch=1),
     "spec.datasets[0] (photos): 7 usable images: 128x128 5, 128x192 1, 320x128 1"),
    ("batch-2-drops-singletons", {}, dict(batch=2),
     "spec.datasets[0] (photos): 5 usable images: 128x128 5; 2 in buckets too small for one batch of 2 are "
     "dropped (128x192 1, 320x128 1)"),
    # A micro-batch is batchSize x GPUs; accumulation takes more batches, not bigger ones.
    ("gpus-widen-the-batch", {}, dict(batch=1, gpus=2),
     "spec.datasets[0] (photos): 5 usable images: 128x128 5; 2 in buckets too small for one batch of 2 are "
     "dropped (128x192 1, 320x128 1)"),
    ("accumulation-does-not", {}, dict(batch=1, accum=2),
     "spec.datasets[0] (photos): 7 usable images: 128x128 5, 128x192 1, 320x128 1"),
    # repeats: 1 puts each image in its bucket twice, so a single image fills a batch of 2.
    ("repeats-fill-a-batch", {"repeats": 1}, dict(batch=2),
     "spec.datasets[0] (photos): 7 usable images: 128x128 5, 128x192 1, 320x128 1"),
]


@pytest.mark.parametrize("case,over,kw,expected", DROPPED_CASES, ids=[c[0] for c in DROPPED_CASES])
def test_the_summary_counts_only_buckets_that_fill_a_batch(lopsided, case, over, kw, expected):
    from runner.data.preflight import check_local_datasets

    assert check_local_datasets(spec([ds(lopsided, **over)], **kw)) == ([], [expected])


def test_local_datasets_that_pass_get_a_summary_and_the_others_a_problem(mixed):
    from runner.data.preflight import check_local_datasets

    problems, summaries = check_local_datasets(spec([ds(mixed), ds(mixed, name="second", minimumImageSize=10000)]))
    assert [p.split(":")[0] for p in problems] == ["spec.datasets[1]"]
    assert summaries == ["spec.datasets[0] (photos): 8 usable images: 128x128 5, 192x128 3; 1 skipped: 1 unreadable "
                         "(broken.png); 1 enlarged more than 2x to fill its bucket (tiny.png 40x40 to 128x128); "
                         "set minimumImageSize to skip such images"]


def test_validate_prints_the_bucket_counts_of_a_local_dataset(cli, tmp_path):
    from runner.data.samples import materialize_samples

    photos = materialize_samples(tmp_path / "samples")  # the scikit-image sample photos
    result = cli("validate", REPO / "examples" / "smoke.yaml", "--set", "spec.datasets.0.type=local",
                 "--set", f"spec.datasets.0.path={photos}")
    assert result.code == 0, result.err
    head, line = result.out.splitlines()
    assert head.endswith(": valid TrainingJob 'smoke'")
    assert line.startswith("  spec.datasets[0] (") and " usable images: " in line, line


# ----------------------------------------------------------------------------- naming what it says

def test_skips_name_their_files_a_few_per_kind(tmp_path):
    root = tmp_path / "data"
    for i in range(5):
        (root / f"broken-{i}.png").parent.mkdir(parents=True, exist_ok=True)
        (root / f"broken-{i}.png").write_bytes(b"not an image")
    img(root / "long.png", (2000, 100))
    img(root / "ok.png", (256, 256))
    plan = plan_dataset(ds(root), root, seed=1)
    assert plan.skipped_summary() == ("6 skipped: 5 unreadable (broken-0.png, broken-1.png, broken-2.png and 2 more), "
                                      "1 with an aspect ratio beyond 4:1 (long.png)")


def test_images_enlarged_more_than_twice_are_named_the_most_enlarged_first(tmp_path):
    root = tmp_path / "data"
    for name, side in (("tiny", 20), ("small", 60), ("twice", 64), ("big", 200), ("huge", 900)):
        img(root / f"{name}.png", (side, side))
    plan = plan_dataset(ds(root, cropAspect="square"), root, seed=1)  # 128 px on the shorter side
    assert {it.info.rel: round(it.plan.enlargement, 2) for it in plan.items} == {
        "tiny.png": 6.4, "small.png": 2.13, "twice.png": 2.0, "big.png": 0.64, "huge.png": 0.14}
    assert plan.enlarged_summary() == ("2 enlarged more than 2x to fill their bucket (tiny.png 20x20 to 128x128, "
                                       "small.png 60x60 to 128x128); set minimumImageSize to skip such images")
    skipping = plan_dataset(ds(root, cropAspect="square", minimumImageSize=64), root, seed=1)
    assert skipping.enlarged_summary() is None  # what the note tells the user to do works


def test_a_downsampled_image_is_measured_from_its_downsampled_size(tmp_path):
    root = tmp_path / "data"
    img(root / "big.png", (1000, 1000))
    plan = plan_dataset(ds(root, cropAspect="square", maximumImageSize=500, targetDownsampleSize=50), root, seed=1)
    (item,) = plan.items
    assert item.plan.downsample_size == (50, 50) and item.plan.enlargement == 128 / 50
    assert "big.png 1000x1000 to 128x128" in plan.enlarged_summary()


# ----------------------------------------------------------------------------- why a dataset falls short

def _jpeg(path: Path, caption: str | None = "a photo") -> bytes:
    """A real, noisy 256x256 JPEG (its pixel data is most of the file) with a caption file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.effect_noise((256, 256), 60).convert("RGB").save(path, "JPEG", quality=95)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)
    return path.read_bytes()


@pytest.fixture
def two(tmp_path) -> Path:
    """The user's report: two JPEGs with captions, b.jpg cut to its first 3000 bytes."""
    root = tmp_path / "two"
    _jpeg(root / "a.jpg")
    (root / "b.jpg").write_bytes(_jpeg(root / "b.jpg")[:3000])
    return root


SQUARE = {"crop": True, "cropAspect": "square", "captionStrategy": "textfile"}

# id, dataset overrides, spec kwargs, fragments the message has, fragments it must not have
SHORT_CASES = [
    ("truncated-named-before-the-fixes", SQUARE, dict(batch=2),
     ["1 of 2 image(s) under {root} skipped: 1 truncated (b.jpg). Fix: copy the truncated images again "
      "(or remove them), add images or lower spec.training.batchSize"],
     ["cropAspect: square", "minimumImageSize", "gradientAccumulationSteps or", "the list above"]),
    ("accumulation-is-offered-only-when-above-1", SQUARE, dict(batch=1, accum=2),
     ["1 truncated (b.jpg). Fix: copy the truncated images again (or remove them), add images or lower "
      "spec.training.gradientAccumulationSteps"], ["spec.training.batchSize", "cropAspect"]),
    ("minimum-is-offered-when-it-skipped-images", SQUARE | {"minimumImageSize": 512}, dict(batch=1),
     ["has no usable images: 2 of 2 image(s) under {root} skipped: 1 smaller than minimumImageSize (a.jpg), "
      "1 truncated (b.jpg)", "Fix: lower minimumImageSize, copy the truncated images again (or remove them)"],
     ["cropAspect"]),
]


@pytest.mark.parametrize("over,kw,present,absent", [c[1:] for c in SHORT_CASES], ids=[c[0] for c in SHORT_CASES])
def test_a_dataset_that_falls_short_names_its_skipped_images_and_only_fixes_not_made(two, over, kw, present, absent):
    [problem] = dataset_problems(spec([ds(two, **over)], **kw))
    for fragment in present:
        assert fragment.format(root=two) in problem, problem
    for fragment in absent:
        assert fragment not in problem, problem


def test_validate_counts_a_truncated_jpeg_as_skipped_not_usable(cli, two):
    """The user's report: `validate` said "2 usable images", exit 0, then the run failed on b.jpg."""
    result = cli("validate", REPO / "examples" / "smoke.yaml", "--set", "spec.datasets.0.type=local",
                 "--set", f"spec.datasets.0.path={two}", "--set", "spec.datasets.0.captionStrategy=textfile",
                 "--set", "spec.datasets.0.cropAspect=square")
    assert result.code == 2, result.text
    assert "2 usable" not in result.text
    assert ("spec.datasets[0]: dataset 'photos' has 0 usable image(s) but one optimizer step needs 2" in result.text)
    assert f"1 of 2 image(s) under {two} skipped: 1 truncated (b.jpg). Fix: copy the truncated images again" \
        in result.text
    assert "cropAspect: square" not in result.text
    ok = cli("validate", REPO / "examples" / "smoke.yaml", "--set", "spec.datasets.0.type=local",
             "--set", f"spec.datasets.0.path={two}", "--set", "spec.datasets.0.captionStrategy=textfile",
             "--set", "spec.training.batchSize=1")
    assert ok.code == 0, ok.text
    assert "1 usable image: 128x128 1; 1 skipped: 1 truncated (b.jpg)" in ok.out
