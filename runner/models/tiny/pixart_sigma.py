"""Offline builders of tiny, real-architecture models (random weights).

The smoke job and the tests load these through exactly the same
``from_pretrained`` code paths as the real checkpoints, so nothing here may be
"fake": every component is the real diffusers / transformers class, only with
tiny dimensions and random weights.  Nothing is downloaded.

Two builtins exist:

``builtin:tiny-pixart-sigma``
    A diffusers ``PixArtSigmaPipeline`` directory shaped like
    ``PixArt-alpha/PixArt-Sigma-XL-2-1024-MS`` (T5 encoder + SDXL-style VAE with
    x8 downscale + ``PixArtTransformer2DModel`` with learned sigma + DPM-Solver++
    scheduler), about 1 MB on disk.

``builtin:tiny-clip``
    A ``CLIPModel`` plus ``CLIPProcessor`` (byte-level BPE tokenizer and
    ``CLIPImageProcessor``) loadable with ``CLIPModel.from_pretrained`` /
    ``CLIPProcessor.from_pretrained`` / ``AutoProcessor.from_pretrained``.
    Its weights are random, so its scores measure nothing: its image and text
    embeddings each cluster around one direction, and the built-in seed puts
    them more than 90 degrees apart, so it scores 0 for nearly every pair.

Builds are deterministic for a given seed (the global torch RNG state of the
caller is left untouched), idempotent and safe against concurrent callers:
each build is written into a temporary directory next to ``dest`` and moved
into place with a single ``os.rename``; the directory is only considered
complete when it holds the :data:`MARKER` file, which is written last.

Gotchas (diffusers 0.42.1 / transformers 5.24):

* ``PixArtSigmaPipeline.__call__`` defaults to ``use_resolution_binning=True``
  which only supports ``transformer.config.sample_size`` in {32, 64, 128, 256}
  (else ``ValueError: Invalid sample size``) and snaps height/width to the
  aspect-ratio bins of that size (32 -> 256 px bins).  Pass
  ``use_resolution_binning=False`` to get exactly the requested size (height
  and width must then be multiples of 16 = vae x8 * patch 2).
* ``clean_caption=True`` (the pipeline default) needs ``bs4`` and ``ftfy``;
  without them it only logs a warning.  Pass ``clean_caption=False``.
* The scheduler is saved with ``variance_type=None`` like the real
  checkpoint.  With ``variance_type="learned_range"`` DPM-Solver slices the
  model output along channels itself and the pipeline (which already drops
  the learned-sigma half of the 8 output channels) crashes.
  ``DDPMScheduler.from_pretrained(path, subfolder="scheduler")`` works on the
  saved config (cross-class ``from_config``); its ``variance_type`` is then
  ``None``, which ``DDPMScheduler`` treats like ``"fixed_small"``.
* Validating from precomputed embeddings (``text_encoder=None,
  tokenizer=None`` passed to ``from_pretrained``) requires passing
  ``prompt=None, negative_prompt=None`` explicitly: ``negative_prompt``
  defaults to ``""`` and ``check_inputs`` raises ``ValueError: Cannot forward
  both `negative_prompt`:  and `negative_prompt_embeds`: ...``.
* ``T5Tokenizer`` in transformers 5 is the ``tokenizers``-backed class
  (``T5TokenizerFast`` is an alias) and takes ``vocab=[(piece, score), ...]``.
  Give it ``extra_ids=0``: the default (100) appends ``<extra_id_*>`` added
  tokens after the vocab (396 -> 496 ids here).  It saves ``tokenizer.json``
  (no ``spiece.model``) and loads back with ``T5Tokenizer`` /
  ``AutoTokenizer``; size the T5 embedding with ``len(tokenizer)``.
* Without torchvision, ``CLIPImageProcessor`` logs "requires torchvision (not
  installed); falling back to `CLIPImageProcessorPil`" - harmless.
  ``CLIPProcessor.save_pretrained`` in transformers 5 embeds the image
  processor config in ``processor_config.json``; we also write a standalone
  ``preprocessor_config.json`` so ``CLIPImageProcessor.from_pretrained`` and
  older transformers find it.
* ``CLIPModel.get_text_features`` / ``get_image_features`` return a
  ``BaseModelOutputWithPooling`` in transformers 5 (a tensor in 4.x); the
  projected embedding is its ``pooler_output``.
* ``CLIPTextConfig.eos_token_id`` must be the tokenizer's real ``<|endoftext|>``
  id: with the legacy value 2 the text pooler takes the argmax token id
  instead of the first EOS position.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Callable, Iterator

from runner.files import build_dir_once

__all__ = [
    "BUILTIN_PREFIX",
    "BUILTINS",
    "MARKER",
    "build_tiny_clip",
    "build_tiny_pixart_sigma",
    "is_builtin",
    "resolve_builtin",
]

BUILTIN_PREFIX = "builtin:"
#: Written last into a finished build; a directory without it is incomplete.
MARKER = ".tiny-build.json"
#: Bump when a recipe changes: cached builds with an older version are rebuilt.
#: 2: the tiny CLIP is the plain seeded CLIPModel (version 1 flipped its visual projection).
BUILD_VERSION = 2

# Sizes (kept in one place so tests and docs can refer to them).
T5_MAX_LENGTH = 300  # PixArt Sigma's max_sequence_length
T5_VOCAB_SIZE = 400  # target size of the trained Unigram vocab (incl. specials)
CLIP_IMAGE_SIZE = 32
CLIP_MAX_LENGTH = 77
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


# --------------------------------------------------------------------------- #
# builtin name resolution
# --------------------------------------------------------------------------- #


def is_builtin(ref: str) -> bool:
    """True when ``ref`` names a builtin model (``builtin:<name>``)."""
    return isinstance(ref, str) and ref.startswith(BUILTIN_PREFIX)


def resolve_builtin(name: str, cache_dir: Path) -> Path:
    """Map ``builtin:<name>`` (or the bare ``<name>``) to a built directory.

    The model is built under ``cache_dir/builtin/<name>`` on first use and
    reused afterwards.  Unknown names raise ``ValueError`` listing the known
    ones.
    """
    key = name[len(BUILTIN_PREFIX):] if is_builtin(name) else name
    builder = BUILTINS.get(key)
    if builder is None:
        known = ", ".join(BUILTIN_PREFIX + k for k in sorted(BUILTINS))
        raise ValueError(f"unknown builtin model {name!r}; known builtins: {known}")
    return builder(Path(cache_dir) / "builtin" / key)


# --------------------------------------------------------------------------- #
# atomic, idempotent directory builds
# --------------------------------------------------------------------------- #


def _is_complete(dest: Path, required: str) -> bool:
    marker = dest / MARKER
    if not (marker.is_file() and (dest / required).is_file()):
        return False
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return int(meta.get("version", 0)) >= BUILD_VERSION


def _atomic_build(
    dest: Path,
    *,
    kind: str,
    seed: int,
    required: str,
    build: Callable[[Path], None],
) -> Path:
    """Run ``build(tmp)`` in a temp dir next to ``dest`` and rename it into place.

    If ``dest`` is already complete it is returned untouched.  When several
    processes race, exactly one rename wins; the losers discard their temp
    directory and return the winner's ``dest``.
    """
    def fill(tmp: Path) -> None:
        build(tmp)
        _make_readable(tmp)
        (tmp / MARKER).write_text(
            json.dumps({"builder": kind, "version": BUILD_VERSION, "seed": seed}, indent=2) + "\n"
        )

    # A stale dest (an older BUILD_VERSION, or a folder made by hand) is replaced.
    return build_dir_once(Path(dest), fill, lambda d: _is_complete(d, required))


def _make_readable(root: Path) -> None:
    """Give the build normal permissions (mkdtemp makes 0700; some writers 0600).

    The cache directory may be shared by containers running as other uids.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o755 & ~umask)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755 & ~umask)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644 & ~umask)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global CPU RNG inside, restoring the caller's state after."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# --------------------------------------------------------------------------- #
