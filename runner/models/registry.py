"""What validation needs to know about each model family, without importing torch.

`trainingjob validate` must not import torch (the operator depends on it), yet some checks
depend on the architecture: an image side that is not a multiple of the VAE factor times the
transformer's patch size has no whole token grid and crashes the first validation step. This
table holds those traits, keyed by `spec.model.family`; the torch side (runner/models/<family>.py)
is where they come from, and tests check the two agree on the real pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class FamilyTraits:
    name: str  # as in spec.model.family
    title: str  # for messages
    vae_scale_factor: int  # image px per latent px
    patch_size: int  # latent px per transformer token (each side)
    max_side: int  # the largest side the family was trained for, in px
    # The builtin tiny model of the same architecture (random weights, built offline): what a
    # smoke run swaps in for `pretrained`, so the user's spec runs on a CPU in seconds.
    tiny_model: str

    @property
    def resolution_multiple(self) -> int:
        """Image sides must be multiples of this: one transformer token is this many px."""
        return self.vae_scale_factor * self.patch_size


FAMILIES = MappingProxyType({
    "pixart_sigma": FamilyTraits(name="pixart_sigma", title="PixArt Sigma", vae_scale_factor=8, patch_size=2,
                                 max_side=2048, tiny_model="builtin:tiny-pixart-sigma"),
})


def traits(family: str) -> FamilyTraits:
    """The traits of a family; KeyError names the known ones (the schema's enum keeps this unreachable
    for validated specs)."""
    try:
        return FAMILIES[family]
    except KeyError:
        raise KeyError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}") from None
