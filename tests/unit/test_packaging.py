"""The wheel is what the images install: built from the files the image build sees, installed
non-editable into a fresh venv (core dependencies only), it must validate, print the schema and
explain from any directory. Before the schema became package data this failed with
FileNotFoundError."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# What .dockerignore lets into an image build, and so all a wheel may be built from.
BUILD_INPUTS = ["pyproject.toml", "README.md", "constraints.txt", "runner"]


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in BUILD_INPUTS:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                         if (REPO / name).is_dir() else {}))
    dist = tmp_path_factory.mktemp("dist")
    # No build isolation: the venv's setuptools builds it, so this needs no network.
    proc = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", dist, src])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [whl] = dist.glob("trainingjob_runner-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("venv")
    assert run([sys.executable, "-m", "venv", venv]).returncode == 0
    proc = run([venv / "bin" / "python", "-m", "pip", "install", "-q", "-c", REPO / "constraints.txt", wheel])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return venv


def test_wheel_carries_every_data_file_of_the_package(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    data = [p.relative_to(REPO).as_posix() for p in (REPO / "runner").rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert "runner/spec/trainingjob.schema.json" in data
    assert sorted(set(data) - names) == []


def test_installed_wheel_validates_explains_and_prints_the_schema(installed, tmp_path):
    cli = installed / "bin" / "trainingjob"
    spec = tmp_path / "smoke.yaml"
    shutil.copy(REPO / "examples" / "smoke.yaml", spec)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # cwd outside the repository, so nothing can come from the source tree
    where = run([installed / "bin" / "python", "-c", "import runner.spec.schema as s; print(s.SCHEMA_PATH)"],
                cwd=tmp_path, env=env)
    assert where.stdout.startswith(str(installed)), where.stdout + where.stderr

    proc = run([cli, "validate", spec], cwd=tmp_path, env=env)
    assert proc.returncode == 0 and "valid TrainingJob 'smoke'" in proc.stdout, proc.stdout + proc.stderr
    bad = run([cli, "validate", spec, "--set", "spec.training.batchSize=0"], cwd=tmp_path, env=env)
    assert bad.returncode == 2 and "spec.training.batchSize" in bad.stderr

    proc = run([cli, "schema"], cwd=tmp_path, env=env)
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == json.loads((REPO / "runner/spec/trainingjob.schema.json").read_text())

    proc = run([cli, "explain", "spec.training"], cwd=tmp_path, env=env)
    assert proc.returncode == 0 and "batchSize" in proc.stdout, proc.stdout + proc.stderr
