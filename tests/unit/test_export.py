"""Exporting the fine-tuned pipeline: loadable, only the transformer replaced, atomic re-export."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from runner.models.pipeline import export_pipeline
from runner.models.pixart_sigma import FAMILY
from runner.models.tiny.build import MARKER
from runner.models.tiny.pixart_sigma import build_tiny_pixart_sigma


pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pixart_sigma(tmp_path_factory.mktemp("export-base") / "tiny")


def _modified_transformer(base_dir: Path, seed: int):
    model = FAMILY.load_transformer(base_dir, bit_fit=False, gradient_checkpointing=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    return model


def _state(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def base_pipe(base_dir: Path):
    from diffusers import PixArtSigmaPipeline

    return PixArtSigmaPipeline.from_pretrained(base_dir)


def test_export_loads_with_modified_transformer(tmp_path: Path, base_dir: Path, base_pipe) -> None:
    from diffusers import PixArtSigmaPipeline

    base_files = _files(base_dir)
    model = _modified_transformer(base_dir, seed=1)
    want = _state(model)
    assert any(not torch.equal(want[k], v) for k, v in base_pipe.transformer.state_dict().items())

    dest = export_pipeline(base_dir, model, tmp_path / "out" / "model")
    assert dest == tmp_path / "out" / "model"
    pipe = PixArtSigmaPipeline.from_pretrained(dest)
    _assert_same(_state(pipe.transformer), want)
    for name in ("vae", "text_encoder"):
        _assert_same(_state(getattr(pipe, name)), _state(getattr(base_pipe, name)))
    assert dict(pipe.scheduler.config) == dict(base_pipe.scheduler.config)
    assert pipe.tokenizer("a cat").input_ids == base_pipe.tokenizer("a cat").input_ids
    assert json.loads((dest / "model_index.json").read_text())["_class_name"] == "PixArtSigmaPipeline"
    assert not (dest / MARKER).exists()  # the builtin's build marker is not part of the export
    # The base pipeline is untouched.
    assert _files(base_dir) == base_files


def test_export_replaces_atomically(tmp_path: Path, base_dir: Path) -> None:
    from safetensors.torch import load_file

    dest = tmp_path / "model"
    first = _modified_transformer(base_dir, seed=1)
    export_pipeline(base_dir, first, dest)
    (dest / "stale-file-from-previous-export.txt").write_text("old")
    # A leftover temp folder from a killed export is cleaned, not reused.
    (tmp_path / ".model.tmp" / "junk").mkdir(parents=True)

    second = _modified_transformer(base_dir, seed=2)
    assert export_pipeline(base_dir, second, dest) == dest
    weights = load_file(dest / "transformer" / "diffusion_pytorch_model.safetensors")
    _assert_same(weights, _state(second))
    assert not (dest / "stale-file-from-previous-export.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no .model.tmp / .model.old left


def test_export_into_fresh_parent_and_unchanged_components_shared(tmp_path: Path, base_dir: Path) -> None:
    dest = tmp_path / "a" / "b" / "model"
    export_pipeline(base_dir, _modified_transformer(base_dir, seed=3), dest)
    base_files, out_files = _files(base_dir), _files(dest)
    unchanged = {k: v for k, v in base_files.items() if not k.startswith("transformer/") and k != MARKER}
    assert "vae/diffusion_pytorch_model.safetensors" in unchanged and "text_encoder/model.safetensors" in unchanged
    assert {k: out_files[k] for k in unchanged} == unchanged  # every other component byte-identical
    assert set(out_files) - set(unchanged) == {"transformer/config.json",
                                               "transformer/diffusion_pytorch_model.safetensors"}
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model"]
