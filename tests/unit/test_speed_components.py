"""FP8 fallback, decode-ahead and T5 padding to the longest caption, on the CPU."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from runner.data.prefetch import decode_workers, prefetched
from runner.train.precision import apply_fp8, fp8_filter, fp8_problem


def test_fp8_falls_back_cleanly_where_unsupported() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(32, 32))
    assert fp8_problem(torch.device("cpu")) == "needs a CUDA GPU (device is cpu)"
    assert apply_fp8(model, torch.device("cpu"), "on") == "off (needs a CUDA GPU (device is cpu))"
    assert apply_fp8(model, torch.device("cpu"), "off") == "off"
    assert type(model[0]) is torch.nn.Linear
    with pytest.raises(ValueError, match="spec.training.fp8"):
        apply_fp8(model, torch.device("cpu"), "fast")


def test_fp8_filter_takes_block_linears_only() -> None:
    lin = torch.nn.Linear(1152, 4608)
    assert fp8_filter(lin, "transformer_blocks.3.ff.net.0.proj")
    assert fp8_filter(lin, "transformer_blocks.3.attn1.to_q")
    assert not fp8_filter(lin, "transformer_blocks.3.attn2.to_k")  # text tokens: too few rows
    assert not fp8_filter(lin, "caption_projection.linear_1")
    assert not fp8_filter(torch.nn.Linear(1152, 8), "transformer_blocks.0.x")
    assert not fp8_filter(torch.nn.LayerNorm(16), "transformer_blocks.0.norm1")


def test_prefetched_keeps_order_and_loads_ahead() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def load(x: int) -> int:
        with lock:
            started.append(x)
        time.sleep(0.01)
        return x * 10

    batches = [[1, 2], [3, 4], [5, 6], [7]]
    with ThreadPoolExecutor(4) as pool:
        stream = prefetched(batches, load, pool, depth=2)
        first = next(stream)
        assert first == ([1, 2], [10, 20])
        assert {3, 4, 5, 6} <= set(started)  # the next two batches were already submitted
        rest = list(stream)
    assert [b for b, _ in rest] == [[3, 4], [5, 6], [7]]
    assert [r for _, r in rest] == [[30, 40], [50, 60], [70]]
    assert 1 <= decode_workers() <= 16


def test_prefetched_raises_a_loader_error() -> None:
    def load(x: int) -> int:
        raise OSError("truncated")

    with ThreadPoolExecutor(2) as pool, pytest.raises(OSError, match="truncated"):
        list(prefetched([[1]], load, pool))


@pytest.mark.usefixtures("torch_single_thread")
def test_t5_padding_to_longest_gives_the_same_embeddings(tmp_path: Path) -> None:
    from runner.models.pixart_sigma import FAMILY
    from runner.models.tiny.pixart_sigma import build_tiny_pixart_sigma

    model_dir = build_tiny_pixart_sigma(tmp_path / "tiny")
    tokenizer, encoder = text_encoder = FAMILY.load_text_encoder(model_dir, "float32", torch.device("cpu"))
    captions = ["a cat", "a photo of a red fox in a snowy forest, morning light"]
    longest = FAMILY.encode_text(text_encoder, captions, 300)
    alone = [FAMILY.encode_text(text_encoder, [c], 300)[0] for c in captions]
    tokens = tokenizer(captions, max_length=300, padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():
        full = encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
    for i, e in enumerate(longest):
        n = int(tokens.attention_mask[i].sum())
        assert e.shape[0] == n
        torch.testing.assert_close(e, full[i, :n], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(e, alone[i], rtol=1e-4, atol=1e-5)
