"""Fixtures for the spec/CLI tests: run `trainingjob` in-process and a minimal valid spec."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Smallest valid TrainingJob; the dataset path never exists, so no data checks run.
MINIMAL_SPEC = """\
apiVersion: diffusion.runner.dev/v1alpha1
kind: TrainingJob
metadata:
  name: corpus
spec:
  datasets:
    - name: photos
      path: /nonexistent-trainingjob-corpus/photos
  training:
    maxSteps: 10
"""


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@pytest.fixture
def cli(capsys):
    """Run `trainingjob ARGS...` in-process; returns exit code, stdout and stderr."""
    from runner.cli import main

    def run(*argv: str) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def minimal_spec() -> str:
    return MINIMAL_SPEC


@pytest.fixture(scope="module")
def torch_single_thread():
    """Tiny models' matmuls take microseconds; on a busy 2-core box intra-op threads turn them
    into milliseconds (spin/wake). Modules that use this run single-threaded, then restore."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
