"""The PixArt Sigma family on the tiny builtin: text padding, pixels, the training objective, BitFit."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from runner.models.pixart_sigma import FAMILY, Objective
from runner.models.tiny.pixart_sigma import build_tiny_pixart_sigma


pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pixart_sigma(tmp_path_factory.mktemp("pixart-family") / "tiny")


@pytest.fixture(scope="module")
def model(tiny_dir: Path):
    return FAMILY.load_transformer(tiny_dir, bit_fit=False, gradient_checkpointing=False)


@pytest.fixture(scope="module")
def objective(tiny_dir: Path, model) -> Objective:
    return FAMILY.objective(tiny_dir, model)


def _inputs(seed: int = 0, batch: int = 2, h: int = 8, w: int = 8, tokens: int = 5):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, h, w, generator=g)
    embeds = torch.randn(batch, tokens, 32, generator=g)
    mask = torch.ones(batch, tokens, dtype=torch.long)
    mask[0, 3:] = 0
    return latents, embeds, mask


def _loss(objective, model, seed: int = 0, **kw):
    latents, embeds, mask = _inputs(**kw)
    return objective(model, latents, embeds, mask, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- pad_text

@pytest.mark.parametrize("lengths, dim", [([1], 4), ([2, 5, 3], 8), ([6, 6], 3), ([1, 300], 2)])
def test_pad_text(lengths: list[int], dim: int) -> None:
    embeds = [torch.arange(n * dim, dtype=torch.float32).reshape(n, dim) + 1 for n in lengths]
    out, mask = FAMILY.pad_text(embeds)
    assert out.shape == (len(lengths), max(lengths), dim) and out.dtype == torch.float32
    assert mask.shape == (len(lengths), max(lengths)) and mask.dtype == torch.long
    for i, (e, n) in enumerate(zip(embeds, lengths)):
        assert torch.equal(out[i, :n], e)
        assert torch.count_nonzero(out[i, n:]) == 0
        assert int(mask[i].sum()) == n and mask[i, :n].all()


@pytest.mark.parametrize("lengths,multiple,expected", [([3, 5], 1, 5), ([3, 5], 4, 8), ([64], 64, 64), ([65, 1], 64, 128)])
def test_pad_text_rounds_length_up(lengths, multiple, expected) -> None:
    out, mask = FAMILY.pad_text([torch.ones(n, 4) for n in lengths], multiple=multiple)
    assert out.shape == (len(lengths), expected, 4)
    assert mask.sum(dim=1).tolist() == lengths
    assert float(out[mask == 0].abs().sum()) == 0.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_pad_text_keeps_dtype(dtype) -> None:
    out, _ = FAMILY.pad_text([torch.ones(2, 3, dtype=dtype), torch.ones(1, 3, dtype=dtype)])
    assert out.dtype == dtype


# ----------------------------------------------------------------------------- image_to_tensor

@pytest.mark.parametrize("mode, size, fill, expected", [
    ("RGB", (16, 8), (0, 0, 0), 0),
    ("RGB", (8, 24), (255, 255, 255), 255),
    ("L", (10, 6), 255, 255),
    ("RGBA", (4, 4), (0, 0, 0, 0), 0),
])
def test_image_to_tensor_constant(mode: str, size: tuple[int, int], fill, expected: int) -> None:
    t = FAMILY.image_to_tensor(Image.new(mode, size, fill))
    w, h = size
    assert t.shape == (3, h, w) and t.dtype == torch.uint8
    assert torch.equal(t, torch.full_like(t, expected))


def test_image_to_tensor_channels() -> None:
    img = Image.new("RGB", (5, 3))
    img.putpixel((0, 0), (255, 0, 128))
    img.putpixel((4, 2), (10, 200, 30))
    t = FAMILY.image_to_tensor(img)
    assert t.shape == (3, 3, 5)
    assert t[:, 0, 0].tolist() == [255, 0, 128]
    assert t[:, 2, 4].tolist() == [10, 200, 30]
    assert t.is_contiguous()


def test_encoding_uint8_pixels_equals_encoding_them_normalised_on_the_host(tiny_dir: Path) -> None:
    """The VAE's input is uint8 in the cache and normalised by encode_images; the latents must be
    exactly those of the [-1, 1] float input computed independently here with numpy."""
    vae = FAMILY.load_vae(tiny_dir, "float32", torch.device("cpu"))
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(2, 64, 48, 3), dtype=np.uint8)
    as_uint8 = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    normalised = torch.from_numpy(images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)).permute(0, 3, 1, 2)
    got = FAMILY.encode_images(vae, as_uint8, seeds=[1, 2])
    want = FAMILY.encode_images(vae, normalised.contiguous(), seeds=[1, 2])
    assert got.shape == (2, 4, 8, 6)
    assert torch.equal(got, want)


# ----------------------------------------------------------------------------- Objective

def test_objective_scheduler_from_pipeline(tiny_dir: Path, objective: Objective) -> None:
    sched = FAMILY.noise_scheduler(tiny_dir)
    assert type(sched).__name__ == "DDPMScheduler"
    assert objective.scheduler.config.num_train_timesteps == 1000
    assert objective.use_additional_conditions is False


@pytest.mark.parametrize("batch, h, w", [(1, 8, 8), (2, 8, 12), (3, 16, 8)])
def test_objective_finite_loss_with_grad(objective, model, batch: int, h: int, w: int) -> None:
    model.zero_grad(set_to_none=True)
    loss = _loss(objective, model, batch=batch, h=h, w=w)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    assert loss.requires_grad
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and torch.count_nonzero(g) > 0 for g in grads)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)
    model.zero_grad(set_to_none=True)


def test_objective_matches_manual_epsilon_loss(objective, model) -> None:
    """Same draws as the objective (noise, then timesteps), computed by hand: MSE of the
    first 4 predicted channels against the noise."""
    latents, embeds, mask = _inputs()
    g = torch.Generator().manual_seed(11)
    noise = torch.randn(latents.shape, generator=g)
    t = torch.randint(0, 1000, (latents.shape[0],), generator=g)
    sched = objective.scheduler
    with torch.no_grad():
        pred = model(sched.add_noise(latents, noise, t), encoder_hidden_states=embeds, encoder_attention_mask=mask,
                     timestep=t, added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]
        manual = ((pred[:, :4] - noise) ** 2).mean().item()
        got = objective(model, latents, embeds, mask, generator=torch.Generator().manual_seed(11)).item()
    assert pred.shape[1] == 8
    assert got == pytest.approx(manual, rel=1e-6)


def test_objective_deterministic_with_generator(objective, model) -> None:
    with torch.no_grad():
        a = _loss(objective, model, seed=5)
        b = _loss(objective, model, seed=5)
        c = _loss(objective, model, seed=6)
    assert a.item() == b.item()
    assert a.item() != c.item()


def test_model_has_learned_sigma_channels(model) -> None:
    latents, embeds, mask = _inputs()
    with torch.no_grad():
        out = model(latents, encoder_hidden_states=embeds, encoder_attention_mask=mask,
                    timestep=torch.tensor([10, 500]), added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                    return_dict=False)[0]
    assert out.shape == (2, 8, 8, 8)


def _perturb_channels(model, channels: range) -> dict:
    """Add noise to the final projection rows that produce the given output channels."""
    proj = model.proj_out
    out_ch = model.config.out_channels
    rows = [r for r in range(proj.out_features) if r % out_ch in channels]  # layout (p, q, c), c fastest
    saved = {"weight": proj.weight.detach().clone(), "bias": proj.bias.detach().clone()}
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        proj.weight[rows] += torch.randn(len(rows), proj.in_features, generator=g)
        proj.bias[rows] += torch.randn(len(rows), generator=g)
    return saved


def _restore(model, saved: dict) -> None:
    with torch.no_grad():
        model.proj_out.weight.copy_(saved["weight"])
        model.proj_out.bias.copy_(saved["bias"])


@pytest.mark.parametrize("channels, changes", [(range(4, 8), False), (range(0, 4), True), (range(0, 1), True)])
def test_objective_uses_only_first_four_channels(objective, model, channels: range, changes: bool) -> None:
    with torch.no_grad():
        before = _loss(objective, model, seed=3).item()
    saved = _perturb_channels(model, channels)
    try:
        with torch.no_grad():
            after = _loss(objective, model, seed=3).item()
        if changes:
            assert after != pytest.approx(before, rel=1e-6)
        else:
            assert after == pytest.approx(before, rel=1e-6, abs=1e-7)
    finally:
        _restore(model, saved)
    with torch.no_grad():
        assert _loss(objective, model, seed=3).item() == before


def _alphas_cumprod(config) -> torch.Tensor:
    """The DDPM schedule computed here from the scheduler's config, not read from the scheduler."""
    assert config.beta_schedule == "linear"
    betas = torch.linspace(config.beta_start, config.beta_end, config.num_train_timesteps, dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)


