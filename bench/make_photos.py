"""A folder of N distinct JPEG photos (1024-1600 px) with caption files, offline.

Each image is a random crop, flip and colour shift of one of the scikit-image photos that
`type: samples` ships, saved as JPEG (quality 92), so the cache stage decodes real JPEGs of
about the size users have. Each `<stem>.txt` caption is a random sentence of 20-70 words,
which the bench pipeline's small offline tokenizer (about 2.7 tokens a word) turns into
55-190 tokens, 120 on average, like long descriptive captions under the real T5 tokenizer,
so the text encoder runs on realistic, varied lengths. (The 2026-11-29 results used 40-150
words: about 260 tokens on average, most capped at 300.) Usage:
    python bench/make_photos.py OUT_DIR [N] [--aspects 1.0,1.33,0.75,1.78,0.56]
"""
from __future__ import annotations

import argparse
import random
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WORDS = ("a photo of the red old small large bright dark wooden stone metal glass green blue golden "
         "street market forest mountain river lake city house window door table chair cup coffee cat dog "
         "bird flower tree sky cloud sun moon night morning evening light shadow reflection portrait "
         "close-up wide-angle shot on film grain soft focus sharp detailed texture pattern surface wall "
         "floor road car bicycle boat train bridge tower garden field snow rain fog autumn summer winter "
         "spring people woman man child hands face eyes smile hat coat dress shoes bag book page text "
         "sign painting sculpture museum kitchen bread fruit apple orange lemon plate bowl knife").split()


def caption(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 70)))


def make_one(job: tuple[int, str, float, str]) -> None:
    import numpy as np
    from PIL import Image, ImageOps

    index, src, aspect, out = job
    rng = random.Random(index)
    image = Image.open(src).convert("RGB")
    long_side = rng.randint(1024, 1600)
    w, h = (long_side, round(long_side / aspect)) if aspect >= 1 else (round(long_side * aspect), long_side)
    scale = max(w / image.width, h / image.height) * rng.uniform(1.0, 1.3)
    image = image.resize((max(w, round(image.width * scale)), max(h, round(image.height * scale))), Image.BILINEAR)
    x, y = rng.randint(0, image.width - w), rng.randint(0, image.height - h)
    image = image.crop((x, y, x + w, y + h))
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    shift = np.array([rng.uniform(0.85, 1.15) for _ in range(3)], dtype=np.float32)
    image = Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) * shift, 0, 255).astype(np.uint8))
    stem = Path(out) / f"photo-{index:05d}"
    image.save(f"{stem}.jpg", format="JPEG", quality=92)
    Path(f"{stem}.txt").write_text(caption(rng) + "\n")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("n", type=int, nargs="?", default=1024)
    p.add_argument("--aspects", default="1.0", help="comma list of width/height ratios, used in turn")
    args = p.parse_args()
    from runner.data.samples import materialize_samples

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if len(list(out.glob("*.jpg"))) >= args.n:
        print(f"{out} holds {args.n} photos already")
        return
    sources = sorted(str(s) for s in materialize_samples(out.parent / (out.name + "-sources")).glob("*.png"))
    aspects = [float(a) for a in args.aspects.split(",")]
    jobs = [(i, sources[i % len(sources)], aspects[i % len(aspects)], str(out)) for i in range(args.n)]
    with ProcessPoolExecutor() as pool:
        list(pool.map(make_one, jobs, chunksize=16))
    print(f"wrote {args.n} photos with captions to {out}")


if __name__ == "__main__":
    main()
