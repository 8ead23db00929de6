"""Make the builtin tiny models' tokenizers: run once, and the files it writes ship in the package.

    python -m runner.models.tiny.make_tokenizers      # rewrites t5-vocab.json and clip-bpe.json

The tokenizers are learnt from a fixed English text (CORPUS) so that common prompt words are
single tokens: a T5 Unigram vocab for the tiny PixArt Sigma, byte-level BPE merges for the
tiny CLIP. Builds read the shipped files (runner.models.tiny.tokenizers), so no tokenizer is
trained at run time, and a test checks the files are what this script makes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from runner.models.tiny.tokenizers import CLIP_BPE_FILE, T5_VOCAB_FILE

T5_VOCAB_SIZE = 400  # target size of the trained Unigram vocab (incl. specials)
CLIP_BPE_MERGES = 400  # at most; merges of pairs seen at least twice

# A fixed English text covering typical captions: the tokenizers are trained
# on it so that common prompt words become single tokens.
CORPUS = """
a photo of a cat sitting on a windowsill in the sun
a photograph of an astronaut riding a horse on the moon
an astronaut floating in space next to a rocket, digital art
a cup of coffee on a wooden table, morning light, shallow depth of field
a pile of gold coins and silver coins on a black background
a rocket launching into the night sky with the moon behind it
a close up portrait of a dog wearing sunglasses, studio lighting
a painting of a mountain landscape with a lake and pine trees at sunset
a red sports car parked on a city street at night, neon lights, rain
a bowl of fresh fruit with apples, oranges, bananas and grapes
a cute corgi puppy playing in the grass in a park
an oil painting of a ship sailing on a stormy sea
a watercolor illustration of a fox in a snowy forest
a beautiful woman with long hair smiling, portrait photography
an old man reading a book in a cozy library with a fireplace
a futuristic city skyline with flying cars and tall glass towers
a bird sitting on a branch of a cherry blossom tree in spring
a plate of pasta with tomato sauce and basil, food photography
a small wooden house in the middle of a green field under a blue sky
a black and white photo of a street in paris with people walking
a robot playing chess against a child in a bright room
an anime girl with blue eyes and pink hair, highly detailed
a 3d render of a glass sphere on a white floor, soft shadows
a golden retriever running on the beach at sunrise with waves
a vintage camera on a desk next to a laptop and a notebook
a bear catching a fish in a river, wildlife photography
a castle on top of a hill surrounded by clouds, fantasy art
a macro shot of a bee on a yellow flower, high resolution
a slice of chocolate cake with strawberries on a white plate
a man in a suit standing in front of a modern building
a teddy bear on a skateboard in times square
an elephant walking across the desert under a hot sun
a lighthouse on a rocky coast during a storm with big waves
a neon sign that says open in a dark alley
a cozy bedroom with a large bed, plants and warm lamps
a green frog sitting on a lily pad in a pond
a bicycle leaning against a brick wall covered in ivy
a jar of honey with a wooden dipper, product photo
the milky way over a desert with cactus and stars, long exposure
a kitten and a puppy sleeping together on a soft blanket
a cyberpunk samurai with a glowing sword, cinematic, 4k
a pencil sketch of a horse, simple lines on white paper
a bowl of ramen with egg, pork and green onions
a traditional japanese temple with red gates in autumn
two people holding hands while walking on a beach at sunset
a white unicorn in a magical forest with glowing mushrooms
an airplane flying above the clouds, view from the window
a pizza with cheese, pepperoni and mushrooms on a table
a snowy mountain peak reflected in a calm blue lake
a sunflower field under a dramatic sky, wide angle, hdr
a latte art coffee in a white cup next to a croissant on a cafe table
ancient roman coins on a velvet cloth, museum photo of old coins
a photo of an astronaut drinking coffee on the moon next to a rocket
the quick brown fox jumps over the lazy dog
high quality, best quality, masterpiece, ultra realistic, sharp focus
low quality, blurry, ugly, deformed, bad anatomy, watermark, text
"""



def _corpus_lines() -> list[str]:
    return [line.strip() for line in CORPUS.strip().splitlines() if line.strip()]


def _ascii_alphabet() -> list[str]:
    return [chr(c) for c in range(33, 127)]


def t5_vocab() -> list[tuple[str, float]]:
    """A small Unigram vocab trained on :data:`CORPUS`, as ``(piece, score)`` pairs.

    ids 0/1/2 are ``<pad>``/``</s>``/``<unk>`` like the real T5 vocab; no
    ``<extra_id_*>`` sentinels.  Every printable ASCII character is in the
    vocab, so ASCII prompts never map to ``<unk>``.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import Unigram
    from tokenizers.trainers import UnigramTrainer

    specials = ["<pad>", "</s>", "<unk>"]
    tok = Tokenizer(Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    trainer = UnigramTrainer(
        vocab_size=T5_VOCAB_SIZE,
        special_tokens=specials,
        unk_token="<unk>",
        shrinking_factor=0.75,
        max_piece_length=16,
        n_sub_iterations=2,
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_lines(), trainer=trainer)
    trained = [(str(p), float(s)) for p, s in json.loads(tok.to_str())["model"]["vocab"]]
    if [p for p, _ in trained[:3]] != specials:
        raise RuntimeError(f"unexpected special-token layout in trained vocab: {trained[:3]}")
    # The trainer is multi-threaded: scores differ between runs in the last
    # bits and equal-score pieces come out in varying order.  Canonicalise
    # (round, then sort by score and piece) so builds are byte-identical.
    # Characters the EM step pruned are re-added by the trainer just below the
    # lowest score, 1e-4 apart in hash order: give them one common score.
    pieces = [(p, round(s, 4)) for p, s in trained[3:]]
    lowest = min(s for _, s in pieces)
    floor = round(round(lowest, 2) - 0.01, 2)
    pieces = [(p, floor if len(p) == 1 and s < lowest + 0.01 else s) for p, s in pieces]
    vocab = [(p, 0.0) for p in specials] + sorted(pieces, key=lambda ps: (-ps[1], ps[0]))
    # Make every printable ASCII character a piece (characters missing from the
    # corpus; the trainer's ``initial_alphabet`` would add them in hash order).
    present = {p for p, _ in vocab}
    min_score = min(s for _, s in vocab[3:]) if len(vocab) > 3 else 0.0
    for ch in ["▁"] + _ascii_alphabet():
        if ch not in present:
            vocab.append((ch, min_score - 1.0))
    return vocab


def clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE (``</w>`` end-of-word suffix) as ``(vocab, merges)``.

    The vocab holds the 256 byte-level characters with and without ``</w>``
    (so any text encodes without ``<unk>``), then the merges learned on
    :data:`CORPUS`, and ``<|startoftext|>``/``<|endoftext|>`` last, as in
    OpenAI's vocab.  The merges are learned here rather than with
    ``tokenizers.trainers.BpeTrainer``, whose tie-breaking between equally
    frequent pairs follows hash order and so differs from run to run.
    """
    from collections import Counter

    from tokenizers import Regex, normalizers, pre_tokenizers

    # Same normalizer / pre-tokenizer as transformers' CLIPTokenizer.
    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(
                    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
                ),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    word_freq: Counter[str] = Counter()
    for line in _corpus_lines():
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)):
            word_freq[word] += 1
    words = [(list(w[:-1]) + [w[-1] + "</w>"], n) for w, n in sorted(word_freq.items())]

    merges: list[tuple[str, str]] = []
    while len(merges) < CLIP_BPE_MERGES:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, n in words:
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best, count = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if count < 2:
            break
        merges.append(best)
        a, b = best
        for symbols, _ in words:
            i = 0
            while i < len(symbols) - 1:
                if symbols[i] == a and symbols[i + 1] == b:
                    symbols[i : i + 2] = [a + b]
                i += 1

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens: list[str] = alphabet + [c + "</w>" for c in alphabet]
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    return vocab, merges


def write(folder: Path) -> list[Path]:
    """Write both files into `folder`; returns their paths."""
    vocab, merges = clip_bpe()
    files = {T5_VOCAB_FILE: [list(piece) for piece in t5_vocab()],
             CLIP_BPE_FILE: {"vocab": vocab, "merges": [list(pair) for pair in merges]}}
    for name, data in files.items():
        # One entry per line: small diffs when the corpus changes, and still a few KB.
        lines = [json.dumps(item, ensure_ascii=False) for item in data] if isinstance(data, list) else None
        text = ("[\n" + ",\n".join(lines) + "\n]\n") if lines else json.dumps(data, ensure_ascii=False, indent=0) + "\n"
        (folder / name).write_text(text, encoding="utf-8")
    return [folder / name for name in files]


if __name__ == "__main__":
    for path in write(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent):
        print(f"wrote {path}")