def test_objective_v_prediction_target(tiny_dir: Path, model) -> None:
    """v = alpha_t * eps - sigma_t * x0 (Salimans & Ho), with alpha_t = sqrt(alphas_cumprod[t]),
    sigma_t = sqrt(1 - alphas_cumprod[t]); the noisy input is alpha_t * x0 + sigma_t * eps."""
    from diffusers import DDPMScheduler

    config = FAMILY.objective(tiny_dir, model).scheduler.config
    v_objective = Objective(scheduler=DDPMScheduler.from_config({**config, "prediction_type": "v_prediction"}),
                            use_additional_conditions=False)
    latents, embeds, mask = _inputs()
    g = torch.Generator().manual_seed(11)  # the objective draws noise, then timesteps
    noise = torch.randn(latents.shape, generator=g)
    t = torch.randint(0, config.num_train_timesteps, (latents.shape[0],), generator=g)
    abar = _alphas_cumprod(config)[t].view(-1, 1, 1, 1)
    alpha, sigma = abar.sqrt(), (1.0 - abar).sqrt()
    noisy = alpha * latents + sigma * noise
    velocity = alpha * noise - sigma * latents
    with torch.no_grad():
        pred = model(noisy, encoder_hidden_states=embeds, encoder_attention_mask=mask, timestep=t,
                     added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0][:, :4]
        got = v_objective(model, latents, embeds, mask, generator=torch.Generator().manual_seed(11)).item()
    assert got == pytest.approx(((pred - velocity) ** 2).mean().item(), rel=1e-5)
    # The draws above give targets far enough apart that a wrong target cannot pass by accident.
    assert ((pred - noise) ** 2).mean().item() != pytest.approx(got, rel=1e-2)
    assert ((pred + velocity) ** 2).mean().item() != pytest.approx(got, rel=1e-2)


