"""Helpers for the resume and fault tests: load everything a resume restores, compare it
exactly, inject deterministic faults into a child process, share one smoke cache.

A resume is only real if the resumed run ends in the very state an uninterrupted run
reaches, so the comparisons here are of tensors and values (weights, optimizer moments,
LR-scheduler state, every RNG state, data position), never of step counters or log text.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from tests.e2e.conftest import REPO, Runner
from tests.state_diff import differences

# Training options of the resume/fault runs: several checkpoints, validation on checkpoint
# steps (validation must not disturb the training RNG), an LR that changes every step
# (cosine with warmup: a scheduler that was not restored shows), caption dropout, and
# more steps than one epoch holds (8 batches of 2), so resumes cross an epoch boundary.
RESUME_SETS = ("spec.training.maxSteps=10", "spec.training.checkpointEvery=3",
               "spec.training.checkpointsTotalLimit=10", "spec.training.lrScheduler=cosine",
               "spec.training.lrWarmupSteps=2", "spec.training.captionDropout=0.3",
               "spec.training.learningRate=1e-3",
               "spec.validation.prompts=[\"a cat\"]", "spec.validation.resolutions=128x128",
               "spec.validation.inferenceSteps=2", "spec.validation.every=3", "spec.tracking.tensorboard=false")


def quiet_env(runner: Runner, **extra: str) -> dict[str, str]:
    """One intra-op thread: tiny matmuls on a loaded 2-core box are otherwise dominated by
    thread spin/wake. Bit-identity does not depend on it (every run here uses the same)."""
    return {**runner.env(), "OMP_NUM_THREADS": "1", **extra}


def shared_cache(tmp_path_factory, tiny_model: Path) -> Path:
    """The smoke cache, built once per test session and read (never written) by train stages."""
    cache = tmp_path_factory.getbasetemp() / "smoke-cache-for-training"
    if not list((cache / "manifests").glob("*.json")):
        runner = Runner(tmp_path_factory.mktemp("cache-build"), tiny_model)
        runner.cache = cache
        proc = subprocess.run(runner.args(stage="cache"), cwd=REPO, env=quiet_env(runner), capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return cache


def runner_with_cache(tmp: Path, model: Path, cache: Path) -> Runner:
    runner = Runner(tmp, model)
    runner.cache = cache
    return runner


# ----------------------------------------------------------------------------- state

def _torch_load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=False)


def checkpoint_state(folder: Path) -> dict[str, Any]:
    """Everything `resume` restores from a checkpoint folder, as tensors and plain values."""
    record = json.loads((folder / "trainer_state.json").read_text())
    return {
        "weights": load_file(str(folder / "model.safetensors")),
        "optimizer": _torch_load(folder / "optimizer.bin"),
        "lr_scheduler": _torch_load(folder / "scheduler.bin"),
        "rng": {p.name: _torch_load(p) for p in sorted(folder.glob("random_states_*.pkl"))},
        # Data position: step, epoch, next batch in the epoch, samples seen. Not the spec hash:
        # it covers the output dir, which differs between the runs compared.
        "position": {k: v for k, v in record["state"].items() if k != "spec_hash"},
    }


def exported_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "transformer" / "diffusion_pytorch_model.safetensors"))


def assert_same_state(got: Path, want: Path, what: str) -> None:
    diff = differences(checkpoint_state(got), checkpoint_state(want))
    assert not diff, f"{what}: {got} differs from the uninterrupted run's {want}:\n  " + "\n  ".join(diff[:20])


def all_finite(weights: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in weights.values() if t.is_floating_point())


# ----------------------------------------------------------------------------- faults

# Test-only: Python imports `sitecustomize` at start-up from the first folder on sys.path that
# has one, so the test puts this file on PYTHONPATH of the child process. It wraps one
# function and, on its Nth call, sends a signal to its own process: a deterministic fault
# point with no hook in the production code.
_SITECUSTOMIZE = textwrap.dedent('''
    import importlib.abc, importlib.util, json, os, signal, sys

    _cfg = json.loads(os.environ["TRAININGJOB_TEST_FAULT"])
    _calls = 0

    def _fire():
        os.kill(os.getpid(), getattr(signal, _cfg["signal"]))

    def _wrap(fn):
        def wrapper(*args, **kwargs):
            global _calls
            _calls += 1
            hit = _calls == _cfg["call"]
            if hit and _cfg["when"] == "before":
                _fire()
            result = fn(*args, **kwargs)
            if hit and _cfg["when"] == "torn":  # what a kill part-way through writing leaves
                path = args[1]
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 2)
            if hit and _cfg["when"] in ("after", "torn"):
                _fire()
            return result
        return wrapper

    def _patch(module):
        *owners, name = _cfg["attr"].split(".")
        owner = module
        for o in owners:
            owner = getattr(owner, o)
        setattr(owner, name, _wrap(getattr(owner, name)))

    class _AfterImport(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname != _cfg["module"]:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(fullname)
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                _patch(module)
            spec.loader.exec_module = exec_module
            return spec

    if _cfg["module"] in sys.modules:
        _patch(sys.modules[_cfg["module"]])
    else:
        sys.meta_path.insert(0, _AfterImport())
''')


def fault_env(tmp: Path, base: dict[str, str], module: str, attr: str, call: int, when: str = "before",
              sig: str = "SIGKILL") -> dict[str, str]:
    """Env for a child process that gets `sig` at the `call`-th call of `module.attr`
    (`when`: before the call, after it returns, or after it wrote a file it then truncates)."""
    folder = tmp / "fault-sitecustomize"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    fault = {"module": module, "attr": attr, "call": call, "when": when, "signal": sig}
    return {**base, "PYTHONPATH": os.pathsep.join([str(folder), base.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "TRAININGJOB_TEST_FAULT": json.dumps(fault)}


def run(runner: Runner, *sets: str, env: dict[str, str], stage: str = "train",
        timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(runner.args(*sets, stage=stage), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


KILLED = -signal.SIGKILL


def shared_reference(tmp_path_factory, tiny_model: Path, cache: Path) -> Path:
    """The output dir of one uninterrupted run with RESUME_SETS, built once per test session:
    what every interrupted-and-resumed run must end bit-identical to."""
    tmp = tmp_path_factory.getbasetemp() / "uninterrupted-reference"
    if not (tmp / "out" / "model").is_dir():
        runner = runner_with_cache(tmp, tiny_model, cache)
        proc = run(runner, *RESUME_SETS, env=quiet_env(runner))
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return tmp / "out"


def published_steps(out: Path) -> list[int]:
    """Checkpoint folders that a resume may use (the step-N names), whatever their content."""
    folder = out / "checkpoints"
    return sorted(int(p.name[5:]) for p in folder.glob("step-*")) if folder.is_dir() else []
