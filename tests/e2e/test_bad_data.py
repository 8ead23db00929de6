"""Datasets that cannot work fail early and clearly; broken or hostile files are skipped and reported."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.e2e.conftest import REPO, assert_clean, dataset_manifest

pytestmark = pytest.mark.e2e


def test_too_small_dataset_fails_before_any_model_loads(runner):
    # The model points at a repo that does not exist offline: had anything tried to load it,
    # the error would be about the model, not the dataset.
    proc = runner.run("spec.training.batchSize=8", "spec.training.gradientAccumulationSteps=4",
                      "spec.model.pretrained=nobody/does-not-exist", stage="cache")
    assert_clean(proc, code=2)
    err = proc.stderr
    assert "photos" in err and "32" in err  # the dataset and the required count (8 x 4 x 1)
    assert "batchSize" in err and "gradientAccumulationSteps" in err
    assert "does-not-exist" not in err


def test_no_usable_image_is_fatal(runner, tmp_path):
    data = tmp_path / "junk"
    data.mkdir()
    for i in range(3):
        (data / f"junk {i}.png").write_bytes(b"not an image")
    proc = runner.run("spec.datasets.0.type=local", f"spec.datasets.0.path={data}", stage="cache")
    assert_clean(proc, code=2)
    assert "junk 0.png" in proc.stdout  # each skipped file is listed with its reason
    assert "has no usable images: 3 of 3 image(s) under" in proc.stderr  # as validate says it


def _two_jpegs_one_cut_short(root: Path) -> Path:
    """The user's report: a folder of two captioned JPEGs, b.jpg cut to its first 3000 bytes."""
    from PIL import Image

    root.mkdir()
    for name in ("a", "b"):
        Image.effect_noise((256, 256), 60).convert("RGB").save(root / f"{name}.jpg", "JPEG", quality=95)
        (root / f"{name}.txt").write_text(f"photo {name}")
    (root / "b.jpg").write_bytes((root / "b.jpg").read_bytes()[:3000])
    return root


def test_a_truncated_jpeg_is_named_as_the_cause_before_any_model_loads(runner, tmp_path):
    """validate counted the cut-short JPEG as usable; the run found it only at the VAE, then offered
    fixes already made (cropAspect: square) and did not name it. Now the plan skips it, before the
    model (which does not exist here) is looked at, and the error names it and nothing already set."""
    two = _two_jpegs_one_cut_short(tmp_path / "two")
    proc = runner.run("spec.datasets.0.type=local", f"spec.datasets.0.path={two}", "spec.datasets.0.cropAspect=square",
                      "spec.datasets.0.captionStrategy=textfile", "spec.model.pretrained=nobody/does-not-exist",
                      stage="cache")
    assert_clean(proc, code=2)
    assert "  b.jpg: cannot decode (image file is truncated" in proc.stdout  # listed with its reason
    assert ("spec.datasets[0]: dataset 'photos' has 0 usable image(s) but one optimizer step needs 2" in proc.stderr)
    assert (f"1 of 2 image(s) under {two} skipped: 1 truncated (b.jpg). Fix: copy the truncated images again "
            "(or remove them), add images or lower spec.training.batchSize") in proc.stderr
    assert "cropAspect: square" not in proc.stderr and "minimumImageSize" not in proc.stderr
    assert "does-not-exist" not in proc.stderr and "VAE" not in proc.stdout


def _message(text: str, prefix: str) -> str:
    [line] = [ln for ln in text.splitlines() if ln.startswith(prefix)]
    return line.removeprefix(prefix)


@pytest.mark.parametrize("folder", ["no-such-dataset-folder", "EMPTY"])
def test_run_says_what_validate_says_about_a_dataset_folder(runner, tmp_path, folder):
    """A missing folder (relative: the working-directory hint) and an empty one: `run` prints
    validate's message, not one of its own."""
    if folder == "EMPTY":
        folder = str(tmp_path / "empty")
        Path(folder).mkdir()
    sets = ["spec.datasets.0.type=local", f"spec.datasets.0.path={folder}"]
    run = runner.run(*sets, stage="cache")
    assert_clean(run, code=2)
    validate = subprocess.run([*runner.args(*sets)[:3], "validate", str(REPO / "examples" / "smoke.yaml"),
                               *[a for s in sets for a in ("--set", s)]],
                              cwd=REPO, env=runner.env(), capture_output=True, text=True, timeout=60)
    assert validate.returncode == 2, validate.stdout + validate.stderr
    said = _message(validate.stdout + validate.stderr, f"{REPO / 'examples' / 'smoke.yaml'}: ")
    assert _message(run.stderr, "error: ") == said
    assert ("relative paths resolve from the working directory" in said if folder.startswith("no-such")
            else said == f"spec.datasets[0]: no images (.jpg, .jpeg, .png, .webp) found under {folder}")


