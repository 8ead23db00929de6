"""Fault injection: the cache volume fills up. The run stops with a clear message, leaves no
temp files, keeps every finished entry, and a rerun on a larger volume reuses them."""
from __future__ import annotations

import subprocess

import pytest
from safetensors import safe_open

from tests.e2e.conftest import assert_clean

pytestmark = pytest.mark.e2e


@pytest.fixture
def small_volume(tmp_path):
    mount = tmp_path / "cachefs"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_cache_volume_fails_cleanly_and_keeps_finished_entries(runner, sample_photos, small_volume):
    sets = ("spec.datasets.0.type=local", f"spec.datasets.0.path={sample_photos}", f"spec.cacheDir={small_volume}")
    proc = runner.run(*sets, stage="cache")
    assert_clean(proc, code=1)
    assert "no space left on device" in proc.stderr
    assert "finished entries are kept" in proc.stderr
    assert not [p for p in small_volume.rglob("*") if p.name.endswith(".tmp")], "temp files left behind"
    written = list(small_volume.rglob("*.safetensors"))
    assert written, "some entries should have fit"
    for path in written:  # every entry that exists is complete
        with safe_open(str(path), framework="pt") as f:
            assert list(f.keys())

    subprocess.run(["mount", "-o", "remount,size=4m", str(small_volume)], check=True)
    again = runner.run(*sets, stage="cache")
    assert_clean(again)
    report = runner.cache_report_at(small_volume)
    assert report["latents_encoded"] + report["text_encoded"] < report["latents_total"] + report["text_total"]
