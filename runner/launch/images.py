"""The one hardware -> container image mapping, shared by `make images`, `render`, the operator
and `trainingjob run --container`. Pure data and pure functions: no torch, no kubernetes.

`python -m runner.launch.images build|push [--dry-run]` is what the Makefile's image targets
run, so the list of images and their build arguments exist only here.
"""
from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from runner import __version__

DEFAULT_REGISTRY = "ghcr.io/trainingjob"
DEFAULT_NAME = "trainingjob"
DEFAULT_SOURCE = "https://github.com/trainingjob/trainingjob"
DOCKERFILE = "images/Dockerfile"
# The numeric user every image runs as (USER in images/Dockerfile; a unit test keeps them equal).
IMAGE_UID = 10001
# Daemonless engines first: a docker client without a reachable daemon is common on CI machines.
BUILD_ENGINES = ("podman", "buildah", "docker")
RUN_ENGINES = ("podman", "docker")


# What every training image installs (pyproject extras): the trainer, and the sample photos of
# `type: samples` datasets.
TRAIN_EXTRAS = ("train", "samples")


@dataclass(frozen=True)
class ImageFlavour:
    """What one image is built from, and what a pod running it requests."""

    hardware: str             # a value of spec.hardware.accelerator ("operator" for the operator image)
    base_image: str           # pinned default for ARG BASE_IMAGE
    torch_index: str | None   # pip index that serves the matching torch build; None: no torch
    gpu_resource: str | None  # extended resource a pod requests per GPU; None for CPU
    extras: tuple[str, ...] = TRAIN_EXTRAS  # pyproject extras the image installs
    # Whether a pod's non-root user must join the node's groups that own the GPU device nodes
    # (spec.kubernetes.deviceGroups): AMD's /dev/kfd and /dev/dri/renderD* are 0660 root:render.
    device_groups: bool = False


# The CUDA images also carry the GPU speed options that `spec.model.attention: auto`,
# `spec.model.feedForward: auto` and `spec.training.fp8` look for (pyproject extras): `fa4`
# (flash-attn-4, which brings quack-kernels and nvidia-cutlass-dsl) and `fp8` (torchao); the CUDA
# 13 image adds `fa4-cu13` (nvidia-cutlass-dsl's CUDA 13 libraries). Without them, `auto` falls
# back to SDPA and diffusers' feed-forward, and pods run slower than the README's H200 numbers.
# ROCm has no build of these kernels; the CPU image has no use for them.
CUDA_EXTRAS = (*TRAIN_EXTRAS, "fa4", "fp8")

# Base tags are pinned to exact CUDA/ROCm releases (registry digests cannot be resolved offline).
# The torch index must serve wheels for the same CUDA major.minor / ROCm release as the base.
FLAVOURS: dict[str, ImageFlavour] = {
    "cpu": ImageFlavour("cpu", "python:3.12-slim-bookworm", "https://download.pytorch.org/whl/cpu", None),
    "cuda12": ImageFlavour("cuda12", "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04",
                           "https://download.pytorch.org/whl/cu128", "nvidia.com/gpu", CUDA_EXTRAS),
    "cuda13": ImageFlavour("cuda13", "nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04",
                           "https://download.pytorch.org/whl/cu130", "nvidia.com/gpu", (*CUDA_EXTRAS, "fa4-cu13")),
    "rocm": ImageFlavour("rocm", "rocm/dev-ubuntu-24.04:6.4", "https://download.pytorch.org/whl/rocm6.4", "amd.com/gpu",
                         device_groups=True),
}
# The Kubernetes operator: the core package and its `operator` extra, no torch.
OPERATOR = ImageFlavour("operator", "python:3.12-slim-bookworm", None, None, ("operator",))
IMAGES: dict[str, ImageFlavour] = {**FLAVOURS, OPERATOR.hardware: OPERATOR}


class NoImageError(ValueError):
    """The hardware has no container image (Apple's mps runs natively only)."""


def flavour(hardware: str) -> ImageFlavour:
    try:
        return FLAVOURS[hardware]
    except KeyError:
        raise NoImageError(f"spec.hardware.accelerator: {hardware!r} has no container image; "
                           f"images exist for {', '.join(FLAVOURS)}") from None


# OCI distribution: a registry host[:port] and repository path, and a tag (at most 128 characters).
_REGISTRY = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def reference_problems(registry: str, version: str) -> list[str]:
    """Why `<registry>/<name>:<version>-<hw>` would not be an image reference (render and the
    operator take both from flags)."""
    problems = []
    if not _REGISTRY.fullmatch(registry.rstrip("/")):
        problems.append(f"--registry: {registry!r} is not a registry and path (lowercase host[:port][/path], "
                        f"e.g. {DEFAULT_REGISTRY})")
    if not _TAG.fullmatch(f"{version}-cpu"):
        problems.append(f"--version: {version!r} does not make an image tag (letters, digits, '_', '.' and '-', "
                        f"not starting with '.' or '-'), e.g. {__version__}")
    return problems


