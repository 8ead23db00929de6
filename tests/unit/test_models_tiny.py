"""Tiny offline PixArt Sigma / CLIP builders: loadable through the real from_pretrained paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from runner.files import process_umask
from runner.models import tiny
from runner.models.tiny import is_builtin, make_tokenizers, resolve_builtin, tokenizers
from runner.models.tiny.build import MARKER, build_once
from runner.models.tiny.clip import build_tiny_clip
from runner.models.tiny.pixart_sigma import build_tiny_pixart_sigma

PROMPTS = ["a photo of a cat", "An astronaut riding a rocket to the Moon, with coffee & coins!"]


@pytest.fixture(scope="session")
def pixart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pixart_sigma(tmp_path_factory.mktemp("tiny") / "pixart", seed=0)


@pytest.fixture(scope="session")
def pipe(pixart_dir: Path):
    from diffusers import PixArtSigmaPipeline

    return PixArtSigmaPipeline.from_pretrained(pixart_dir)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _transformer_weights(root: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(root / "transformer" / "diffusion_pytorch_model.safetensors")


# --------------------------------------------------------------------------- layout


def test_build_layout_and_size(pixart_dir: Path) -> None:
    assert pixart_dir.name == "pixart"
    index = json.loads((pixart_dir / "model_index.json").read_text())
    assert index["_class_name"] == "PixArtSigmaPipeline"
    for sub in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (pixart_dir / sub).is_dir(), sub
    meta = json.loads((pixart_dir / MARKER).read_text())
    assert meta["builder"] == "tiny-pixart-sigma" and meta["seed"] == 0
    total = sum(p.stat().st_size for p in pixart_dir.rglob("*") if p.is_file())
    assert total < 5 * 1024 * 1024
    # no temp dirs left next to dest
    assert [p.name for p in pixart_dir.parent.iterdir()] == ["pixart"]
    # normal permissions, not mkdtemp's 0700 (the cache may be shared across uids)
    umask = process_umask()
    assert pixart_dir.stat().st_mode & 0o777 == 0o777 & ~umask
    weights = pixart_dir / "transformer" / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_mode & 0o777 == 0o666 & ~umask


def test_components_load_like_the_trainer(pixart_dir: Path) -> None:
    from diffusers import AutoencoderKL, DDPMScheduler, PixArtTransformer2DModel
    from transformers import AutoTokenizer, T5EncoderModel, T5Tokenizer

    transformer = PixArtTransformer2DModel.from_pretrained(pixart_dir, subfolder="transformer")
    vae = AutoencoderKL.from_pretrained(pixart_dir, subfolder="vae")
    text_encoder = T5EncoderModel.from_pretrained(pixart_dir, subfolder="text_encoder")
    tokenizer = AutoTokenizer.from_pretrained(pixart_dir, subfolder="tokenizer")
    t5_tokenizer = T5Tokenizer.from_pretrained(pixart_dir, subfolder="tokenizer")
    scheduler = DDPMScheduler.from_pretrained(pixart_dir, subfolder="scheduler")

    tc = transformer.config
    assert tc.norm_type == "ada_norm_single" and tc.patch_size == 2
    assert tc.in_channels == 4 and tc.out_channels == 8
    assert tc.use_additional_conditions is False
    assert tc.sample_size in (32, 64, 128, 256)
    assert tc.caption_channels == text_encoder.config.d_model
    assert tc.cross_attention_dim == tc.num_attention_heads * tc.attention_head_dim

    assert 2 ** (len(vae.config.block_out_channels) - 1) == 8
    assert vae.config.latent_channels == 4
    assert vae.config.scaling_factor == pytest.approx(0.13025)

    assert scheduler.config.num_train_timesteps == 1000
    assert scheduler.config.prediction_type == "epsilon"
    assert scheduler.config.beta_schedule == "linear"
    assert scheduler.config.variance_type is None

    for tok in (tokenizer, t5_tokenizer):
        assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
        assert len(tok) == text_encoder.config.vocab_size
        assert tok.model_max_length == 300
        enc = tok(PROMPTS, max_length=300, padding="max_length", truncation=True, return_tensors="pt")
        assert enc.input_ids.shape == (2, 300)
        assert int(enc.input_ids.max()) < text_encoder.config.vocab_size
        # ends with </s>, then padding; printable ASCII never maps to <unk>
        n = int(enc.attention_mask[0].sum())
        assert int(enc.input_ids[0, n - 1]) == 1 and int(enc.input_ids[0, n]) == 0
        assert 2 not in enc.input_ids.tolist()[1]

    # one training-style step through the loaded components
    with torch.no_grad():
        enc = tokenizer(PROMPTS, max_length=300, padding="max_length", truncation=True, return_tensors="pt")
        embeds = text_encoder(enc.input_ids, attention_mask=enc.attention_mask)[0]
        latents = vae.encode(torch.rand(2, 3, 64, 96) * 2 - 1).latent_dist.sample() * vae.config.scaling_factor
        assert latents.shape == (2, 4, 8, 12)
        noise = torch.randn_like(latents)
        t = torch.tensor([10, 900])
        noisy = scheduler.add_noise(latents, noise, t)
        out = transformer(
            noisy,
            encoder_hidden_states=embeds,
            encoder_attention_mask=enc.attention_mask,
            timestep=t,
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        ).sample
    assert out.shape == (2, 8, 8, 12)
    assert torch.isfinite(out).all()


# --------------------------------------------------------------------------- inference


@pytest.mark.parametrize(("height", "width"), [(128, 128), (192, 128)])
def test_pipeline_generates_from_prompts(pipe, height: int, width: int) -> None:
    out = pipe(
        PROMPTS,
        num_inference_steps=2,
        height=height,
        width=width,
        clean_caption=False,
        use_resolution_binning=False,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(out.images) == 2
    for image in out.images:
        assert image.size == (width, height)  # PIL: (w, h)
        assert image.mode == "RGB"


def test_pipeline_generates_from_precomputed_embeds(pixart_dir: Path, pipe) -> None:
    from diffusers import PixArtSigmaPipeline

    with torch.no_grad():
        pe, pm, ne, nm = pipe.encode_prompt(
            PROMPTS[:1], do_classifier_free_guidance=True, max_sequence_length=300
        )
    assert pe.shape == (1, 300, pipe.text_encoder.config.d_model)

    no_t5 = PixArtSigmaPipeline.from_pretrained(pixart_dir, text_encoder=None, tokenizer=None)
    assert no_t5.text_encoder is None and no_t5.tokenizer is None
    kwargs = dict(
        prompt=None,
        negative_prompt=None,  # defaults to "" which conflicts with negative_prompt_embeds
        prompt_embeds=pe,
        prompt_attention_mask=pm,
        negative_prompt_embeds=ne,
        negative_prompt_attention_mask=nm,
        num_inference_steps=2,
        height=128,
        width=192,
        clean_caption=False,
        use_resolution_binning=False,
        output_type="np",
    )
    a = no_t5(**kwargs, generator=torch.Generator().manual_seed(1)).images
    b = pipe(**kwargs, generator=torch.Generator().manual_seed(1)).images
    assert a.shape == (1, 128, 192, 3)
    assert (a == b).all()  # same embeddings -> same image with or without T5 loaded

    pil = no_t5(**{**kwargs, "output_type": "pil"}).images
    assert pil[0].size == (192, 128)


# --------------------------------------------------------------------------- build behaviour


def test_build_is_deterministic(pixart_dir: Path, tmp_path: Path) -> None:
    rng_before = torch.get_rng_state()
    again = build_tiny_pixart_sigma(tmp_path / "again", seed=0)
    assert torch.equal(torch.get_rng_state(), rng_before)  # caller's RNG untouched

    w0, w1 = _transformer_weights(pixart_dir), _transformer_weights(again)
    assert w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert _files(pixart_dir) == _files(again)  # byte-identical, tokenizer included

    other = build_tiny_pixart_sigma(tmp_path / "other", seed=1)
    w2 = _transformer_weights(other)
    assert any(not torch.equal(w0[k], w2[k]) for k in w0)


def test_rebuild_into_complete_dest_is_noop(pixart_dir: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in pixart_dir.rglob("*")}
    assert build_tiny_pixart_sigma(pixart_dir, seed=0) == pixart_dir
    assert {p: p.stat().st_mtime_ns for p in pixart_dir.rglob("*")} == before


def test_incomplete_dest_is_replaced(tmp_path: Path) -> None:
    dest = tmp_path / "pix"
    dest.mkdir()
    (dest / "model_index.json").write_text("{}")  # no completion marker
    assert build_tiny_pixart_sigma(dest) == dest
    assert (dest / MARKER).is_file()
    assert json.loads((dest / "model_index.json").read_text())["_class_name"] == "PixArtSigmaPipeline"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pix"]


def test_losing_the_race_keeps_the_winner(tmp_path: Path) -> None:
    dest = tmp_path / "m"

    def winner(tmp: Path) -> None:
        (tmp / "config.json").write_text('"winner"')

    def loser(tmp: Path) -> None:
        # another process finishes and renames into place while we build
        build_once(dest, kind="k", seed=0, required="config.json", build=winner)
        (tmp / "config.json").write_text('"loser"')

    out = build_once(dest, kind="k", seed=0, required="config.json", build=loser)
    assert out == dest
    assert (dest / "config.json").read_text() == '"winner"'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    def boom(tmp: Path) -> None:
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        build_once(tmp_path / "m", kind="k", seed=0, required="config.json", build=boom)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- builtins


def test_is_builtin() -> None:
    assert is_builtin("builtin:tiny-pixart-sigma")
    assert is_builtin("builtin:tiny-clip")
    assert not is_builtin("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS")
    assert not is_builtin("/models/builtin:x") and not is_builtin("")


def test_resolve_builtin(tmp_path: Path, pixart_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def fake(dest: Path, seed: int = 0) -> Path:
        calls.append(dest)
        return dest

    monkeypatch.setitem(tiny.BUILTINS, "tiny-pixart-sigma", fake)
    assert resolve_builtin("builtin:tiny-pixart-sigma", tmp_path) == tmp_path / "builtin" / "tiny-pixart-sigma"
    assert calls == [tmp_path / "builtin" / "tiny-pixart-sigma"]

    with pytest.raises(ValueError) as err:
        resolve_builtin("builtin:huge-model", tmp_path)
    assert "builtin:tiny-pixart-sigma" in str(err.value) and "builtin:tiny-clip" in str(err.value)


def test_resolve_builtin_builds_tiny_clip(tmp_path: Path) -> None:
    from transformers import AutoProcessor, CLIPImageProcessor, CLIPModel, CLIPProcessor

    dest = resolve_builtin("builtin:tiny-clip", tmp_path)
    assert dest == tmp_path / "builtin" / "tiny-clip"
    assert resolve_builtin("builtin:tiny-clip", tmp_path) == dest  # cached

    model = CLIPModel.from_pretrained(dest)
    processor = CLIPProcessor.from_pretrained(dest)
    assert AutoProcessor.from_pretrained(dest) is not None
    size = model.config.vision_config.image_size
    assert CLIPImageProcessor.from_pretrained(dest).crop_size["height"] == size

    tok = processor.tokenizer
    assert model.config.text_config.eos_token_id == tok.eos_token_id
    assert len(tok) == model.config.text_config.vocab_size
    enc = tok(PROMPTS, padding=True, return_tensors="pt")
    assert int(enc.input_ids[0, 0]) == tok.bos_token_id
    assert tok.decode(enc.input_ids[0], skip_special_tokens=True) == PROMPTS[0]

    from PIL import Image

    inputs = processor(text=PROMPTS, images=[Image.new("RGB", (50, 70), "red")] * 2, return_tensors="pt", padding=True, truncation=True)
    assert inputs["pixel_values"].shape == (2, 3, size, size)
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits_per_image.shape == (2, 2)

    # deterministic
    again = build_tiny_clip(tmp_path / "again")
    assert _files(dest) == _files(again)


# --------------------------------------------------------------------------- tokenizers as data


def test_the_shipped_tokenizer_files_are_what_the_script_makes(tmp_path: Path) -> None:
    for path in make_tokenizers.write(tmp_path):
        shipped = tokenizers.HERE / path.name
        assert path.read_bytes() == shipped.read_bytes(), (
            f"{shipped} is stale: rerun python -m runner.models.tiny.make_tokenizers")


def test_builds_train_no_tokenizer() -> None:
    """The builders read the shipped files: nothing under runner/models/tiny but the script trains."""
    for module in ("__init__", "build", "tokenizers", "pixart_sigma", "clip"):
        source = (tokenizers.HERE / f"{module}.py").read_text()
        assert "trainers" not in source and "make_tokenizers" not in source.split('"""', 2)[-1], module
