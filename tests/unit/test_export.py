"""Exporting the fine-tuned pipeline: loadable, only the transformer replaced, atomic re-export."""
from __future__ import annotations

import json
import subprocess
import sys
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


def test_export_carries_the_given_files_over_the_bases(tmp_path: Path, base_dir: Path) -> None:
    """The run's spec goes in as model/trainingjob.yaml (runner/train/loop.py). Trained again from
    an export, the base's own trainingjob.yaml is replaced in the new export, never written through."""
    first = export_pipeline(base_dir, _modified_transformer(base_dir, seed=1), tmp_path / "first",
                            files={"trainingjob.yaml": b"first\n"})
    assert (first / "trainingjob.yaml").read_bytes() == b"first\n"
    second = export_pipeline(first, _modified_transformer(first, seed=2), tmp_path / "second",
                             files={"trainingjob.yaml": b"second\n"})
    assert (second / "trainingjob.yaml").read_bytes() == b"second\n"
    assert (first / "trainingjob.yaml").read_bytes() == b"first\n"
    assert not (export_pipeline(base_dir, _modified_transformer(base_dir, seed=3), tmp_path / "plain")
                / "trainingjob.yaml").exists()


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


_EXPORT = """
import sys
from pathlib import Path
from runner.models.pipeline import export_pipeline
from runner.models.pixart_sigma import FAMILY
base = Path(sys.argv[1])
export_pipeline(base, FAMILY.load_transformer(base, bit_fit=False, gradient_checkpointing=False), Path(sys.argv[2]))
"""


def _modes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mode & 0o777 for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_exported_weights_get_the_usual_modes_and_the_base_keeps_its_own(tmp_path: Path, base_dir: Path,
                                                                          umask: int) -> None:
    """safetensors wrote the transformer's weights 0600: a serving container or another uid
    on a shared volume could not read the fine-tuned model. The export's folders follow the
    umask too (they copied the base's); the files shared with the base (hard links) keep the
    base's modes: changing them would change the base's."""
    base_modes = _modes(base_dir)
    dest = tmp_path / "out" / "model"
    subprocess.run([sys.executable, "-c", _EXPORT, str(base_dir), str(dest)], umask=umask, check=True,
                   cwd=Path(__file__).resolve().parents[2], capture_output=True)
    modes = _modes(dest)
    linked = {k for k in modes if k.endswith(".safetensors") and not k.startswith("transformer/")}
    assert linked and all((dest / k).samefile(base_dir / k) for k in linked)
    assert {k: v for k, v in modes.items() if k in linked} == {k: base_modes[k] for k in linked}
    assert {k: v for k, v in modes.items() if k not in linked} == \
        {k: 0o777 & ~umask if (dest / k).is_dir() else 0o666 & ~umask for k in modes if k not in linked}
    assert "transformer/diffusion_pytorch_model.safetensors" in modes and "vae" in modes
    assert dest.stat().st_mode & 0o777 == 0o777 & ~umask
    assert _modes(base_dir) == base_modes


def _inodes_bytes_modes(root: Path) -> dict[str, tuple]:
    return {p.relative_to(root).as_posix(): (p.stat().st_ino, p.read_bytes(), p.stat().st_mode)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_an_export_shares_the_base_weights_and_nothing_writes_through_them(tmp_path: Path, base_dir: Path) -> None:
    """The unchanged weights are hard links to the base model's files (README.md says so): a
    write into one in place would change the base and every other export. The configs and
    tokenizer files are copies: `save_pretrained` into the export writes them in place, and
    changed the base's scheduler config when they were links too. What the runner writes into
    an export afterwards (the Hub model card, a re-export, an export of a model trained from
    this export) replaces links and never writes through them."""
    import shutil

    from diffusers import PixArtSigmaPipeline

    from runner.train.publish import write_card

    base = tmp_path / "base"
    shutil.copytree(base_dir, base)
    (base / "README.md").write_text("the base model's card\n")  # a local base folder may have one
    before = _inodes_bytes_modes(base)

    dest = tmp_path / "out" / "model"
    export_pipeline(base, _modified_transformer(base, seed=4), dest)
    shared = {k for k in _inodes_bytes_modes(dest) if (dest / k).samefile(base / k)}
    assert shared == {"vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"}
    assert all((dest / k).stat().st_nlink >= 2 for k in shared)

    pipe = PixArtSigmaPipeline.from_pretrained(dest)
    pipe.scheduler.register_to_config(num_train_timesteps=999)
    pipe.save_pretrained(dest)  # a user's edit of the export
    assert json.loads((dest / "scheduler" / "scheduler_config.json").read_text())["num_train_timesteps"] == 999

    image = tmp_path / "p0-128x128.png"
    image.write_bytes(b"png")
    job = {"spec": {"model": {"pretrained": str(base), "family": "pixart_sigma"}}}
    write_card(dest, job, [image], "me/pixart-ft")
    assert (dest / "README.md").read_text().startswith("---")
    export_pipeline(base, _modified_transformer(base, seed=5), dest)  # a re-export over it
    export_pipeline(dest, _modified_transformer(dest, seed=6), dest)  # trained again from the export
    assert _inodes_bytes_modes(base) == before
