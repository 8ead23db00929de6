"""The one hardware -> container image mapping, shared by `make images`, `render`, the operator
and `trainingjob run --container`. Pure data and pure functions: no torch, no kubernetes."""
from __future__ import annotations

from dataclasses import dataclass

from runner import __version__

DEFAULT_REGISTRY = "ghcr.io/trainingjob"
DEFAULT_NAME = "trainingjob"


@dataclass(frozen=True)
class ImageFlavour:
    """What one hardware flavour's image is built from, and what a pod on it requests."""

    hardware: str             # a value of spec.hardware.accelerator
    base_image: str           # pinned default for ARG BASE_IMAGE
    torch_index: str          # pip index that serves the matching torch build
    gpu_resource: str | None  # extended resource a pod requests per GPU; None for CPU


FLAVOURS: dict[str, ImageFlavour] = {
    "cpu": ImageFlavour("cpu", "python:3.12-slim-bookworm", "https://download.pytorch.org/whl/cpu", None),
    "cuda12": ImageFlavour("cuda12", "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04",
                           "https://download.pytorch.org/whl/cu128", "nvidia.com/gpu"),
    "cuda13": ImageFlavour("cuda13", "nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04",
                           "https://download.pytorch.org/whl/cu130", "nvidia.com/gpu"),
    "rocm": ImageFlavour("rocm", "rocm/dev-ubuntu-24.04:6.4", "https://download.pytorch.org/whl/rocm6.4", "amd.com/gpu"),
}


class NoImageError(ValueError):
    """The hardware has no container image (Apple's mps runs natively only)."""


def flavour(hardware: str) -> ImageFlavour:
    try:
        return FLAVOURS[hardware]
    except KeyError:
        raise NoImageError(f"spec.hardware.accelerator: {hardware!r} has no container image; "
                           f"images exist for {', '.join(FLAVOURS)}") from None


def image_ref(hardware: str, *, registry: str = DEFAULT_REGISTRY, name: str = DEFAULT_NAME,
              version: str = __version__) -> str:
    """`<registry>/<name>:<version>-<hw>`, the tag `make images` builds and pods run."""
    return f"{registry.rstrip('/')}/{name}:{version}-{flavour(hardware).hardware}"
