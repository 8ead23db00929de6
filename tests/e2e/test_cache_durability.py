"""The cache stage's entries are not fsynced one by one (on a network volume, or a disk whose
journal serialises fsyncs, that wait was most of the 2-GPU cache stage), yet none is named by a
manifest before it is on disk: one sync after the last entry, then the manifests, each fsynced."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.conftest import SMOKE

pytestmark = pytest.mark.e2e


def test_entries_reach_the_disk_in_one_sync_before_any_manifest(tmp_path: Path, tiny_model: Path,
                                                                 monkeypatch) -> None:
    from runner.cache.stage import run_cache
    from runner.launch.context import make_context
    from runner.observe.metrics import Metrics
    from runner.spec.load import load_spec

    events: list[tuple[str, str]] = []
    real_fsync, real_sync, real_replace = os.fsync, os.sync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def sync() -> None:
        events.append(("sync", ""))
        real_sync()

    def replace(src, dst, *args, **kwargs) -> None:
        events.append(("publish", str(dst)))
        real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "sync", sync)
    monkeypatch.setattr(os, "replace", replace)
    job = load_spec(SMOKE, [f"spec.cacheDir={tmp_path / 'cache'}", f"spec.output.dir={tmp_path / 'out'}",
                            f"spec.model.pretrained={tiny_model}"])
    report = run_cache(make_context(job, "cpu", metrics=Metrics(job.name)))

    entries = [i for i, (what, path) in enumerate(events) if what == "publish" and path.endswith(".safetensors")]
    manifests = [i for i, (what, path) in enumerate(events) if what == "publish" and "/manifests/" in path]
    syncs = [i for i, (what, _) in enumerate(events) if what == "sync"]
    assert len(entries) == report.latents_encoded + report.text_encoded > 10
    assert not [p for what, p in events if what == "fsync" and ".safetensors" in p]  # no fsync per entry
    assert syncs and manifests, events[-5:]
    assert max(entries) < syncs[-1] < min(manifests)  # every entry is flushed before a manifest names one
    for i in manifests:  # the manifests themselves stay durable: fsynced before their rename
        assert events[i - 1][0] == "fsync", events[i - 2:i + 1]
