"""Model families by name (`spec.model.family`): their torch-free traits, and their
implementation, imported on first use.

`trainingjob validate` must not import torch (the operator depends on it), yet some checks
depend on the architecture: an image side that is not a multiple of the VAE factor times the
transformer's patch size has no whole token grid and crashes the first validation step. So
the traits live here as data; the family module they name (runner/models/<family>.py) is only
imported when a stage asks for the family, and tests check the two agree on the real pipeline.

Adding a family: its module (implementing runner.models.family.ModelFamily as FAMILY), its
traits below, and its name in the schema's `spec.model.family` enum (a test checks the enum
and this table agree).
"""
from __future__ import annotations

import importlib
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Mapping

from runner.models.family import FamilyTraits, ModelFamily

FAMILIES: Mapping[str, FamilyTraits] = MappingProxyType({
    "pixart_sigma": FamilyTraits(
        name="pixart_sigma", title="PixArt Sigma", implementation="runner.models.pixart_sigma",
        vae_scale_factor=8, patch_size=2, max_side=2048, max_tokens=300, latent_channels=4,
        tiny_model="builtin:tiny-pixart-sigma",
        components=("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
        text_components=("text_encoder", "tokenizer"), vae_component="vae", guidance_range=(3.6, 4.4)),
})


def traits(family: str) -> FamilyTraits:
    """The traits of a family; KeyError names the known ones (the schema's enum keeps this unreachable
    for validated specs)."""
    try:
        return FAMILIES[family]
    except KeyError:
        raise KeyError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}") from None


@lru_cache(maxsize=None)
def family(name: str) -> ModelFamily:
    """The implementation of a family (imports torch and the family's libraries)."""
    return importlib.import_module(traits(name).implementation).FAMILY


def family_of(spec: Mapping[str, Any]) -> ModelFamily:
    """The family a (plain, defaulted) spec trains."""
    return family(spec["model"]["family"])