# ----------------------------------------------------------------------------- micro-conditioning

def _conditions_seen(transformer, call) -> dict:
    """The added_cond_kwargs of the transformer's first forward during `call()`."""
    seen: list[dict] = []

    def hook(module, args, kwargs):
        seen.append(kwargs["added_cond_kwargs"])

    handle = transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            call()
    finally:
        handle.remove()
    return seen[0]


def _pipeline_conditions(pipeline_cls, tiny_dir: Path, transformer, height: int, width: int) -> dict:
    """What diffusers' own pipeline passes to this transformer when sampling height x width."""
    pipe = pipeline_cls(tokenizer=None, text_encoder=None, vae=FAMILY.load_vae(tiny_dir, "float32", torch.device("cpu")),
                        transformer=transformer, scheduler=FAMILY.noise_scheduler(tiny_dir))
    pipe.set_progress_bar_config(disable=True)
    _, embeds, mask = _inputs(batch=1)
    return _conditions_seen(transformer, lambda: pipe(
        prompt=None, negative_prompt=None, prompt_embeds=embeds, prompt_attention_mask=mask, guidance_scale=1.0,
        height=height, width=width, num_inference_steps=1, use_resolution_binning=False, output_type="latent"))


def _objective_conditions(objective: Objective, transformer, height: int, width: int) -> dict:
    latents, embeds, mask = _inputs(batch=1, h=height // 8, w=width // 8)
    return _conditions_seen(transformer, lambda: objective(transformer, latents, embeds, mask,
                                                            generator=torch.Generator().manual_seed(0)))


def test_sigma_transformer_gets_no_micro_conditions_like_its_pipeline(tiny_dir: Path, model, objective) -> None:
    """PixArt Sigma (use_additional_conditions false, as in PixArt-Sigma-XL-2-1024-MS) is trained
    and sampled without resolution / aspect-ratio conditions."""
    from diffusers import PixArtSigmaPipeline

    assert model.use_additional_conditions is False
    expected = _pipeline_conditions(PixArtSigmaPipeline, tiny_dir, model, 64, 128)
    assert expected == {"resolution": None, "aspect_ratio": None}
    assert _objective_conditions(objective, model, 64, 128) == expected


@pytest.fixture(scope="module")
def micro_conditioned(tiny_dir: Path):
    """The tiny transformer at the 1024-px latent size (128), the architecture PixArt's
    multi-scale (-MS) checkpoints use; use_additional_conditions is left unset in the config,
    so diffusers turns it on for sample_size 128 (as for configs written before the key existed).
    Three heads of 16: the size embedding takes a third of the width, as 384 of the real 1152."""
    from diffusers import PixArtTransformer2DModel

    config = dict(PixArtTransformer2DModel.load_config(tiny_dir, subfolder="transformer"))
    config.pop("use_additional_conditions")
    width = 3 * config["attention_head_dim"]
    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel.from_config({**config, "sample_size": 128, "num_attention_heads": 3,
                                                        "cross_attention_dim": width})
    assert transformer.config.use_additional_conditions is None and transformer.use_additional_conditions
    return transformer.eval()


@pytest.mark.parametrize("height, width", [(64, 128), (128, 64), (96, 96)])
def test_micro_conditions_match_the_diffusers_pipeline(tiny_dir: Path, micro_conditioned, height: int,
                                                       width: int) -> None:
    """Training conditions on the size and aspect ratio the way diffusers' PixArtAlphaPipeline
    samples a multi-scale model: resolution [height, width] in pixels, aspect ratio height / width."""
    from diffusers import PixArtAlphaPipeline

    objective = FAMILY.objective(tiny_dir, micro_conditioned)
    assert objective.use_additional_conditions is True
    expected = _pipeline_conditions(PixArtAlphaPipeline, tiny_dir, micro_conditioned, height, width)
    got = _objective_conditions(objective, micro_conditioned, height, width)
    assert set(got) == set(expected) == {"resolution", "aspect_ratio"}
    for name in expected:
        assert got[name].dtype == expected[name].dtype
        assert torch.equal(got[name], expected[name]), (name, got[name], expected[name])


def test_micro_conditions_change_the_prediction(micro_conditioned) -> None:
    """Guard for the test above: the conditions reach the output, so a wrong one is a wrong model input."""
    latents, embeds, mask = _inputs(batch=1, h=8, w=16)
    outs = []
    for resolution, ratio in [([64.0, 128.0], 0.5), ([128.0, 64.0], 2.0)]:
        with torch.no_grad():
            outs.append(micro_conditioned(latents, encoder_hidden_states=embeds, encoder_attention_mask=mask,
                                          timestep=torch.tensor([500]), return_dict=False,
                                          added_cond_kwargs={"resolution": torch.tensor([resolution]),
                                                             "aspect_ratio": torch.tensor([[ratio]])})[0])
    assert not torch.allclose(outs[0], outs[1])


# ----------------------------------------------------------------------------- BitFit

@pytest.mark.parametrize("bit_fit", [True, False])
def test_bit_fit_trainable_params(tiny_dir: Path, bit_fit: bool) -> None:
    m = FAMILY.load_transformer(tiny_dir, bit_fit=bit_fit, gradient_checkpointing=False)
    assert m.training
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    frozen = [n for n, p in m.named_parameters() if not p.requires_grad]
    assert trainable
    if bit_fit:
        assert all(n.endswith(".bias") for n in trainable)
        assert all(not n.endswith(".bias") for n in frozen)
        assert any(n.endswith(".weight") for n in frozen)
        # Gradients flow only into biases.
        obj = FAMILY.objective(tiny_dir, m)
        _loss(obj, m).backward()
        for n, p in m.named_parameters():
            if not p.requires_grad:
                assert p.grad is None, n
        assert any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for n, p in m.named_parameters()
                   if n.endswith(".bias"))
    else:
        assert frozen == []


def test_cached_latent_of_an_image_does_not_depend_on_its_batch(tiny_dir: Path) -> None:
    vae = FAMILY.load_vae(tiny_dir, "float32", torch.device("cpu"))
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(3, 64, 64, generator=g) * 2 - 1, torch.rand(3, 64, 64, generator=g) * 2 - 1
    together = FAMILY.encode_images(vae, torch.stack([a, b]), seeds=[11, 22])
    alone = FAMILY.encode_images(vae, a[None], seeds=[11])
    assert together.shape == (2, 4, 8, 8)
    assert torch.allclose(together[0], alone[0], atol=1e-5)
    assert not torch.allclose(FAMILY.encode_images(vae, a[None], seeds=[12])[0], alone[0])
