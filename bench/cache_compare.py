"""Compare two caches of the same data entry by entry: one written on 1 GPU, one on several.

    python bench/cache_compare.py CACHE_1GPU CACHE_NGPU [--shards N] [--out FILE]

Both caches are content-keyed, so an entry has the same path in each. For every entry of the
second cache this loads both files and records the relative error of each tensor (max |a - b|
over max |a|), grouped by the shard that encoded it on several GPUs (the key's first 8 hex
digits modulo N, as runner/cache/stage.py's Shard). Encoding is seeded, so the two differ only
by bf16 rounding (other batch compositions pick other kernels); an entry copied to the host
before its GPU work ended would differ wholesale (relative error near 1 or above).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from safetensors.torch import load_file

CORRUPT = 0.25  # relative error above which an entry is not rounding noise


def compare(one: Path, many: Path, shards: int) -> dict:
    per_shard: dict[int, list[float]] = {}
    missing, worst = [], []
    for path in sorted(many.rglob("*.safetensors")):
        twin = one / path.relative_to(many)
        if not twin.is_file():
            missing.append(str(path.relative_to(many)))
            continue
        a, b = load_file(str(twin)), load_file(str(path))
        err = 0.0
        for name, ta in a.items():
            ta, tb = ta.float(), b[name].float()
            if ta.shape != tb.shape:
                err = float("inf")
                break
            err = max(err, float((ta - tb).abs().max() / ta.abs().max().clamp_min(1e-12)))
        shard = int(path.stem[:8], 16) % shards
        per_shard.setdefault(shard, []).append(err)
        if err > CORRUPT:
            worst.append((str(path.relative_to(many)), shard, err))
    return {
        "compared": sum(len(v) for v in per_shard.values()), "missing_in_first": len(missing),
        "corrupt_threshold": CORRUPT,
        "shards": {f"{s + 1}/{shards}": {"entries": len(v), "median_rel_err": round(statistics.median(v), 5),
                                         "max_rel_err": round(max(v), 5), "over_threshold": sum(e > CORRUPT for e in v)}
                   for s, v in sorted(per_shard.items())},
        "over_threshold_examples": worst[:5],
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("one", type=Path)
    p.add_argument("many", type=Path)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    for d in (args.one, args.many):
        if not d.is_dir():
            print(f"cache_compare: {d} is not a folder", file=sys.stderr)
            return 2
    result = compare(args.one, args.many, args.shards)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 1 if any(s["over_threshold"] for s in result["shards"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
