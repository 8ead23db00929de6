"""spec.model.feedForward on the CPU: a plain-PyTorch kernel stands in for quack's fused GEMMs,
so the forward's plumbing (casts, shapes, gradients back to the float32 parameters, compile),
the start-up check and the fallbacks are checked against diffusers' FeedForward here; the GPU
kernels themselves are checked at start-up (and in bench/mlp.py)."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from diffusers.models.attention import FeedForward

from runner.models import feedforward as ffn
from tests.unit.tiny_pixart import inputs, model

pytestmark = pytest.mark.usefixtures("torch_single_thread")
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def no_kernel():
    yield
    ffn.use_kernel(None)


@pytest.mark.parametrize("build, fusable", [
    (lambda: FeedForward(16, activation_fn="gelu-approximate"), True),  # PixArt's
    (lambda: FeedForward(16, activation_fn="gelu"), False),  # exact GELU: the kernels compute tanh's
    (lambda: FeedForward(16, activation_fn="geglu"), False),
    (lambda: FeedForward(16, activation_fn="gelu-approximate", dropout=0.1), False),
    (lambda: FeedForward(12, activation_fn="gelu-approximate", mult=3), False),  # 12 is no multiple of 8
    (lambda: FeedForward(16, activation_fn="gelu-approximate", final_dropout=True), False),
    (lambda: torch.nn.Linear(16, 16), False),
])
def test_which_feed_forwards_are_fused(build, fusable) -> None:
    assert ffn.fusable(build()) is fusable


def _run(transformer, autocast: bool = False):
    for p in transformer.parameters():
        p.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = transformer(**inputs())[0]
    out.float().square().mean().backward()
    return out.detach().float(), {n: p.grad for n, p in transformer.named_parameters()}


def test_fused_forward_computes_diffusers_feed_forward_and_its_gradients() -> None:
    """Whole transformer, float32: the same output and the same gradient for every parameter,
    with the same parameters and state dict (the forward is swapped, not the module)."""
    ours, theirs = model(), model()
    names = list(ours.state_dict())
    ffn.use_kernel(ffn.reference_kernel())
    assert ffn.install(ours) == 2
    (got, got_grads), (want, want_grads) = _run(ours), _run(theirs)
    assert list(ours.state_dict()) == names
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert got_grads.keys() == want_grads.keys()
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert want_grads["transformer_blocks.0.ff.net.2.bias"].abs().sum() > 0


def test_kernel_gets_compute_dtype_flat_contiguous_input_and_grads_reach_float32_weights() -> None:
    seen = []
    reference = ffn.reference_kernel()

    def spy(x, w1, w2, bias1, bias2):
        seen.append((x.dim(), x.is_contiguous(), {t.dtype for t in (x, w1, w2, bias1, bias2)}))
        return reference.mlp(x, w1, w2, bias1, bias2)
    ffn.use_kernel(dataclasses.replace(reference, mlp=spy))
    ours, theirs = model(), model()
    ffn.install(ours)
    (got, grads), (want, _) = _run(ours, autocast=True), _run(theirs, autocast=True)
    assert seen == [(2, True, {torch.bfloat16})] * 2
    assert all(g.dtype == torch.float32 for g in grads.values())
    assert (got - want).norm() / want.norm() < 2e-2


def test_inputs_the_kernel_does_not_take_go_through_diffusers_forward() -> None:
    calls = []
    reference = ffn.reference_kernel()
    ffn.use_kernel(dataclasses.replace(reference, accepts=lambda x, dtype: calls.append(dtype) or False))
    ours, theirs = model(), model()
    ffn.install(ours)
    with torch.no_grad():
        assert torch.equal(ours(**inputs())[0], theirs(**inputs())[0])
    assert calls == [torch.float32] * 2
    ffn.use_kernel(None)  # no kernel at all: diffusers' forward too
    with torch.no_grad():
        assert torch.equal(ours(**inputs())[0], theirs(**inputs())[0])


def test_compiled_block_with_fused_forward_matches_eager() -> None:
    ffn.use_kernel(ffn.reference_kernel())
    ours = model()
    ffn.install(ours)
    compiled = copy.deepcopy(ours)
    compiled.transformer_blocks[0].compile(backend="aot_eager", fullgraph=True)
    (got, got_grads), (want, want_grads) = _run(compiled), _run(ours)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_set_feed_forward_installs_kernels_that_agree() -> None:
    transformer = model()
    used, why = ffn.set_feed_forward(transformer, "fused", CPU, kernel=ffn.reference_kernel())
    assert (used, why) == ("fused GELU GEMMs (reference) in 2 blocks", None)
    assert all(vars(b.ff).get("forward") is not None for b in transformer.transformer_blocks)


@pytest.mark.parametrize("broken, names", [
    (lambda x, w1, w2, b1, b2: torch.nn.functional.linear(
        torch.nn.functional.gelu(torch.nn.functional.linear(x, w1, b1), approximate="tanh"), w2), "output differs"),
    (lambda x, w1, w2, b1, b2: torch.nn.functional.linear(x, w1, b1)[:, :w2.shape[0]] * float("nan"), "not finite"),
    (lambda x, w1, w2, b1, b2: torch.full((x.shape[0], w2.shape[0]), 0.0), "raised RuntimeError"),  # no grad_fn
])
def test_set_feed_forward_refuses_kernels_that_disagree(broken, names) -> None:
    """A kernel that drops the second bias, returns NaN or fails is not installed: diffusers'
    forward stays, and the reason says what went wrong."""
    transformer = model()
    kernel = ffn.MLPKernel("broken", broken, lambda x, dtype: True)
    used, why = ffn.set_feed_forward(transformer, "auto", CPU, kernel=kernel)
    assert used == "diffusers" and why.startswith("broken kernels disagree with diffusers' feed-forward")
    assert names in why
    assert all("forward" not in vars(b.ff) for b in transformer.transformer_blocks)
    assert ffn._ACTIVE is None


def test_set_feed_forward_on_the_cpu_keeps_diffusers() -> None:
    transformer = model()
    for choice in ("auto", "fused", "diffusers"):
        used, why = ffn.set_feed_forward(transformer, choice, CPU)
        assert used == "diffusers"
        assert (why is None) == (choice == "diffusers")
        if why:
            assert why == "needs a CUDA GPU (device is cpu)"
    assert all("forward" not in vars(b.ff) for b in transformer.transformer_blocks)
    with pytest.raises(ValueError, match="spec.model.feedForward"):
        ffn.set_feed_forward(transformer, "quack", CPU)


def test_speed_options_say_why_a_requested_fused_feed_forward_is_not_used() -> None:
    from runner.models.pixart_sigma import FAMILY
    from runner.train.loop import apply_speed_options

    logs: list[str] = []
    spec = {"model": {"attention": "sdpa", "feedForward": "fused"},
            "training": {"compile": False, "fp8": False, "mixedPrecision": "bf16", "residualStream": "float32"}}
    apply_speed_options(FAMILY, model(), spec, CPU, logs.append)
    assert logs == ["feed-forward: diffusers (needs a CUDA GPU (device is cpu))"]


def test_with_fp8_auto_leaves_the_feed_forward_to_fp8(monkeypatch) -> None:
    from runner.models.pixart_sigma import FAMILY
    from runner.train.loop import apply_speed_options

    calls = []
    monkeypatch.setattr(type(FAMILY), "set_feed_forward", lambda self, *a: calls.append(a) or ("diffusers", None))
    spec = {"model": {"attention": "sdpa", "feedForward": "auto"},
            "training": {"compile": False, "fp8": True, "mixedPrecision": "bf16", "residualStream": "float32"}}
    apply_speed_options(FAMILY, model(), spec, CPU, lambda line: None)
    assert calls == []
    spec["training"]["fp8"] = False
    apply_speed_options(FAMILY, model(), spec, CPU, lambda line: None)
    assert [a[1] for a in calls] == ["auto"]
