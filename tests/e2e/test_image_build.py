"""The CPU image, really built and run (marker `image`, `make test-images`).

No registry is reachable from CI, so the base is made here: a minimal Debian bookworm with
python3 (mmdebstrap), imported into podman, and passed as BASE_IMAGE. Bookworm's python3 is
3.11 (the published images use Python 3.12 bases); the torch wheel that pip's configuration
offers on these machines is a cp311 one, so the local build is 3.11 end to end.
The build command is images.build_command(), the one `make image HW=cpu` runs, plus the
harness's machine-specific flags. Then, as the image's non-root user: `validate`, the installed
versions against constraints.txt, and the smoke job through `trainingjob run --container` with
cache and output on mounted host folders.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner import __version__
from runner.launch import images
from tests.e2e import image_harness as harness

# The first test builds the image (minutes on a 2-core machine), beyond the suite-wide 600 s limit.
pytestmark = [pytest.mark.image, pytest.mark.e2e, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]
BASE = "localhost/trainingjob-base:bookworm-python3"
TAG = f"localhost/trainingjob:{__version__}-cpu-test"
TIMINGS: dict[str, float] = {}


def sh(cmd: list[str], timeout: int, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)


def timed(name: str, cmd: list[str], timeout: int, **kw) -> subprocess.CompletedProcess:
    start = time.monotonic()
    proc = sh(cmd, timeout, **kw)
    TIMINGS[name] = time.monotonic() - start
    return proc


@pytest.fixture(scope="module")
def podman_env(tmp_path_factory) -> dict[str, str]:
    missing = harness.missing_tools(["podman", "mmdebstrap"])
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: the CPU image test needs podman (with buildah) and "
                    "mmdebstrap, e.g. `apt-get install podman buildah mmdebstrap runc`, then `make test-images` "
                    "(not part of `make test` or CI: see README, Images)")
    work = tmp_path_factory.mktemp("image")
    if sh(["podman", "image", "exists", BASE], 60).returncode != 0:
        tar = work / "base.tar"
        proc = timed("base (mmdebstrap)", ["mmdebstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                                           "bookworm", tar], 1200, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr[-3000:]
        proc = timed("base (podman import)", ["podman", "import", tar, BASE], 600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        tar.unlink()
    conf, why = harness.find_runtime_conf(BASE, work)
    assert conf, f"podman cannot start a container here under any probed setting:\n{why}"
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


@pytest.fixture(scope="module")
def pip_flags(tmp_path_factory) -> list[str]:
    options = harness.pip_options(sys.executable)
    conf = tmp_path_factory.mktemp("pip") / "pip.conf"
    conf.write_text(harness.pip_conf_text(options))
    return harness.pip_build_flags(options, conf)


@pytest.fixture(scope="module")
def build_mounts(pip_flags) -> list[str]:
    """Where the build saw host files: the container side of each --volume."""
    return [pip_flags[i + 1].split(":")[1] for i, flag in enumerate(pip_flags) if flag == "--volume"]


@pytest.fixture(scope="module")
def cpu_image(podman_env, pip_flags):
    options = harness.pip_options(sys.executable)
    image = images.flavour("cpu")
    args = images.build_args(image, version=__version__, revision=images.git_revision(REPO), base_image=BASE,
                             torch_index="" if harness.torch_from_pip_config(options) else None)
    # --layers=false: every run builds from scratch (no stale cached layer can pass for the
    # current Dockerfile), and the 1.5 GB build stage is never committed as an image.
    cmd = images.build_command(image, engine="podman", tag=TAG, args=args, extra=pip_flags + ["--layers=false"])
    proc = timed("build", cmd, 3000, cwd=REPO, env=podman_env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    yield TAG
    # 1.7 GB per run otherwise; the base stays, so a rerun skips mmdebstrap.
    sh(["podman", "rmi", "--force", TAG], 300, env=podman_env)


def in_image(env: dict, *args: str, entrypoint: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = ["podman", "run", "--rm"] + (["--entrypoint", entrypoint] if entrypoint else []) + [TAG, *args]
    return sh(cmd, timeout, env=env)


def test_image_runs_as_numeric_non_root_user_and_validates(cpu_image, podman_env):
    proc = in_image(podman_env, "-u", entrypoint="id")
    assert proc.stdout.strip() == str(images.IMAGE_UID), proc.stderr
    proc = in_image(podman_env, "validate", "/opt/trainingjob/examples/smoke.yaml")
    assert proc.returncode == 0 and "valid TrainingJob 'smoke'" in proc.stdout, proc.stdout + proc.stderr
    labels = json.loads(sh(["podman", "image", "inspect", "--format", "{{json .Labels}}", cpu_image], 60).stdout)
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.revision"] == images.git_revision(REPO)


def test_image_holds_the_constrained_versions_and_no_pip_settings(cpu_image, podman_env):
    proc = in_image(podman_env, "-m", "pip", "list", "--format=json", entrypoint="/opt/trainingjob/bin/python")
    installed = {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(proc.stdout)}
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    wrong = {n: v for n, v in installed.items() if n in pins and v.split("+")[0] != pins[n]}
    # pip (and setuptools, in a Python 3.11 venv) come with the venv itself, not from our installs.
    unpinned = sorted(set(installed) - set(pins) - {"pip", "setuptools", "trainingjob-runner"})
    assert not wrong and not unpinned, f"differ from constraints.txt: {wrong}; not pinned there: {unpinned}"
    assert installed["torch"].endswith("+cpu")
    proc = in_image(podman_env, "-c", "env | grep -c '^PIP_'", entrypoint="sh")
    assert proc.stdout.strip() == "0", "pip settings of the build leaked into the image's environment"


# For each path: absent, a file's sha256, or a folder's total bytes.
CONTENT = """import hashlib, json, os, sys
def content(p):
    if os.path.isfile(p):
        return hashlib.sha256(open(p, "rb").read()).hexdigest()
    if os.path.isdir(p):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(p) for f in fs)
    return None
