"""bench/cache_compare.py on caches laid out as the cache stage writes them (runner.cache.keys.entry_path,
runner.cache.entries.write_entry): bf16 rounding passes, a wholesale different latent is named
with its shard and fails the run, an entry only the second cache has is counted."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch

from runner.cache.entries import write_entry
from runner.cache.keys import entry_path

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_cache_compare", REPO / "bench" / "cache_compare.py")
cache_compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cache_compare)


def _keys(n: int) -> list[str]:
    return [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]


def _write_pair(root: Path, keys: list[str], *, swap: str | None = None) -> None:
    """Cache "one" holds float32 latents; "many" the same after a bf16 round trip, except `swap`,
    which gets another entry's latent (what a copy read before its encode ended would hold)."""
    g = torch.Generator().manual_seed(0)
    latents = {k: torch.randn(4, 16, 16, generator=g) for k in keys}
    for key, latent in latents.items():
        write_entry(entry_path(root / "one" / "vae", key), {"latent": latent}, {"source": key[:6]})
        other = latents[keys[0] if key != keys[0] else keys[1]] if key == swap else latent
        write_entry(entry_path(root / "many" / "vae", key), {"latent": other.bfloat16().float()}, {"source": key[:6]})


def test_rounding_passes_and_shards_are_counted_by_key(tmp_path):
    keys = _keys(12)
    _write_pair(tmp_path, keys)
    got = cache_compare.compare(tmp_path / "one", tmp_path / "many", shards=2)
    assert got["compared"] == 12 and got["missing_in_first"] == 0
    expected = {f"{s + 1}/2": sum(int(k[:8], 16) % 2 == s for k in keys) for s in (0, 1)}
    assert {name: shard["entries"] for name, shard in got["shards"].items()} == {
        name: n for name, n in expected.items() if n}
    for shard in got["shards"].values():
        assert 0 < shard["max_rel_err"] < 0.01 and shard["over_threshold"] == 0  # bf16 keeps ~3 digits


def test_a_wholesale_different_latent_is_named_and_fails(tmp_path):
    keys = _keys(12)
    _write_pair(tmp_path, keys, swap=keys[5])
    extra = _keys(13)[12]
    write_entry(entry_path(tmp_path / "many" / "vae", extra), {"latent": torch.ones(4, 16, 16)}, {})
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "cache_compare.py"), str(tmp_path / "one"),
                           str(tmp_path / "many"), "--out", str(tmp_path / "got.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    got = json.loads((tmp_path / "got.json").read_text())
    assert got["compared"] == 12 and got["missing_in_first"] == 1
    [(path, shard, err)] = got["over_threshold_examples"]
    assert path == str(entry_path(Path("vae"), keys[5])) and shard == int(keys[5][:8], 16) % 2 and err > 0.25


def test_a_missing_folder_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "cache_compare.py"), str(tmp_path / "nope"),
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "nope is not a folder" in proc.stderr
