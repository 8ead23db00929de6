"""The attention fast path on the CPU: the custom ops with the reference kernels stand in for
flash-attn-4, so key-count masking, head padding, the backward, compile and the processor
are checked against SDPA here; the GPU kernels themselves are checked at start-up."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from runner.models import attention as attn

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(autouse=True)
def reference_kernels():
    attn.use_kernels(attn.reference_kernels())
    yield
    attn.use_kernels(None)


def _qkv(b=2, n=12, t=10, h=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, s, h, d, generator=g, requires_grad=True) for s in (n, t, t)]


def _sdpa(q, k, v, mask=None):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          attn_mask=mask, scale=q.shape[-1] ** -0.5).transpose(1, 2)


def test_padded_keys_equal_unpadded_attention() -> None:
    """Keys past seqused_k are ignored: the same as attending to the trimmed keys only."""
    q, k, v = _qkv(b=1, t=10)
    used = torch.tensor([6], dtype=torch.int32)
    padded = attn.attention(q, k, v, used, 8 ** -0.5)
    trimmed = attn.attention(q, k[:, :6], v[:, :6], None, 8 ** -0.5)
    torch.testing.assert_close(padded, trimmed, rtol=1e-5, atol=1e-6)
    k2 = k.detach().clone()
    k2[:, 6:] = 1e3  # whatever sits in the padding changes nothing
    torch.testing.assert_close(attn.attention(q, k2, v, used, 8 ** -0.5), padded, rtol=1e-5, atol=1e-6)


def test_output_and_gradients_match_sdpa_with_key_padding() -> None:
    q, k, v = _qkv()
    used = torch.tensor([4, 10], dtype=torch.int32)
    mask = (torch.arange(10)[None] < used[:, None].long())[:, None, None, :]
    out, ref = attn.attention(q, k, v, used, 8 ** -0.5), _sdpa(q, k, v, mask)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    go = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), go), torch.autograd.grad(ref, (q, k, v), go)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_backward_head_padding_is_exact() -> None:
    """Zero-padding the head dim in the backward (72 -> 96 on the GPU) changes no gradient."""
    q, k, v = _qkv(d=9)
    used = torch.tensor([4, 10], dtype=torch.int32)
    attn.use_kernels(dataclasses.replace(attn.reference_kernels(), bwd_head_dim=16))
    out = attn.attention(q, k, v, used, 9 ** -0.5)
    assert out.shape == q.shape
    mask = (torch.arange(10)[None] < used[:, None].long())[:, None, None, :]
    ref = _sdpa(q, k, v, mask)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    go = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), go), torch.autograd.grad(ref, (q, k, v), go)):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_compiled_matches_eager() -> None:
    q, k, v = _qkv()
    used = torch.tensor([3, 10], dtype=torch.int32)

    def f(q, k, v):
        return attn.attention(q, k, v, used, 8 ** -0.5).square().sum()

    eager = f(q, k, v)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(torch.autograd.grad(compiled, (q, k, v)), torch.autograd.grad(f(q, k, v), (q, k, v))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _packed(b=2, n=12, h=2, d=8, seed=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, 3 * h * d, generator=g, requires_grad=True)


def _packed_reference(qkv, h):
    b, n, _ = qkv.shape
    q, k, v = qkv.view(b, n, 3, h, -1).unbind(2)
    return _sdpa(q, k, v)


@pytest.mark.parametrize("bwd_head_dim", [None, 16])
@pytest.mark.parametrize("compiled", [False, True])
def test_packed_attention_matches_sdpa_with_one_gradient(bwd_head_dim, compiled) -> None:
    """Self-attention on one q|k|v tensor: SDPA's output, and SDPA's gradient reaching the
    q|k|v tensor as one tensor, also with the backward zero-padded and compiled."""
    attn.use_kernels(dataclasses.replace(attn.reference_kernels(), bwd_head_dim=bwd_head_dim))
    qkv = _packed()

    def f(x):
        return attn.packed_attention(x, 2, 8 ** -0.5)
    out = (torch.compile(f, fullgraph=True, backend="aot_eager") if compiled else f)(qkv)
    ref = _packed_reference(qkv, 2)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    go = torch.randn_like(out)
    (got,), (want,) = torch.autograd.grad(out, (qkv,), go), torch.autograd.grad(ref, (qkv,), go)
    assert got.shape == qkv.shape and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_packed_backward_hands_the_kernels_views_of_one_buffer() -> None:
    """A backward that writes into the buffers it is given (as flash-attn-4 does) fills the
    q|k|v gradient in place: three strided views of one tensor, nothing copied after."""
    good, seen = attn.reference_kernels(), []

    def writing_bwd(dout, q, k, v, out, lse, seqused_k, scale, into=None):
        grads = good.bwd(dout, q, k, v, out, lse, seqused_k, scale)
        if into is None:
            return grads
        seen.append(into)
        for buffer, g in zip(into, grads):
            buffer.copy_(g)
        return into

    attn.use_kernels(dataclasses.replace(good, bwd=writing_bwd))
    qkv = _packed()
    out = attn.packed_attention(qkv, 2, 8 ** -0.5)
    go = torch.randn_like(out)
    (got,) = torch.autograd.grad(out, (qkv,), go)
    (dq, dk, dv), = seen
    width = dq.shape[-2] * dq.shape[-1]
    assert [t.data_ptr() - dq.data_ptr() for t in (dq, dk, dv)] == [0, width * 4, 2 * width * 4]
    assert not dq.is_contiguous() and dq.stride()[:2] == (12 * 3 * width, 3 * width)
    torch.testing.assert_close(got, torch.autograd.grad(_packed_reference(qkv, 2), (qkv,), go)[0],
                               rtol=1e-4, atol=1e-5)


def test_check_turns_off_packed_ops_that_disagree_and_the_processor_still_matches() -> None:
    """A backward that is wrong only when writing into given buffers: the check keeps the
    kernels with `packed` off, and fused self-attention then takes the q, k, v ops."""
    good = attn.reference_kernels()

    def bad_into(dout, q, k, v, out, lse, seqused_k, scale, into=None):
        grads = good.bwd(dout, q, k, v, out, lse, seqused_k, scale)
        return grads if into is None else (grads[0], grads[1], grads[2] * 2)

    chosen = attn.checked_kernels(dataclasses.replace(good, bwd=bad_into), 8, torch.device("cpu"),
                                  dtype=torch.float32)
    assert chosen is not None and chosen.bwd_head_dim is None and chosen.key_padding and not chosen.packed
    assert attn.checked_kernels(good, 8, torch.device("cpu"), dtype=torch.float32).packed
    calls: list[str] = []

    def fwd(q, k, v, seqused_k, scale):
        calls.append("strided" if not q.is_contiguous() else "dense")
        return good.fwd(q, k, v, seqused_k, scale)

    g = torch.Generator().manual_seed(5)
    x, emb = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 6, 12, generator=g)
    kw = dict(encoder_hidden_states=emb, timestep=torch.tensor([10]), return_dict=False,
              added_cond_kwargs={"resolution": None, "aspect_ratio": None})
    grads = []
    for kernels in (None, dataclasses.replace(chosen, fwd=fwd)):
        attn.use_kernels(kernels)
        model = _tiny_transformer().train()
        attn.install_processor(model, fuse_qkv=True)
        model(x, **kw)[0].square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, want in grads[0].items():
        torch.testing.assert_close(grads[1][name], want, rtol=1e-4, atol=1e-6, msg=name)
    assert calls == ["strided", "dense", "strided", "dense"]  # fused self-attention on attn_fwd, then cross


def test_check_picks_the_first_right_backward_width_and_tests_key_padding() -> None:
    """Like flash-attn-4 4.0.0b36 on an H200: dQ wrong at an internal width of 80 (head_dim
    72 and 80), right at 96; key-padded backward wrong at every width."""
    good = attn.reference_kernels()

    def bad_bwd(dout, q, k, v, out, lse, seqused_k, scale, into=None):
        dq, dk, dv = good.bwd(dout, q, k, v, out, lse, seqused_k, scale)
        if seqused_k is not None:
            dk = dk.flip(1)
        return (dq.flip(1) if q.shape[-1] % 32 else dq), dk, dv

    broken = dataclasses.replace(good, name="broken", bwd=bad_bwd)
    cpu = torch.device("cpu")
    chosen = attn.checked_kernels(broken, 72, cpu, dtype=torch.float32)
    assert chosen is not None and chosen.bwd_head_dim == 96 and not chosen.key_padding
    fine = attn.checked_kernels(good, 72, cpu, dtype=torch.float32)
    assert fine.bwd_head_dim is None and fine.key_padding
    zero = dataclasses.replace(good, bwd=lambda *a, **kw: [x * 0 for x in good.bwd(*a)])
    assert attn.checked_kernels(zero, 72, cpu, dtype=torch.float32) is None
    assert attn.widths(72) == [72, 80, 96]
    assert attn.widths(64) == [64]


def test_processor_sends_masked_attention_to_sdpa_when_key_padding_is_off() -> None:
    calls: list[bool] = []
    good = attn.reference_kernels()

    def fwd(q, k, v, seqused_k, scale):
        calls.append(seqused_k is not None)
        return good.fwd(q, k, v, seqused_k, scale)

    attn.use_kernels(dataclasses.replace(good, fwd=fwd, key_padding=False))
    model = _tiny_transformer()
    attn.install_processor(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model(torch.randn(1, 4, 8, 8, generator=g), encoder_hidden_states=torch.randn(1, 6, 12, generator=g),
              encoder_attention_mask=torch.tensor([[1, 1, 1, 0, 0, 0]]), timestep=torch.tensor([10]),
              added_cond_kwargs={"resolution": None, "aspect_ratio": None})
    assert calls == [False, False]  # the two self-attentions; cross-attention went to SDPA


def _tiny_transformer():
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    return PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=16, sample_size=8, patch_size=2, norm_type="ada_norm_single", caption_channels=12,
        norm_elementwise_affine=False, norm_eps=1e-6, num_embeds_ada_norm=1000, use_additional_conditions=False,
        activation_fn="gelu-approximate", attention_bias=True, interpolation_scale=1).eval()


def test_processor_matches_diffusers_default() -> None:
    model = _tiny_transformer()
    g = torch.Generator().manual_seed(1)
    x, emb = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 6, 12, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    kw = dict(encoder_hidden_states=emb, encoder_attention_mask=mask, timestep=torch.tensor([10, 500]),
              added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)
    with torch.no_grad():
        want = model(x, **kw)[0]
        assert attn.install_processor(model) == 4  # self + cross in each of 2 blocks
        got = model(x, **kw)[0]
        attn.use_kernels(None)  # kernels off: the processor's own SDPA path
        fallback = model(x, **kw)[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fallback, want, rtol=1e-5, atol=1e-6)


def test_fused_qkv_matches_diffusers_forward_and_gradients() -> None:
    """One GEMM on the concatenated q/k/v weights: the same outputs and parameter gradients as
    diffusers' three projections, the q, k, v reaching the kernels as strided views, and the
    same parameters (the weights are concatenated per call, not replaced)."""
    g = torch.Generator().manual_seed(2)
    x, emb = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 6, 12, generator=g)
    kw = dict(encoder_hidden_states=emb, encoder_attention_mask=torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6]),
              timestep=torch.tensor([10, 500]), added_cond_kwargs={"resolution": None, "aspect_ratio": None},
              return_dict=False)
    strides: list[bool] = []
    good = attn.reference_kernels()

    def fwd(q, k, v, seqused_k, scale):
        strides.append(seqused_k is None and not q.is_contiguous())
        return good.fwd(q, k, v, seqused_k, scale)

    results = []
    for fuse in (False, True):
        attn.use_kernels(dataclasses.replace(good, fwd=fwd))
        model = _tiny_transformer().train()
        names = sorted(model.state_dict())
        assert attn.install_processor(model, fuse_qkv=fuse) == 4
        out = model(x, **kw)[0]
        out.square().mean().backward()
        assert sorted(model.state_dict()) == names
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (want, want_grads), (got, got_grads) = results
    assert strides == [False, False, False, False, True, False, True, False]  # self-attention, fused
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert got_grads.keys() == want_grads.keys()
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert any(".attn1.to_k." in n and want_grads[n].abs().sum() > 0 for n in want_grads)


def test_set_attention_installs_checked_kernels_with_fused_qkv(monkeypatch) -> None:
    """The path a GPU takes, with the reference kernels standing in for flash-attn-4: the kernels
    pass their check, every plain Attention gets the processor with self-attention's q/k/v fused,
    and the model computes what diffusers' own processors compute."""
    monkeypatch.setattr(attn, "fa4_problem", lambda device: None)
    monkeypatch.setattr(attn, "fa4_kernels", attn.reference_kernels)
    model = _tiny_transformer()
    g = torch.Generator().manual_seed(3)
    x, emb = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 6, 12, generator=g)
    kw = dict(encoder_hidden_states=emb, encoder_attention_mask=torch.tensor([[1, 1, 0, 0, 0, 0], [1] * 6]),
              timestep=torch.tensor([3, 700]), added_cond_kwargs={"resolution": None, "aspect_ratio": None},
              return_dict=False)
    with torch.no_grad():
        want = model(x, **kw)[0]
        used, why = attn.set_attention(model, "fa4", torch.device("cpu"))
        got = model(x, **kw)[0]
    assert why is None and used.startswith("reference (head_dim 8")
    processors = [m.processor for m in model.modules() if type(m).__name__ == "Attention"]
    assert len(processors) == 4 and all(isinstance(p, attn.FlashAttnProcessor) and p.fuse_qkv for p in processors)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_set_attention_checks_the_kernels_at_the_models_head_count(monkeypatch) -> None:
    """The start-up check runs at the model's own head count, so the packed views have the
    strides a training step gives the kernels."""
    from diffusers import PixArtTransformer2DModel

    seen: set[int] = set()
    good = attn.reference_kernels()

    def fwd(q, k, v, seqused_k, scale):
        seen.add(q.shape[2])
        return good.fwd(q, k, v, seqused_k, scale)

    monkeypatch.setattr(attn, "fa4_problem", lambda device: None)
    monkeypatch.setattr(attn, "fa4_kernels", lambda: dataclasses.replace(good, fwd=fwd))
    model = PixArtTransformer2DModel(
        num_attention_heads=3, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1,
        cross_attention_dim=24, sample_size=8, patch_size=2, norm_type="ada_norm_single", caption_channels=12,
        norm_elementwise_affine=False, norm_eps=1e-6, num_embeds_ada_norm=1000, use_additional_conditions=False,
        activation_fn="gelu-approximate", attention_bias=True, interpolation_scale=1)
    used, why = attn.set_attention(model, "fa4", torch.device("cpu"))
    assert why is None and used.startswith("reference (head_dim 8") and attn.ops.active().packed
    assert seen == {3}