print(json.dumps({p: content(p) for p in sys.argv[1:]}))"""
EMPTY = (None, 0, hashlib.sha256(b"").hexdigest())


def test_nothing_mounted_for_the_build_is_in_the_image(cpu_image, podman_env, build_mounts):
    """podman leaves empty mount points behind; what was mounted (pip config, wheels, CA bundle)
    must not be there, unless the base had the same content already."""
    if not build_mounts:
        pytest.skip("this machine gives pip no local settings, so the build mounted nothing")
    seen = {}
    for image, python in ((cpu_image, "/opt/trainingjob/bin/python"), (BASE, "python3")):
        proc = sh(["podman", "run", "--rm", "--entrypoint", python, image, "-c", CONTENT, *build_mounts], 120, env=podman_env)
        seen[image] = json.loads(proc.stdout)
    leaked = {p: v for p, v in seen[cpu_image].items() if v not in EMPTY and v != seen[BASE][p]}
    assert not leaked, f"build-time mounts left content in the image: {leaked}"


def test_smoke_job_runs_in_the_image_through_run_container(cpu_image, podman_env, tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    env = {**podman_env, "TRAININGJOB_IMAGE": cpu_image, "TRAININGJOB_ENGINE": "podman", "HF_HUB_OFFLINE": "1"}
    cli = Path(sys.executable).parent / "trainingjob"
    proc = timed("smoke job in the image", [cli, "run", "--container", REPO / "examples" / "smoke.yaml",
                                            "--set", f"spec.output.dir={out}", "--set", f"spec.cacheDir={cache}"],
                 900, cwd=tmp_path, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    model = out / "model"
    assert (model / "model_index.json").is_file()
    assert list((model / "transformer").glob("*.safetensors")), "the exported transformer weights are missing"
    owner = images.IMAGE_UID if os.getuid() == 0 else os.getuid()
    assert (model / "model_index.json").stat().st_uid == owner, "the job must run as the image's (or the caller's) user"
    size = int(sh(["podman", "image", "inspect", "--format", "{{.Size}}", cpu_image], 60).stdout)
    report = ", ".join(f"{k} {v:.0f} s" for k, v in TIMINGS.items())
    with capsys.disabled():
        print(f"\nCPU image {cpu_image}: {size / 1e9:.2f} GB; {report}")
