"""PixArt Sigma model helpers on the tiny builtin: padding, pixels, the training objective, BitFit."""
from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from PIL import Image  # noqa: E402

from runner.models.pixart_sigma import (  # noqa: E402
    Objective,
    image_to_tensor,
    load_noise_scheduler,
    load_transformer,
    make_objective,
    pad_embeddings,
)
from runner.models.tiny import build_tiny_pixart_sigma  # noqa: E402


pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pixart_sigma(tmp_path_factory.mktemp("pixart-family") / "tiny")


@pytest.fixture(scope="module")
def model(tiny_dir: Path):
    return load_transformer(tiny_dir, bit_fit=False, gradient_checkpointing=False)


@pytest.fixture(scope="module")
def objective(tiny_dir: Path, model) -> Objective:
    return make_objective(tiny_dir, model)


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


# ----------------------------------------------------------------------------- pad_embeddings

@pytest.mark.parametrize("lengths, dim", [([1], 4), ([2, 5, 3], 8), ([6, 6], 3), ([1, 300], 2)])
def test_pad_embeddings(lengths: list[int], dim: int) -> None:
    embeds = [torch.arange(n * dim, dtype=torch.float32).reshape(n, dim) + 1 for n in lengths]
    out, mask = pad_embeddings(embeds)
    assert out.shape == (len(lengths), max(lengths), dim) and out.dtype == torch.float32
    assert mask.shape == (len(lengths), max(lengths)) and mask.dtype == torch.long
    for i, (e, n) in enumerate(zip(embeds, lengths)):
        assert torch.equal(out[i, :n], e)
        assert torch.count_nonzero(out[i, n:]) == 0
        assert int(mask[i].sum()) == n and mask[i, :n].all()


@pytest.mark.parametrize("lengths,multiple,expected", [([3, 5], 1, 5), ([3, 5], 4, 8), ([64], 64, 64), ([65, 1], 64, 128)])
def test_pad_embeddings_rounds_length_up(lengths, multiple, expected) -> None:
    out, mask = pad_embeddings([torch.ones(n, 4) for n in lengths], multiple=multiple)
    assert out.shape == (len(lengths), expected, 4)
    assert mask.sum(dim=1).tolist() == lengths
    assert float(out[mask == 0].abs().sum()) == 0.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_pad_embeddings_keeps_dtype(dtype) -> None:
    out, _ = pad_embeddings([torch.ones(2, 3, dtype=dtype), torch.ones(1, 3, dtype=dtype)])
    assert out.dtype == dtype


# ----------------------------------------------------------------------------- image_to_tensor

@pytest.mark.parametrize("mode, size, fill, expected", [
    ("RGB", (16, 8), (0, 0, 0), -1.0),
    ("RGB", (8, 24), (255, 255, 255), 1.0),
    ("L", (10, 6), 255, 1.0),
    ("RGBA", (4, 4), (0, 0, 0, 0), -1.0),
])
def test_image_to_tensor_constant(mode: str, size: tuple[int, int], fill, expected: float) -> None:
    t = image_to_tensor(Image.new(mode, size, fill))
    w, h = size
    assert t.shape == (3, h, w) and t.dtype == torch.float32
    assert torch.allclose(t, torch.full_like(t, expected))


def test_image_to_tensor_channels_and_range() -> None:
    img = Image.new("RGB", (5, 3))
    img.putpixel((0, 0), (255, 0, 128))
    img.putpixel((4, 2), (10, 200, 30))
    t = image_to_tensor(img)
    assert t.shape == (3, 3, 5)
    assert t.min() >= -1.0 and t.max() <= 1.0
    assert t[:, 0, 0].tolist() == pytest.approx([1.0, -1.0, 128 / 127.5 - 1], abs=1e-6)
    assert t[:, 2, 4].tolist() == pytest.approx([10 / 127.5 - 1, 200 / 127.5 - 1, 30 / 127.5 - 1], abs=1e-6)
    assert t.is_contiguous()


# ----------------------------------------------------------------------------- Objective

def test_objective_scheduler_from_pipeline(tiny_dir: Path, objective: Objective) -> None:
    sched = load_noise_scheduler(tiny_dir)
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


def test_objective_v_prediction_target(tiny_dir: Path, model) -> None:
    from diffusers import DDPMScheduler

    eps = make_objective(tiny_dir, model)
    v_sched = DDPMScheduler.from_config({**eps.scheduler.config, "prediction_type": "v_prediction"})
    v = Objective(scheduler=v_sched, use_additional_conditions=False)
    with torch.no_grad():
        a, b = _loss(eps, model, seed=1).item(), _loss(v, model, seed=1).item()
    assert a != b and torch.isfinite(torch.tensor(b))


# ----------------------------------------------------------------------------- BitFit

@pytest.mark.parametrize("bit_fit", [True, False])
def test_bit_fit_trainable_params(tiny_dir: Path, bit_fit: bool) -> None:
    m = load_transformer(tiny_dir, bit_fit=bit_fit, gradient_checkpointing=False)
    assert m.training
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    frozen = [n for n, p in m.named_parameters() if not p.requires_grad]
    assert trainable
    if bit_fit:
        assert all(n.endswith(".bias") for n in trainable)
        assert all(not n.endswith(".bias") for n in frozen)
        assert any(n.endswith(".weight") for n in frozen)
        # Gradients flow only into biases.
        obj = make_objective(tiny_dir, m)
        _loss(obj, m).backward()
        for n, p in m.named_parameters():
            if not p.requires_grad:
                assert p.grad is None, n
        assert any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for n, p in m.named_parameters()
                   if n.endswith(".bias"))
    else:
        assert frozen == []


def test_cached_latent_of_an_image_does_not_depend_on_its_batch(tiny_dir: Path) -> None:
    from runner.models.pixart_sigma import encode_images, load_vae

    vae = load_vae(tiny_dir, "float32", torch.device("cpu"))
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(3, 64, 64, generator=g) * 2 - 1, torch.rand(3, 64, 64, generator=g) * 2 - 1
    together = encode_images(vae, torch.stack([a, b]), seeds=[11, 22])
    alone = encode_images(vae, a[None], seeds=[11])
    assert together.shape == (2, 4, 8, 8)
    assert torch.allclose(together[0], alone[0], atol=1e-5)
    assert not torch.allclose(encode_images(vae, a[None], seeds=[12])[0], alone[0])
