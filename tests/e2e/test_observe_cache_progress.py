"""The cache stage updates its metrics as it goes (not only when it ends), and the bytes it
reports are the bytes of the entries on disk."""
from __future__ import annotations

from pathlib import Path

import pytest

from runner.observe import names as N
from runner.observe.metrics import Metrics
from tests.e2e.conftest import SMOKE

pytestmark = pytest.mark.e2e


class Recording(Metrics):
    """The real Metrics, also noting what a scrape would have read after each update."""

    __slots__ = ("seen",)

    def cache_done(self, kind: str, n: int) -> None:
        super().cache_done(kind, n)
        labels = {"trainingjob": self.job, "kind": kind}
        self.seen.append((kind, self.registry.get_sample_value(N.CACHE_ITEMS_DONE, labels),
                          self.registry.get_sample_value(N.CACHE_ITEMS, labels)))


def test_cache_progress_moves_while_encoding(tmp_path: Path, tiny_model: Path) -> None:
    from runner.launch.context import make_context
    from runner.spec.load import load_spec
    from runner.cache.stage import run_cache

    job = load_spec(SMOKE, [f"spec.cacheDir={tmp_path / 'cache'}", f"spec.output.dir={tmp_path / 'out'}",
                            f"spec.model.pretrained={tiny_model}", "spec.textEmbeds.writeBatchSize=4"])
    metrics = Recording(job.name)
    metrics.seen = []
    report = run_cache(make_context(job, "cpu", metrics=metrics))

    for kind, total in (("latent", report.latents_total), ("text", report.text_total)):
        done = [d for k, d, t in metrics.seen if k == kind]
        assert {t for k, d, t in metrics.seen if k == kind} == {total}
        assert len(done) >= 3 and done == sorted(set(done)), f"{kind}: {done}"
        assert done[0] < total and done[-1] == total, f"{kind}: {done}"
    on_disk = sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*.safetensors")
                  if "builtin" not in p.parts and "samples" not in p.parts)
    assert metrics.registry.get_sample_value(N.CACHE_WRITTEN_BYTES, {"trainingjob": job.name}) == on_disk > 0