def without_read_override(cmd: list[str]) -> list[str]:
    """As root, chmod 000 stops nothing: run `cmd` without the capabilities that let root read
    any file (setpriv, util-linux), so an unreadable file really fails to open, as it would for
    the non-root user a pod runs as. As another user, chmod alone does it."""
    if os.geteuid() != 0:
        return cmd
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot make a file unreadable")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", *cmd]


def test_hostile_files_are_each_skipped_and_reported_never_a_crash(runner, sample_photos, tmp_path):
    """One cache run over every kind of bad input the cache stage meets in real folders: each is
    listed in the log and in the dataset manifest's `skipped` with its reason, and the good
    images are cached."""
    from PIL import Image

    from tests.unit.test_data_discovery import png_bomb

    data = tmp_path / "photos"
    shutil.copytree(sample_photos, data)
    for photo in data.glob("*.png"):
        photo.with_suffix(".txt").write_text(photo.stem)
    good = sorted(data.glob("*.png"))
    jpeg = io.BytesIO()
    Image.open(good[0]).convert("RGB").save(jpeg, "JPEG")

    def bad(name: str, content: bytes | None = b"x", caption: bytes | None = b"a caption") -> Path:
        path = data / name
        if content is not None:
            path.write_bytes(content)
        if caption is not None:
            path.with_suffix(".txt").write_bytes(caption)
        return path

    bad("zero bytes.png", b"")
    bad("cut short.jpg", jpeg.getvalue()[: len(jpeg.getvalue()) // 2])  # header whole, body cut: fails at decode
    bad("half a photo.png", good[6].read_bytes()[: good[6].stat().st_size // 3])
    bad("not really a png.png", b"hello")
    bad("png named jpg.jpg", good[1].read_bytes())  # decodable: accepted as what it is
    bad("text named jpg.jpg", b"this is not an image")
    png_bomb(bad("bomb.png", None))
    bad("latin-1 caption.png", good[2].read_bytes(), caption="caf\xe9 au lait".encode("latin-1"))
    bad("long caption.png", good[3].read_bytes(), caption=("a very long caption " * 500).encode())
    bad("loop a.png", None).symlink_to("loop b.png")
    bad("loop b.png", None).symlink_to("loop a.png")
    (data / "up").symlink_to(".", target_is_directory=True)
    os.mkfifo(bad("pipe.png", None))
    bad("locked.png", good[4].read_bytes()).chmod(0)
    bad(os.fsdecode(b"caf\xe9.png"), good[5].read_bytes(), caption=None)

    proc = subprocess.run(without_read_override(runner.args("spec.datasets.0.type=local", f"spec.datasets.0.path={data}",
                                                            "spec.datasets.0.captionStrategy=textfile", stage="cache")),
                          cwd=REPO, env=runner.env(), capture_output=True, text=True, timeout=300)
    assert_clean(proc)
    manifest = dataset_manifest(runner.cache)
    skipped = dict(manifest["skipped"])
    expected = {
        "zero bytes.png": "empty file",
        "cut short.jpg": "cannot decode",
        "half a photo.png": "cannot decode",
        "not really a png.png": "not a readable image",
        "text named jpg.jpg": "not a readable image",
        "bomb.png": "megapixel limit",
        "latin-1 caption.png": "not UTF-8",
        "loop a.png": "symbolic links",
        "loop b.png": "symbolic links",
        "pipe.png": "not a regular file",
        "locked.png": "Permission denied",
        "caf\\xe9.png": "not valid UTF-8",
    }
    assert set(skipped) == set(expected), skipped
    for rel, fragment in expected.items():
        assert fragment in skipped[rel], (rel, skipped[rel])
        assert f"  {rel}: " in proc.stdout, f"{rel} is not in the log"

    items = {it["rel"]: it for it in manifest["items"]}
    assert set(items) == {p.name for p in good} | {"png named jpg.jpg", "long caption.png"}
    # The PNG named .jpg is cached like the same bytes under their right name.
    assert items["png named jpg.jpg"]["latent_key"] == items[good[1].name]["latent_key"]
    # The long caption is kept whole in the manifest, encoded truncated, and reported.
    assert items["long caption.png"]["caption"] == ("a very long caption " * 500).strip()
    [(rel, how)] = manifest["truncated"]
    assert rel == "long caption.png" and "the text encoder keeps the first 32" in how
    assert "1 caption(s) truncated to 32 tokens" in proc.stdout
    embed = load_file(str(runner.cache / "text" / items[rel]["text_key"][:2] / f"{items[rel]['text_key']}.safetensors"))
    assert embed["prompt_embeds"].shape[0] == 32
