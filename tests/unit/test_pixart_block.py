"""spec.training.residualStream: PixArt's block with the residual stream in the autocast dtype
(runner/models/pixart_block.py), against diffusers' own BasicTransformerBlock; and the first
block's input settled so that compiled blocks share one graph."""
from __future__ import annotations

import copy

import pytest
import torch

from runner.models.pixart_block import bfloat16_residual_forward, settle_block_input, use_bfloat16_residual
from runner.models.pixart_sigma import FAMILY
from runner.spec.load import job_from_document
from runner.spec.parse import parse_document
from runner.train.loop import apply_speed_options
from tests.unit.tiny_pixart import inputs as _inputs, model as _model


def _block_output_dtypes(model, autocast: bool) -> list[torch.dtype]:
    seen = []
    hooks = [b.register_forward_hook(lambda m, a, out: seen.append(out.dtype)) for b in model.transformer_blocks]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model(**_inputs())
    for h in hooks:
        h.remove()
    return seen


def test_in_float32_it_is_diffusers_block_exactly() -> None:
    ours, theirs = _model(), _model()
    assert use_bfloat16_residual(ours) == 2
    out_ours, out_theirs = ours(**_inputs())[0], theirs(**_inputs())[0]
    assert torch.equal(out_ours, out_theirs)
    out_ours.square().mean().backward()
    out_theirs.square().mean().backward()
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert torch.equal(a.grad, b.grad), name


def test_under_bf16_autocast_the_residual_stream_is_bf16_and_the_output_close() -> None:
    ours, theirs = _model(), _model()
    use_bfloat16_residual(ours)
    assert _block_output_dtypes(theirs, autocast=True) == [torch.float32] * 2  # the fp32 table promotes the gates
    assert _block_output_dtypes(ours, autocast=True) == [torch.bfloat16] * 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = ours(**_inputs())[0].float(), theirs(**_inputs())[0].float()
    reference = _model()(**_inputs())[0]  # float32 throughout
    assert (a - reference).norm() / reference.norm() < 2e-2
    assert (b - reference).norm() / reference.norm() < 2e-2
    assert not torch.equal(a, b)  # it does change what autocast computes


def test_weights_and_state_dict_are_untouched() -> None:
    model = _model()
    before = copy.deepcopy(model.state_dict())
    use_bfloat16_residual(model)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) and after[k].dtype == torch.float32 for k in before)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_blocks_it_cannot_reproduce_keep_their_forward() -> None:
    model = _model(dropout=0.1)  # dropout in attention and feed-forward: not reproduced
    assert use_bfloat16_residual(model) == 0
    assert all("forward" not in vars(b) for b in model.transformer_blocks)


def _applied(model) -> list[bool]:
    return [getattr(vars(b).get("forward"), "__func__", None) is bfloat16_residual_forward
            for b in model.transformer_blocks]


def test_speed_options_apply_it_only_with_bf16_autocast_and_the_spec_asking() -> None:
    for mixed, stream, expected in [("bf16", "bfloat16", True), ("bf16", "float32", False),
                                    ("no", "bfloat16", False), ("fp16", "bfloat16", False)]:
        model = _model()
        spec = {"model": {"attention": "sdpa"}, "training": {"compile": False, "fp8": False,
                                                              "mixedPrecision": mixed, "residualStream": stream}}
        apply_speed_options(FAMILY, model, spec, torch.device("cpu"), lambda _msg: None)
        assert _applied(model) == [expected] * 2, (mixed, stream)


def test_the_schema_default_is_bfloat16(minimal_spec) -> None:
    job = job_from_document(parse_document(minimal_spec))
    assert job.spec.training.residualStream == "bfloat16"
    assert job.spec.training.mixedPrecision == "bf16"


def _unique_graphs(model, autocast: bool):
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    for block in model.transformer_blocks:
        block.compile(backend="eager")  # dynamo's graphs only: what the guards decide
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(**_inputs())[0]
    out.float().square().mean().backward()
    torch._dynamo.reset()
    return counters["stats"]["unique_graphs"], out


@pytest.mark.parametrize("bf16_stream, autocast, exact", [
    (True, True, True),
    (False, False, True),
    # CPU autocast runs layer_norm on a bf16 input in bf16, so block 0's first norm now sees
    # float32 there; CUDA autocast runs layer_norm in float32 anyway (ATen's autocast FP32
    # list), where the settled input gives the same result.
    (False, True, False),
])
def test_settled_first_block_input_makes_one_graph_for_all_blocks(bf16_stream, autocast, exact) -> None:
    plain, settled = _model(), _model()
    for m in (plain, settled):
        if bf16_stream:
            use_bfloat16_residual(m)
    assert settle_block_input(settled)
    graphs_plain, out_plain = _unique_graphs(plain, autocast)
    graphs_settled, out_settled = _unique_graphs(settled, autocast)
    assert graphs_plain == 2  # block 0's input differs from the others' in layout (and dtype)
    assert graphs_settled == 1
    if exact:
        assert torch.equal(out_plain, out_settled)
        for (name, a), (_, b) in zip(plain.named_parameters(), settled.named_parameters()):
            assert torch.equal(a.grad, b.grad), name
    else:
        a, b = out_plain.float(), out_settled.float()
        assert (a - b).norm() / b.norm() < 1e-2