# tokenizers
# --------------------------------------------------------------------------- #


def _corpus_lines() -> list[str]:
    return [line.strip() for line in CORPUS.strip().splitlines() if line.strip()]


def _ascii_alphabet() -> list[str]:
    return [chr(c) for c in range(33, 127)]


def build_t5_tokenizer():
    """A ``T5Tokenizer`` with a small Unigram vocab trained on :data:`CORPUS`.

    ids 0/1/2 are ``<pad>``/``</s>``/``<unk>`` like the real T5 vocab; no
    ``<extra_id_*>`` sentinels.  Every printable ASCII character is in the
    vocab, so ASCII prompts never map to ``<unk>``.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import Unigram
    from tokenizers.trainers import UnigramTrainer
    from transformers import T5Tokenizer

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
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=T5_MAX_LENGTH)


def build_clip_tokenizer():
    """A ``CLIPTokenizer`` (byte-level BPE, ``</w>`` end-of-word suffix).

    The vocab holds the 256 byte-level characters with and without ``</w>``
    (so any text encodes without ``<unk>``), then the merges learned on
    :data:`CORPUS`, and ``<|startoftext|>``/``<|endoftext|>`` last, as in
    OpenAI's vocab.  The merges are learned here rather than with
    ``tokenizers.trainers.BpeTrainer``, whose tie-breaking between equally
    frequent pairs follows hash order and so differs from run to run.
    """
    from collections import Counter

    from tokenizers import Regex, normalizers, pre_tokenizers
    from transformers import CLIPTokenizer

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
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_LENGTH)


# --------------------------------------------------------------------------- #
# tiny PixArt Sigma
# --------------------------------------------------------------------------- #


def _pixart_components(seed: int) -> dict:
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        PixArtTransformer2DModel,
    )
    from transformers import T5Config, T5EncoderModel

    tokenizer = build_t5_tokenizer()

    d_model = 32
    # Each component is seeded separately so that e.g. a vocab-size change does
    # not shift the transformer's weights.
    with _seeded(seed):
        text_encoder = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer),
                d_model=d_model,
                d_kv=16,
                d_ff=64,
                num_layers=2,
                num_heads=2,
                relative_attention_num_buckets=32,
                relative_attention_max_distance=128,
                dropout_rate=0.0,
                layer_norm_epsilon=1e-6,
                feed_forward_proj="gated-gelu",  # T5 v1.1 / T5-XXL
                tie_word_embeddings=False,
                is_encoder_decoder=False,
                use_cache=False,
                pad_token_id=0,
                eos_token_id=1,
                decoder_start_token_id=0,
            )
        ).eval()

    with _seeded(seed + 1):
        # SDXL-VAE shaped (PixArt Sigma uses it): 4 levels -> x8 downscale.
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=1,
            act_fn="silu",
            latent_channels=4,
            norm_num_groups=4,  # must divide every block_out_channels entry
            sample_size=128,
            scaling_factor=0.13025,
            force_upcast=True,
        ).eval()

    heads, head_dim = 2, 16
    with _seeded(seed + 2):
        transformer = PixArtTransformer2DModel(
            num_attention_heads=heads,
            attention_head_dim=head_dim,
            in_channels=4,
            out_channels=8,  # learned sigma
            num_layers=2,
            dropout=0.0,
            norm_num_groups=32,
            cross_attention_dim=heads * head_dim,
            attention_bias=True,
            sample_size=32,  # latent size; 32/64/128/256 for resolution binning
            patch_size=2,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            upcast_attention=False,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
            interpolation_scale=2,
            use_additional_conditions=False,
            caption_channels=d_model,
            attention_type="default",
        ).eval()

    # PixArt-Sigma-XL-2-1024-MS scheduler config.
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="epsilon",
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
        timestep_spacing="linspace",
        steps_offset=0,
        variance_type=None,
    )
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "vae": vae,
        "transformer": transformer,
        "scheduler": scheduler,
    }


def build_tiny_pixart_sigma(dest: Path, seed: int = 0) -> Path:
    """Build (once) a tiny PixArt-Sigma-shaped diffusers pipeline at ``dest``.

    Loads with ``PixArtSigmaPipeline.from_pretrained(dest)`` and per component
    (``subfolder=`` ``transformer``/``vae``/``text_encoder``/``tokenizer``/
    ``scheduler``).  Shapes: T5 encoder d_model 32 (= ``caption_channels``),
    300-token tokenizer; VAE with x8 downscale and 4 latent channels; 2-layer
    transformer with 2x16 heads, patch 2, 8 output channels (learned sigma),
    ``sample_size`` 32 (256 px default resolution).  See the module docstring
    for the pipeline call arguments it needs (``use_resolution_binning=False``,
    ``clean_caption=False``).
    """

    def build(tmp: Path) -> None:
        from diffusers import PixArtSigmaPipeline

        pipe = PixArtSigmaPipeline(**_pixart_components(seed))
        pipe.save_pretrained(tmp, safe_serialization=True)

    return _atomic_build(
        Path(dest), kind="tiny-pixart-sigma", seed=seed, required="model_index.json", build=build
    )


# --------------------------------------------------------------------------- #
# tiny CLIP
# --------------------------------------------------------------------------- #


def build_tiny_clip(dest: Path, seed: int = 0) -> Path:
    """Build (once) a tiny ``CLIPModel`` + ``CLIPProcessor`` at ``dest``.

    Loads with ``CLIPModel.from_pretrained(dest)`` and
    ``CLIPProcessor.from_pretrained(dest)`` / ``AutoProcessor``.  Images are
    resized/center-cropped to 32x32 (patch 8); text is truncated at 77 tokens.
    """

    def build(tmp: Path) -> None:
        from transformers import (
            CLIPConfig,
            CLIPImageProcessor,
            CLIPModel,
            CLIPProcessor,
            CLIPTextConfig,
            CLIPVisionConfig,
        )

        tokenizer = build_clip_tokenizer()
        text_config = CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            projection_dim=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=CLIP_MAX_LENGTH,
            hidden_act="quick_gelu",
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        vision_config = CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            projection_dim=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_channels=3,
            image_size=CLIP_IMAGE_SIZE,
            patch_size=8,
            hidden_act="quick_gelu",
        )
        config = CLIPConfig(
            text_config=text_config.to_dict(),
            vision_config=vision_config.to_dict(),
            projection_dim=16,
        )
        with _seeded(seed):
            model = CLIPModel(config).eval()
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": CLIP_IMAGE_SIZE},
            crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
            do_resize=True,
            do_center_crop=True,
            do_normalize=True,
            do_rescale=True,
            do_convert_rgb=True,
        )
        processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        image_processor.save_pretrained(tmp)  # standalone preprocessor_config.json

    return _atomic_build(
        Path(dest), kind="tiny-clip", seed=seed, required="config.json", build=build
    )


BUILTINS: dict[str, Callable[..., Path]] = {
    "tiny-pixart-sigma": build_tiny_pixart_sigma,
    "tiny-clip": build_tiny_clip,
}
