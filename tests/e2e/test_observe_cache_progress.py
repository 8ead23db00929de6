"""The cache stage updates its metrics as it goes (not only when it ends), the bytes it
reports are the bytes of the entries on disk, and with several workers each entry is counted
once."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from runner.observe import names as N
from runner.observe.metrics import Metrics
from tests.e2e.conftest import SMOKE, assert_clean
from tests.observe_tools import free_port, sample, scrape

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


def test_two_cache_workers_count_each_entry_once_and_counters_never_fall(runner) -> None:
    """gpusPerNode: 2 on the CPU: two cache workers hand their counts to the launching process,
    whose endpoint is scraped all along. No scrape may show more entries than the cache has
    (each worker counts its shard, not the whole dataset), and the counters never go down
    (a fall reads as a process restart to rate())."""
    port = free_port()
    scrapes: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                scrapes.append(scrape(port, timeout=2))
            except OSError:  # not serving yet, or done
                pass
            stop.wait(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        proc = runner.run("spec.hardware.gpusPerNode=2", f"spec.metrics.port={port}", stage="cache")
    finally:
        stop.set()
        poller.join()
    assert_clean(proc)
    report = runner.cache_report()
    totals = {"text": report["text_total"], "latent": report["latents_total"]}
    job = {"trainingjob": "smoke"}
    scrapes = [s for s in scrapes if sample(s, N.STAGE, stage="cache", **job) == 1.0]
    assert len(scrapes) >= 5, f"only {len(scrapes)} scrapes of the cache stage"
    for kind, total in totals.items():
        items = [sample(s, N.CACHE_ITEMS, kind=kind, **job) for s in scrapes]
        done = [sample(s, N.CACHE_ITEMS_DONE, kind=kind, **job) for s in scrapes]
        encoded = [sample(s, N.CACHE_ITEMS_ENCODED, kind=kind, **job) for s in scrapes]
        assert max(items) == total and max(done) <= total, f"{kind}: items {sorted(set(items))}, done {sorted(set(done))}"
        assert done[-1] == items[-1] == total, kind
        assert encoded == sorted(encoded) and encoded[-1] == total, f"{kind}: encoded {encoded}"
    written = [sample(s, N.CACHE_WRITTEN_BYTES, **job) for s in scrapes]
    assert written == sorted(written) and written[-1] > 0, written


class _WritesAtOnce:
    """A stand-in for the cache writer's thread pool that writes as it is handed an entry, so
    that what a scrape reads after each count does not depend on the writer threads' timing."""

    def __init__(self, *_args, **_kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *_exc):
        return False

    def submit(self, fn, *args, **kwargs):
        from concurrent.futures import Future

        future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def test_latents_are_counted_as_they_are_written_not_as_their_images_decode(tmp_path: Path, tiny_model: Path,
                                                                           monkeypatch) -> None:
    """Latents were counted as encoded when their images were decoded, before the VAE ran, and
    a batch is written only once the next is encoded: scrapes read 12 latents encoded beside 0
    bytes written. Now each count comes with its entries' bytes."""
    from runner.cache import stage as cache_stage
    from runner.launch.context import make_context
    from runner.spec.load import load_spec

    class Counts(Metrics):
        __slots__ = ("seen",)

        def cache_done(self, kind: str, n: int) -> None:
            super().cache_done(kind, n)
            self.seen.append((kind, self.registry.get_sample_value(N.CACHE_WRITTEN_BYTES, {"trainingjob": self.job})))

    monkeypatch.setattr(cache_stage, "ThreadPoolExecutor", _WritesAtOnce)
    job = load_spec(SMOKE, [f"spec.cacheDir={tmp_path / 'cache'}", f"spec.output.dir={tmp_path / 'out'}",
                            f"spec.model.pretrained={tiny_model}", "spec.model.vaeBatchSize=4"])
    metrics = Counts(job.name)
    metrics.seen = []
    cache_stage.run_cache(make_context(job, "cpu", metrics=metrics))
    first = next(i for i, (k, _) in enumerate(metrics.seen) if k == "latent")
    before = metrics.seen[first - 1][1] if first else 0.0  # what the text entries wrote, when first
    latent_bytes = [b - before for k, b in metrics.seen if k == "latent"]
    assert len(latent_bytes) >= 2 and all(b > 0 for b in latent_bytes), latent_bytes
    assert latent_bytes == sorted(set(latent_bytes)), latent_bytes  # each count brings its batch's bytes
