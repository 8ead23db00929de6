"""The builtin tiny models' tokenizers, read from the files that ship in this folder
(made once by make_tokenizers.py): nothing is trained at run time.

``T5Tokenizer`` in transformers 5 is the ``tokenizers``-backed class (``T5TokenizerFast`` is
an alias) and takes ``vocab=[(piece, score), ...]``. Give it ``extra_ids=0``: the default (100)
appends ``<extra_id_*>`` added tokens after the vocab (396 -> 496 ids here). It saves
``tokenizer.json`` (no ``spiece.model``) and loads back with ``T5Tokenizer`` /
``AutoTokenizer``; size the T5 embedding with ``len(tokenizer)``.
"""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
T5_VOCAB_FILE = "t5-vocab.json"  # [[piece, score], ...]: a Unigram vocab, ids in order
CLIP_BPE_FILE = "clip-bpe.json"  # {"vocab": {token: id}, "merges": [[a, b], ...]}: byte-level BPE
T5_MAX_LENGTH = 300  # PixArt Sigma's max_sequence_length
CLIP_MAX_LENGTH = 77


def _read(name: str):
    return json.loads((HERE / name).read_text(encoding="utf-8"))


def t5_tokenizer():
    """A ``T5Tokenizer`` with the shipped Unigram vocab: ids 0/1/2 are ``<pad>``/``</s>``/``<unk>``
    like the real T5 vocab, no ``<extra_id_*>`` sentinels, every printable ASCII character a piece."""
    from transformers import T5Tokenizer

    vocab = [(piece, float(score)) for piece, score in _read(T5_VOCAB_FILE)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=T5_MAX_LENGTH)


def clip_tokenizer():
    """A ``CLIPTokenizer`` with the shipped byte-level BPE (``</w>`` end-of-word suffix)."""
    from transformers import CLIPTokenizer

    bpe = _read(CLIP_BPE_FILE)
    return CLIPTokenizer(vocab=bpe["vocab"], merges=[tuple(pair) for pair in bpe["merges"]],
                         model_max_length=CLIP_MAX_LENGTH)
