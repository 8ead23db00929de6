"""The model-family registry: the schema's enum, the registry's traits and the family modules agree."""
from __future__ import annotations

import pytest

from runner.models import registry
from runner.models.family import ModelFamily
from runner.spec import schema as schema_mod


def test_the_registry_has_exactly_the_schemas_families():
    assert list(registry.FAMILIES) == schema_mod.subschema("spec.model.family")["enum"]


@pytest.mark.parametrize("name", list(registry.FAMILIES))
def test_each_family_implements_the_interface(name):
    family = registry.family(name)
    assert isinstance(family, ModelFamily)
    assert family.traits is registry.traits(name) and family.traits.name == name
    assert type(family).__module__ == registry.traits(name).implementation


def test_the_default_family_was_trained_at_the_default_token_length():
    model = schema_mod.subschema("spec.model")["properties"]
    default = registry.traits(model["family"]["default"])
    assert default.max_tokens == model["textEncoderMaxLength"]["default"]


def test_an_unknown_family_names_the_known_ones():
    with pytest.raises(KeyError, match="known: pixart_sigma"):
        registry.traits("flux")


def test_family_of_reads_the_spec():
    assert registry.family_of({"model": {"family": "pixart_sigma"}}) is registry.family("pixart_sigma")
