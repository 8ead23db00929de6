"""The flash-attn-4 SM90 corrections (runner/models/fa4_sm90.py) on the CPU: which rounding the
postprocess gets, that the wrapper changes nothing else, and that it refuses an interface it was
not written for. The kernels themselves run only on a Hopper GPU (bench/fa4_check.py)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from runner.models.fa4_sm90 import install_postprocess_fix, postprocess_multiple, zeroed_key_grads


@pytest.mark.parametrize("arch, hdim, multiple, expected", [
    (90, 72, 32, 16),    # the kernel tiles 80, the caller said 96: the bug
    (90, 80, 32, 16),
    (90, 64, 32, 32),    # 64 and 96 round the same either way
    (90, 96, 32, 32),
    (90, 128, 32, 32),
    (90, 72, 64, 64),    # dKV_swapAB: the caller already uses the kernel's 64
    (90, 72, 16, 16),    # a release that passes 16 itself
    (100, 72, 32, 32),   # Blackwell's backward is another kernel
    (80, 72, 32, 32),
])
def test_postprocess_multiple(arch: int, hdim: int, multiple: int, expected: int) -> None:
    assert postprocess_multiple(arch, hdim, multiple) == expected


def _interface(calls: list):
    """A module with the 4.0.0b36 signature of _bwd_postprocess_convert, recording its calls."""
    def _bwd_postprocess_convert(accum, output, scale, cu_seqlens, seqused, arch, dtype, hdim, block_size,
                                 num_threads, atom_layout, swap_ab, use_2cta_instrs=False, cluster_size=1,
                                 cu_total_m_blocks=None, sink_tensors=None, hdim_multiple_of=32, accum_order=None,
                                 *, fake_mode):
        calls.append((arch, hdim, hdim_multiple_of, block_size, fake_mode))
        return "done"

    _bwd_postprocess_convert.compile_cache = {"kernel": 1}
    return SimpleNamespace(_bwd_postprocess_convert=_bwd_postprocess_convert)


def test_the_wrapper_passes_the_kernels_rounding_and_everything_else_unchanged() -> None:
    calls: list = []
    fa = _interface(calls)
    original = fa._bwd_postprocess_convert
    assert install_postprocess_fix(fa)
    assert fa._bwd_postprocess_convert is not original
    assert fa._bwd_postprocess_convert.compile_cache is original.compile_cache
    args = (None, None, 0.1, None, None)
    assert fa._bwd_postprocess_convert(*args, 90, "bf16", 72, 64, 256, 1, False, hdim_multiple_of=32,
                                       fake_mode=False) == "done"
    fa._bwd_postprocess_convert(*args, 90, "bf16", 96, 64, 256, 1, False, hdim_multiple_of=32, fake_mode=True)
    fa._bwd_postprocess_convert(*args, 100, "bf16", 72, 128, 128, 1, False, fake_mode=False)
    assert calls == [(90, 72, 16, 64, False), (90, 96, 32, 64, True), (100, 72, 32, 128, False)]
    # Installing twice wraps once.
    wrapped = fa._bwd_postprocess_convert
    assert install_postprocess_fix(fa) and fa._bwd_postprocess_convert is wrapped


def test_an_interface_with_another_signature_is_left_alone() -> None:
    def _bwd_postprocess_convert(accum, output, scale, arch, dtype, hdim, *, fake_mode):
        return None

    fa = SimpleNamespace(_bwd_postprocess_convert=_bwd_postprocess_convert)
    assert not install_postprocess_fix(fa)
    assert fa._bwd_postprocess_convert is _bwd_postprocess_convert
    assert not install_postprocess_fix(SimpleNamespace())


def test_zeroed_key_grads_only_with_key_counts() -> None:
    k, v = torch.full((2, 5, 1, 8), 3.0), torch.full((2, 5, 1, 4), 3.0)
    assert zeroed_key_grads(k, v, None) == {}
    grads = zeroed_key_grads(k, v, torch.tensor([3, 5], dtype=torch.int32))
    assert grads["dk"].shape == k.shape and grads["dv"].shape == v.shape
    assert not grads["dk"].any() and not grads["dv"].any()