def image_ref(hardware: str, *, registry: str = DEFAULT_REGISTRY, name: str = DEFAULT_NAME,
              version: str = __version__) -> str:
    """`<registry>/<name>:<version>-<hw>`, the tag `make images` builds and pods run.
    `hardware` is an accelerator or "operator"."""
    image = OPERATOR if hardware == OPERATOR.hardware else flavour(hardware)
    return f"{registry.rstrip('/')}/{name}:{version}-{image.hardware}"


def build_args(image: ImageFlavour, *, version: str, revision: str, source: str = DEFAULT_SOURCE,
               base_image: str | None = None, torch_index: str | None = None) -> dict[str, str]:
    """The Dockerfile's ARGs for one image. `base_image`/`torch_index` override the defaults
    (a local base, or "" to take torch from pip's own configuration)."""
    index = image.torch_index if torch_index is None else torch_index
    return {
        "BASE_IMAGE": base_image or image.base_image,
        "TORCH_INDEX": index or "",
        "EXTRAS": ",".join(image.extras),
        "VERSION": version,
        "REVISION": revision,
        "SOURCE": source,
    }


def build_command(image: ImageFlavour, *, engine: str, tag: str, args: dict[str, str],
                  extra: Sequence[str] = (), context: str = ".") -> list[str]:
    """One image's build command; docker, podman and buildah take the same flags."""
    cmd = [engine, "build", "-f", DOCKERFILE, "-t", tag]
    for key, value in args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    return cmd + list(extra) + [context]


def push_command(engine: str, tag: str) -> list[str]:
    return [engine, "push", tag]


def find_engine(candidates: Sequence[str], which: Callable[[str], str | None] = shutil.which) -> str | None:
    """The first container engine of `candidates` on PATH."""
    return next((e for e in candidates if which(e)), None)


def selected(names: Sequence[str]) -> list[ImageFlavour]:
    """The images named (all of them when none is), in a stable order."""
    unknown = [n for n in names if n not in IMAGES]
    if unknown:
        raise NoImageError(f"no image for {', '.join(unknown)}; images exist for {', '.join(IMAGES)}")
    return [IMAGES[n] for n in names] if names else list(IMAGES.values())


def git_revision(repo: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"  # building from an exported tree; the label says so rather than lying


def commands(action: str, ns: argparse.Namespace) -> list[list[str]]:
    out = []
    for image in selected(ns.only):
        tag = image_ref(image.hardware, registry=ns.registry, name=ns.name, version=ns.version)
        if action == "push":
            out.append(push_command(ns.engine, tag))
        else:
            args = build_args(image, version=ns.version, revision=ns.revision, source=ns.source)
            out.append(build_command(image, engine=ns.engine, tag=tag, args=args))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    repo = Path(__file__).resolve().parents[2]
    p = argparse.ArgumentParser(prog="python -m runner.launch.images",
                                description="build or push the trainingjob images (one per hardware + operator)")
    p.add_argument("action", choices=["build", "push", "torch-index"],
                   help="torch-index: print the pip index of the torch build for --only HW")
    p.add_argument("--only", action="append", default=[], metavar="IMAGE",
                   help=f"one of {', '.join(IMAGES)} (repeatable; default: all)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, one per image, and run nothing")
    p.add_argument("--engine", default="", help=f"default: the first of {', '.join(BUILD_ENGINES)} on PATH")
    p.add_argument("--registry", default=DEFAULT_REGISTRY)
    p.add_argument("--name", default=DEFAULT_NAME)
    p.add_argument("--version", default=__version__)
    p.add_argument("--revision", default="")
    p.add_argument("--source", default=DEFAULT_SOURCE)
    ns = p.parse_args(argv)
    if ns.action == "torch-index":
        # `make install GPU=cuda12` installs torch from here, outside the images.
        index = FLAVOURS[ns.only[0]].torch_index if len(ns.only) == 1 and ns.only[0] in FLAVOURS else None
        if not index:
            print(f"torch-index needs one --only of {', '.join(FLAVOURS)}", file=sys.stderr)
            return 2
        print(index)
        return 0
    ns.revision = ns.revision or git_revision(repo)
    ns.engine = ns.engine or find_engine(BUILD_ENGINES) or ""
    if not ns.engine:
        if not ns.dry_run:
            print(f"no container engine found: install one of {', '.join(BUILD_ENGINES)}", file=sys.stderr)
            return 2
        ns.engine = "docker"  # a dry run still shows the commands, as docker would take them
    try:
        cmds = commands(ns.action, ns)
    except NoImageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for cmd in cmds:
        print(shlex.join(cmd), flush=True)
        if not ns.dry_run:
            code = subprocess.call(cmd, cwd=repo)
            if code:
                return code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
