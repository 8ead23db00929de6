"""`make bench`: our train and cache stages beside the reference typical loop, on one GPU, in one run.

    python3 bench/bench.py [--phase all|prepare|measure] [--reference DIR] [--work DIR] [--tiny]

prepare: a random-weight PixArt-Sigma-XL pipeline with the real-size T5-XXL encoder
         (bench/make_random_pixart.py --text-layers 24) and N captioned JPEG photos
         (bench/make_photos.py), under --work.
measure: 1. the reference typical loop (fp32 master + bf16 autocast + foreach AdamW, eager) at
            1024 px batch 8 and 512 px batch 32, which also measures the bf16 matmul peak;
         2. `trainingjob run` (cache + train, spec defaults) at 1024 px batch 8, then at 512 px
            batch 32 (bench/bench.yaml): samples/s = median of the logged 10-step windows after
            step 20; the cache stage's rates from its timestamped progress lines;
         3. five aspect buckets x three caption lengths through the compiled blocks: compile
            seconds and distinct shapes (bench/levers.py buckets).
Rows go to bench/results/<date>-<card>.json (and $OUT when set). Every step runs in its own
process with a time limit, so a failing step leaves an error row and the rest still run.
--tiny: tiny models on the CPU, a smoke test of this script.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
p = argparse.ArgumentParser()
p.add_argument("--phase", default="all", choices=["all", "prepare", "measure"])
p.add_argument("--reference", default=str(REPO / "bench" / "reference"))
p.add_argument("--work", default="/tmp/bench-work")
p.add_argument("--photos", type=int, default=2048)
p.add_argument("--steps", type=int, default=60)
p.add_argument("--deadline", type=float, default=0, help="seconds the measure phase may take in all (0: no limit)")
p.add_argument("--tiny", action="store_true")
args = p.parse_args()
WORK = Path(args.work)
WORK.mkdir(parents=True, exist_ok=True)
LOG = open(WORK / "bench.log", "a")
T0 = time.time()
PY = sys.executable
ENV = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
    [str(REPO)] + [x for x in os.environ.get("PYTHONPATH", "").split(os.pathsep) if x]))


DEADLINE = [0.0]  # absolute time the measure phase must end by


def say(msg: str) -> None:
    line = f"[{time.time() - T0:6.1f}s] {msg}"
    print(line, flush=True)
    LOG.write(line + "\n")
    LOG.flush()


def run(name: str, cmd: list[str], limit: int) -> list[tuple[float, str]]:
    """Run cmd, echo and log its output; returns (seconds since start, line) pairs."""
    if DEADLINE[0]:
        limit = int(min(limit, DEADLINE[0] - time.time()))
        if limit < 20:
            say(f"== {name}: skipped, the deadline is near")
            return [(0.0, "skipped: deadline")]
    say(f"== {name}: {' '.join(cmd)}")
    start, lines = time.time(), []
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            line = line.rstrip()
            lines.append((time.time() - start, line))
            if "Loading weights" not in line and "UserWarning" not in line:
                LOG.write(f"  {lines[-1][0]:7.1f} {line}\n")
            if time.time() - start > limit:
                proc.kill()
                lines.append((time.time() - start, f"KILLED after {limit}s"))
                break
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    LOG.flush()
    say(f"   {name}: exit {proc.returncode} after {time.time() - start:.0f}s")
    return lines


def flops_per_sample(res: int, t: int = 300) -> float:
    """Matmul FLOPs of one training sample (3 x forward) of PixArt-Sigma-XL, as the reference counts them."""
    d, n, c, layers = 1152, (res // 16) ** 2, 4096, 28
    per_layer = (8 * n * d * d + 4 * n * n * d + 4 * n * d * d + 4 * t * d * d + 4 * n * t * d + 16 * n * d * d)
    return 3 * (layers * per_layer + 2 * t * (c * d + d * d) + 2 * n * 16 * d + 2 * n * d * 32)


# ----------------------------------------------------------------------------- prepare

def prepare() -> None:
    if args.tiny:
        run("photos", [PY, "bench/make_photos.py", str(WORK / "photos"), str(args.photos)], 300)
        return
    run("pipeline", [PY, "bench/make_random_pixart.py", str(WORK / "pixart"), "--text-layers", "24"], 400)
    run("photos", [PY, "bench/make_photos.py", str(WORK / "photos"), str(args.photos)], 300)


# ----------------------------------------------------------------------------- measure

def reference() -> tuple[dict, dict]:
    out = WORK / "reference"
    out.mkdir(exist_ok=True)
    (out / "train_same.jsonl").unlink(missing_ok=True)
    cmd = [PY, str(Path(args.reference) / "bench_train.py"), "--group", "same", "--only", "a_fp32master_amp_foreach",
           "--out", str(out)] + (["--tiny"] if args.tiny else [])
    run("reference typical loop", cmd, 300)
    info, rows = {}, {}
    for line in (out / "train_same.jsonl").read_text().splitlines() if (out / "train_same.jsonl").exists() else []:
        rec = json.loads(line)
        if rec.get("kind") == "info":
            info = rec
        elif rec.get("kind") == "train" and rec.get("status") == "ok":
            rows[rec["res"]] = rec
    return info, rows


def parse_run(lines: list[tuple[float, str]]) -> dict:
    """Rates of one `trainingjob run` from its timestamped log."""
    got: dict = {"windows": [], "latent_lines": [], "text_lines": []}
    for t, line in lines:
        if m := re.search(r"train: (\d+)/\d+ step .* samples_s=([\d.]+)", line):
            got["windows"].append((int(m.group(1)), float(m.group(2))))
        elif m := re.match(r"latents: (\d+)/(\d+) image \(([\d.]+)", line):
            got["latent_lines"].append((t, int(m.group(1)), int(m.group(2)), float(m.group(3))))
        elif m := re.match(r"text embeds: (\d+)/(\d+) caption \(([\d.]+)", line):
            got["text_lines"].append((t, int(m.group(1)), int(m.group(2)), float(m.group(3))))
        elif m := re.search(r"encoding (\d+) image\(s\) with the VAE", line):
            got["vae_start"] = t
        elif m := re.search(r"cache stage done in ([\d.]+)s", line):
            got["cache_stage_s"] = float(m.group(1))
        elif m := re.search(r"peak GPU memory: ([\d.]+) GiB", line):
            got["peak_gib"] = float(m.group(1))
        elif m := re.search(r"attention kernels: (.*)", line):
            got["attention"] = m.group(1)
        elif "Traceback" in line or "Error" in line:
            got.setdefault("errors", []).append(line[:300])
    late = [s for step, s in got["windows"] if step > 20]
    got["samples_per_s"] = statistics.median(late) if late else None
    return got


def trainingjob(res: int, batch: int, tag: str) -> dict:
    sets = {"spec.model.pretrained": str(WORK / "pixart"), "spec.datasets.0.path": str(WORK / "photos"),
            "spec.datasets.0.resolution": 1.0 if res == 1024 else 0.25, "spec.cacheDir": str(WORK / "cache"),
            "spec.training.batchSize": batch, "spec.training.maxSteps": args.steps,
            "spec.output.dir": str(WORK / f"out-{tag}")}
    if args.tiny:
        sets.update({"spec.model.pretrained": "builtin:tiny-pixart-sigma", "spec.hardware.accelerator": "cpu",
                     "spec.datasets.0.resolution": 0.0625 if res == 1024 else 0.015625,
                     "spec.training.batchSize": 2})
    cmd = [PY, "-m", "runner", "run", "bench/bench.yaml"]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    return parse_run(run(f"trainingjob run {res} px batch {batch}", cmd, 420 if res == 1024 else 300))


def cache_rows(got: dict, common: dict) -> list[dict]:
    rows = []
    lat, txt = got["latent_lines"], got["text_lines"]
    if len(lat) >= 2:  # steady rate: from the first progress line (compile behind it) to the last
        (t1, c1, total, _), (t2, c2, _, _) = lat[0], lat[-1]
        vae_rate = (c2 - c1) / max(t2 - t1, 1e-9)
        rows.append(dict(common, stage="cache: VAE encode (JPEG decode ahead, compiled channels-last bf16, writes overlapped)",
                         images=total, images_per_s=round(vae_rate, 1),
                         first_line_s=round(t1 - got.get("vae_start", t1), 1)))
    else:
        vae_rate = None
    text_rate = txt[-1][3] if txt else None  # the bar starts after T5 loads: encode + write rate
    if text_rate:
        rows.append(dict(common, stage="cache: T5-XXL text encode (24 layers, length-sorted, padded to the longest)",
                         images=txt[-1][2], images_per_s=round(text_rate, 1)))
    if vae_rate and text_rate:
        rows.append(dict(common, stage="cache: end to end steady (decode + resize + VAE + T5 + write, one caption per image)",
                         images_per_s=round(1 / (1 / vae_rate + 1 / text_rate), 1)))
    if got.get("cache_stage_s") and lat:
        rows.append(dict(common, stage="cache: whole stage wall clock (model loads and compile included)",
                         images=lat[-1][2], images_per_s=round(lat[-1][2] / got["cache_stage_s"], 1),
                         stage_s=got["cache_stage_s"]))
    return rows


def buckets() -> dict | None:
    out = WORK / "levers"
    out.mkdir(exist_ok=True)
    (out / "levers.jsonl").unlink(missing_ok=True)
    cmd = [PY, "bench/levers.py", "buckets", "--out", str(out)] + (["--tiny", "--batch", "2"] if args.tiny else [])
    run("five buckets", cmd, 300)
    for line in (out / "levers.jsonl").read_text().splitlines() if (out / "levers.jsonl").exists() else []:
        rec = json.loads(line)
        if rec.get("kind") == "buckets":
            return rec
    return None


def measure() -> None:
    import torch

    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    DEADLINE[0] = time.time() + args.deadline if args.deadline else 0.0
    info, ref = reference()
    peak = info.get("matmul_bf16_8192_TFLOPs")
    base = dict(card=card, torch=torch.__version__, matmul_peak_tflops=round(peak, 1) if peak else None)
    rows = []

    def train_row(res, batch, config, sps, peak_gib, **extra):
        b = ref.get(res, {}).get("samples_per_s")
        mfu = round(sps * flops_per_sample(res) / 1e12 / peak, 3) if sps and peak else None
        return dict(base, stage="train", resolution=res, config=config, batch=batch,
                    samples_per_s=round(sps, 2) if sps else None, mfu=mfu, peak_gib=peak_gib,
                    baseline_samples_per_s=round(b, 2) if b else None,
                    speedup=round(sps / b, 3) if sps and b else None, **extra)

    for res, r in sorted(ref.items(), reverse=True):
        rows.append(train_row(res, r["bs"], "reference typical loop: fp32 master + bf16 autocast + foreach AdamW, eager",
                              r["samples_per_s"], round(r.get("peak_alloc_GiB", 0), 1)))
    for res, batch in ((1024, 8), (0, 0), (512, 32)):
        if res == 0:  # the bucket test before 512 px: it answers a target, 512 px only checks a second size
            if (bk := buckets()) is not None:
                rows.append(train_row(1024, bk["batch"], f"{bk['buckets']} aspect buckets x {bk['text_lengths']} caption "
                                      f"lengths through the compiled blocks (compileDynamic: {str(bk['dynamic']).lower()})",
                                      bk["samples_per_s"], bk.get("peak_gib"), distinct_shapes=bk["distinct_shapes"],
                                      compile_s=bk["compile_s"], step_ms_by_bucket=bk["step_ms_by_bucket"],
                                      attention=bk.get("attention")))
            continue
        got = trainingjob(res, batch, str(res))
        rows.append(train_row(res, batch, "trainingjob run, spec defaults (fp32 master, bf16 autocast, fused AdamW, "
                              "compiled blocks, model.attention auto)", got["samples_per_s"], got.get("peak_gib"),
                              attention=got.get("attention"), windows=got["windows"], errors=got.get("errors", [])[:3]))
        if res == 1024:
            rows += cache_rows(got, dict(base, resolution=1024))
        write(rows, card)
    write(rows, card)
    for r in rows:
        say(json.dumps({k: v for k, v in r.items() if k not in ("windows", "card", "torch")}))


def write(rows: list[dict], card: str) -> None:
    name = f"{datetime.date.today().isoformat()}-{re.sub(r'[^A-Za-z0-9]+', '-', card).strip('-').lower()}.json"
    home = WORK if args.tiny else REPO / "bench" / "results"  # a CPU smoke run is no result
    for folder in [home] + ([Path(os.environ["OUT"])] if os.environ.get("OUT") else []):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    if args.phase in ("all", "prepare"):
        prepare()
    if args.phase in ("all", "measure"):
        measure()
    say("done")