def test_set_attention_falls_back_to_sdpa_on_cpu() -> None:
    model = _tiny_transformer()
    before = {type(m.processor).__name__ for m in model.modules() if hasattr(m, "processor")}
    for backend in ("auto", "fa4", "sdpa"):
        used, why = attn.set_attention(model, backend, torch.device("cpu"))
        assert used == "sdpa"
        assert (why is None) == (backend == "sdpa")
    assert {type(m.processor).__name__ for m in model.modules() if hasattr(m, "processor")} == before
    with pytest.raises(ValueError, match="spec.model.attention"):
        attn.set_attention(model, "xformers", torch.device("cpu"))


def test_speed_options_on_cpu_change_nothing(tmp_path: Path) -> None:
    from runner.models.pixart_sigma import FAMILY
    from runner.train.loop import apply_speed_options

    model = _tiny_transformer()
    logs: list[str] = []
    spec = {"model": {"attention": "auto"}, "training": {"compile": True, "compileDynamic": True, "fp8": True,
                                                     "mixedPrecision": "no", "residualStream": "bfloat16"}}
    apply_speed_options(FAMILY, model, spec, torch.device("cpu"), logs.append)
    assert not any(type(m).__name__ == "Float8Linear" for m in model.modules())
    assert all(not hasattr(b, "_compiled_call_impl") or b._compiled_call_impl is None for b in model.transformer_blocks)
    assert logs == ["fp8 linears: off (needs a CUDA GPU (device is cpu))"]
    logs.clear()
    spec["training"].update(fp8=False, mixedPrecision="fp16")
    apply_speed_options(FAMILY, _tiny_transformer(), spec, torch.device("cpu"), logs.append)
    assert logs == ["mixedPrecision fp16: no effect on the CPU, which has no fp16 autocast (accelerate trains in "
                    "float32 there); bf16 is the CPU's mixed precision"]
