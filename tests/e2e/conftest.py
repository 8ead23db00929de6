"""End-to-end fixtures: the CLI in a subprocess on the smoke spec, with the tiny model built once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "examples" / "smoke.yaml"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from runner.models.tiny.pixart_sigma import build_tiny_pixart_sigma

    return build_tiny_pixart_sigma(tmp_path_factory.mktemp("models") / "tiny-pixart-sigma")


@pytest.fixture(scope="session")
def sample_photos(tmp_path_factory) -> Path:
    from runner.data.samples import materialize_samples

    return materialize_samples(tmp_path_factory.mktemp("photos") / "samples")


def free_port() -> int:
    """A free local port for torch.distributed's rendezvous (29500 may be taken on CI)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Runner:
    """Runs `python -m runner run` on the smoke spec with per-test cache and output dirs."""

    def __init__(self, tmp: Path, model: Path):
        self.tmp, self.model = tmp, model
        self.cache = tmp / "cache"
        self.out = tmp / "out"

    def args(self, *sets: str, spec: Path = SMOKE, stage: str = "all") -> list[str]:
        base = [f"spec.cacheDir={self.cache}", f"spec.output.dir={self.out}", f"spec.model.pretrained={self.model}"]
        cmd = [sys.executable, "-m", "runner", "run", str(spec), "--stage", stage]
        for s in base + list(sets):
            cmd += ["--set", s]
        return cmd

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "MASTER_PORT": str(free_port())}

    def run(self, *sets: str, stage: str = "all", timeout: int = 300, spec: Path = SMOKE,
            umask: int = -1) -> subprocess.CompletedProcess:
        """`umask`: the run's (-1: this process's)."""
        return subprocess.run(self.args(*sets, spec=spec, stage=stage), cwd=REPO, env=self.env(), capture_output=True,
                              text=True, timeout=timeout, umask=umask)

    def cache_report(self) -> dict:
        return self.cache_report_at(self.cache)

    @staticmethod
    def cache_report_at(cache_dir: Path) -> dict:
        return cache_manifest(cache_dir)["report"]


def newest_manifest(cache_dir: Path) -> Path:
    """The cache manifest the latest cache stage in `cache_dir` wrote: one per cache
    configuration (<cacheDir>/manifests/<fingerprint>.json), rewritten by each cache stage."""
    found = sorted((Path(cache_dir) / "manifests").glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    assert found, f"no cache manifest in {cache_dir}/manifests"
    return found[-1]


def cache_manifest(cache_dir: Path) -> dict:
    return json.loads(newest_manifest(cache_dir).read_text())


def dataset_manifest(cache_dir: Path, name: str = "photos") -> dict:
    """The dataset manifest that newest cache manifest names for dataset `name`."""
    [entry] = [ds for ds in cache_manifest(cache_dir)["datasets"] if ds["name"] == name]
    return json.loads(Path(entry["manifest"]).read_text())


@pytest.fixture
def runner(tmp_path, tiny_model) -> Runner:
    return Runner(tmp_path, tiny_model)


def assert_clean(proc: subprocess.CompletedProcess, code: int = 0) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
