"""report.html from files: the logged values at full precision, a resume's repeated steps
counted once, validation grids from real PNGs, the cache summary, and a page that loads
nothing from the network and escapes what it quotes."""
from __future__ import annotations

import base64
import io
import json
import math
import re
from pathlib import Path

import pytest
from PIL import Image

from runner.observe import report as R
from runner.observe.runlog import RunLog


def _validation(folder: Path, step: int, prompts: list[str], sizes: list[tuple[int, int]], clip: bool) -> None:
    folder.mkdir(parents=True)
    records = []
    for pi, prompt in enumerate(prompts):
        for w, h in sizes:
            name = f"p{pi}-{w}x{h}.png"
            Image.new("RGB", (w, h), (40 * pi, 90, 200)).save(folder / name)
            records.append({"file": name, "prompt": prompt, "width": w, "height": h,
                            **({"clip_score": 20.0 + pi} if clip else {})})
    extra = {"validation/clip_score": 20.5} if clip else {}
    (folder / "images.json").write_text(json.dumps({"step": step, "guidance": 4.0, "steps": 4, "seed": 1,
                                                    "images": records, **extra}))


@pytest.fixture
def output(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    log = RunLog(R.history_path(out))
    log.append("stage_started", stage="train")
    for step, loss in ((1, 1.3389332294464111), (10, 1.43), (20, 1.2)):
        log.append("train", step=step, loss=loss, lr=1e-4, samples_per_second=3.5, grad_norm=0.5)
    log.append("checkpoint", seconds=0.25)
    # A resume from step 10 repeats step 20 with another loss: the later record wins.
    log.append("train", step=20, loss=1.1999999999999999, lr=1e-4, samples_per_second=3.0, grad_norm=None)
    log.append("train", step=30, loss=float("nan"), lr=1e-4, samples_per_second=3.0, grad_norm=None)
    log.append("validation", step=20, seconds=2.0, clip_score=20.5)
    log.append("stage_finished", stage="train", seconds=42.0)
    _validation(out / "validation" / "step-10", 10, ["a cat", "<script>alert(1)</script>"], [(192, 128)], False)
    _validation(out / "validation" / "step-20", 20, ["a cat", "<script>alert(1)</script>"], [(128, 128), (1024, 512)], True)
    return out


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "cache" / "manifest.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"report": {"text_total": 20, "text_encoded": 5, "latents_total": 16, "latents_encoded": 16,
                                           "skipped": [["photos", "broken.jpg", "cannot decode (truncated)"]]}}))
    return path


def page_of(output: Path, manifest: Path) -> str:
    spec = {"apiVersion": "x", "spec": {"cacheDir": "cache/<smoke>"}}
    return R.write_report(R.gather("smoke", spec, output, manifest), output).read_text()


def test_logged_values_at_full_precision_last_record_of_a_step_wins(output: Path, manifest: Path) -> None:
    page = page_of(output, manifest)
    rows = re.findall(r"<tr><td>(\d+)</td><td>([^<]*)</td>", page)
    assert [(int(s), v) for s, v in rows] == [(1, "1.3389332294464111"), (10, "1.43"), (20, "1.2"), (30, "nan")]


def test_images_are_embedded_and_decode(output: Path, manifest: Path) -> None:
    page = page_of(output, manifest)
    sizes = []
    for b64 in re.findall(r'src="data:image/png;base64,([^"]+)"', page):
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            im.load()
            sizes.append(im.size)
    plots, thumbs = sizes[:3], sizes[3:]
    assert all(w >= 400 for w, _ in plots)
    # Newest step first: 2 prompts x 2 sizes at step 20, then 2 x 1 at step 10; thumbnails at most 256 px.
    assert thumbs == [(128, 128), (256, 128), (128, 128), (256, 128), (192, 128), (192, 128)]
    assert "CLIP 20" in page and "mean CLIP score 20.5" in page


def test_page_is_offline_and_escapes_what_it_quotes(output: Path, manifest: Path) -> None:
    page = page_of(output, manifest)
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "cache/&lt;smoke&gt;" in page
    assert not re.search(r"(src|href)=\"(?!data:)", page)
    assert "http://" not in page and "https://" not in page


def test_cache_summary_and_timings(output: Path, manifest: Path) -> None:
    page = page_of(output, manifest)
    assert "<td>text embeddings</td><td>20</td><td>5</td><td>15</td>" in page
    assert "<td>latents</td><td>16</td><td>16</td><td>0</td>" in page
    assert "broken.jpg</td><td>cannot decode (truncated)" in page
    assert "42.0 s" in page and "1, 0.2 s in all" in page


def test_a_report_before_any_training_step(tmp_path: Path) -> None:
    page = R.render(R.ReportData("smoke", {"spec": {}}))
    assert "No training step logged yet" in page and "No cache manifest yet" in page


def test_reporter_never_fails_the_run(tmp_path: Path, capsys) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert R.Reporter("smoke", {}, blocked, tmp_path / "none.json").write() is None
    assert "warning: could not write" in capsys.readouterr().err


@pytest.mark.parametrize("fields, label", [
    ({}, "train stage (started 1970-01-01 00:00:08 UTC)"),  # a history from before stages said how they ended
    ({"ended": "completed"}, "train stage (started 1970-01-01 00:00:08 UTC)"),
    ({"ended": "interrupted"}, "train stage (started 1970-01-01 00:00:08 UTC, interrupted (Ctrl-C): no checkpoint written)"),
    ({"ended": "stopped"}, "train stage (started 1970-01-01 00:00:08 UTC, stopped by SIGTERM after writing a checkpoint)"),
    ({"ended": "failed"}, "train stage (started 1970-01-01 00:00:08 UTC, failed)"),
])
def test_timings_say_how_a_stage_ended(fields: dict, label: str) -> None:
    history = [{"t": 20.0, "event": "stage_finished", "stage": "train", "seconds": 12.0, **fields}]
    assert R.timings(history) == [(label, "12.0 s")]


@pytest.mark.parametrize("values, expected", [
    ([2.0, 2.0, 2.0], [2.0, 2.0, 2.0]),  # debiased: a constant stays constant
    ([0.0, 1.0], [0.0, 0.4 / 0.64]),  # weight 0.6: (0.6*0.4*0 + 0.4*1) / (1 - 0.6**2)
    ([math.nan, 1.0], [math.nan, 1.0]),
])
def test_smoothing_is_tensorboards(values: list[float], expected: list[float]) -> None:
    got = R.smooth(values)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert (math.isnan(g) and math.isnan(e)) or g == pytest.approx(e)
