"""`make bench`: our train and cache stages beside the reference typical loop, on one GPU, in one
run; `make bench GPUS=2`: the same stages on one and on two GPUs of one host, in one run.

    python3 bench/bench.py [--phase all|prepare|measure] [--gpus 1|2] [--only ITEMS] [--reference DIR]
                           [--work DIR] [--steps N] [--deadline S] [--tiny]

prepare: a random-weight PixArt-Sigma-XL pipeline with the real-size T5-XXL encoder
         (bench/make_random_pixart.py --text-layers 24) and N captioned JPEG photos
         (bench/make_photos.py), under --work. Both steps skip what is already there.
measure, --gpus 1 (items, in order):
  reference  the reference typical loop (fp32 master + bf16 autocast + foreach AdamW, eager) at
             1024 px batch 8 and 512 px batch 32, which also measures the bf16 matmul peak;
  1024       `trainingjob run` (cache + train, spec defaults; bench/bench.yaml) at 1024 px batch 8:
             samples/s = median of the logged 10-step windows after step 20; the cache stage's
             rates from its timestamped progress lines;
  buckets    five aspect buckets x caption lengths through the compiled blocks: compile seconds
             and distinct shapes (bench/levers.py buckets);
  512        `trainingjob run` at 512 px batch 32.
measure, --gpus 2 (each item measures 1 GPU and 2 GPUs in this call, so a ratio never mixes calls):
  1024       the cache stage on a fresh cache (one shard per GPU) and training at 1024 px, batch 8
             per GPU, on 1 GPU, then on 2 (`trainingjob run` with gpusPerNode: 2, i.e. torchrun);
  512        training at 512 px, batch 32 per GPU, on 1 GPU (its cache stage first), then on 2;
  comm       all-reduce time per step on 2 GPUs at 1024 and 512 px (bench/ddp_comm.py);
  two-node   512 px on two "nodes" of one GPU each: two `trainingjob run` agents with nodes: 2,
             a c10d rendezvous on 127.0.0.1 and CUDA_VISIBLE_DEVICES=0 / 1, standing in for two pods;
  cache      the cache stage alone at 1024 px on a fresh cache, on 1 GPU, then on 2 (shorter than
             `1024`: no training).
  With --gpus 2 every `trainingjob run` compiles into an inductor cache of its own, so no run finds
  graphs another one compiled (a 2-GPU run's rank 0 would, on cuda:0, and its rank 1 would not).
  Rows carry `gpus` (and `nodes`); a 2-GPU row carries `gpus_1`, the 1-GPU figure of the same
  stage from this call, and `scaling` (2.0 is perfect).
Rows go to bench/results/<date>-<card>[-x2][-ITEMS].json (and $OUT, with the end of the log, when
set). Every step runs in its own process with a time limit, so a failing step leaves an error row
and the rest still run; --deadline S skips the steps that would end more than S s after the start.
--tiny: tiny models on the CPU (several processes talk through gloo), a smoke test of this script.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from rows import cache_rows, flops_per_sample, parse_run, with_scaling  # noqa: E402

ITEMS = {1: ("reference", "1024", "buckets", "512"), 2: ("1024", "512", "comm", "two-node", "cache")}
p = argparse.ArgumentParser()
p.add_argument("--phase", default="all", choices=["all", "prepare", "measure"])
p.add_argument("--gpus", type=int, default=1, choices=sorted(ITEMS))
p.add_argument("--only", default="", help="comma list of the items to measure (default: all of --gpus)")
p.add_argument("--reference", default=str(REPO / "bench" / "reference"))
p.add_argument("--work", default="/tmp/bench-work")
p.add_argument("--photos", type=int, default=2048)
p.add_argument("--steps", type=int, default=60)
p.add_argument("--deadline", type=float, default=0,
               help="seconds this whole run may take, prepare included (0: no limit); a step that would not end "
                    "in time is skipped")
p.add_argument("--tiny", action="store_true")
args = p.parse_args()
ONLY = [i for i in args.only.split(",") if i] or list(ITEMS[args.gpus])
if unknown := [i for i in ONLY if i not in ITEMS[args.gpus]]:
    p.error(f"--only {','.join(unknown)}: with --gpus {args.gpus} the items are {','.join(ITEMS[args.gpus])}")
WORK = Path(args.work)
WORK.mkdir(parents=True, exist_ok=True)
LOG = open(WORK / "bench.log", "a")
T0 = time.time()
PY = sys.executable
WARM_STEPS = min(20, args.steps // 3)  # windows up to here hold the compile and first steps
ENV = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
    [str(REPO)] + [x for x in os.environ.get("PYTHONPATH", "").split(os.pathsep) if x]))
# NVLink multicast stays off, also in the processes started here: on this workplace's shared
# multi-GPU hosts a program that uses it can take the host's GPUs out of service.
for key, value in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"), ("NVSHMEM_DISABLE_NVLS", "1")):
    ENV.setdefault(key, value)
# Multi-process runs log NCCL's set-up, which names the transport of each channel (P2P, SHM, NET).
MULTI_ENV = dict(ENV, NCCL_DEBUG=ENV.get("NCCL_DEBUG", "INFO"))
TRAIN_CONFIG = ("trainingjob run, spec defaults (fp32 master, bf16 autocast, bf16 residual stream, fused AdamW, compiled blocks, "
                "model.attention auto)")
DEADLINE = T0 + args.deadline if args.deadline else 0.0  # absolute time every step must end by
# The 2-GPU bench caches from scratch at 1024 px on each GPU count, into folders of its own; the
# 512 px runs reuse the 1-GPU folder's text embeddings (only the latents change with resolution).
CACHE_1GPU = "cache" if args.gpus == 1 else "cache-g1"


def say(msg: str) -> None:
    line = f"[{time.time() - T0:6.1f}s] {msg}"
    print(line, flush=True)
    LOG.write(line + "\n")
    LOG.flush()


def run_together(name: str, procs: list[tuple[list[str], dict]], limit: int) -> list[list[tuple[float, str]]]:
    """Run the commands at once (each with its env), log their output; returns, per command,
    (seconds since start, line) pairs. All are killed at the time limit."""
    if DEADLINE:
        limit = int(min(limit, DEADLINE - time.time()))
        if limit < 20:
            say(f"== {name}: skipped, the deadline is near")
            return [[(0.0, "skipped: deadline")] for _ in procs]
    for cmd, _ in procs:
        say(f"== {name}: {' '.join(cmd)}")
    start = time.time()
    outputs: list[list[tuple[float, str]]] = [[] for _ in procs]
    started = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for cmd, env in procs]

    def pump(i: int) -> None:
        for line in started[i].stdout:
            line = line.rstrip()
            outputs[i].append((time.time() - start, line))
            if "Loading weights" not in line and "UserWarning" not in line:
                LOG.write(f"  {i}{outputs[i][-1][0]:7.1f} {line}\n")

    threads = [threading.Thread(target=pump, args=(i,), daemon=True) for i in range(len(procs))]
    for t in threads:
        t.start()
    for i, t in enumerate(threads):
        t.join(timeout=max(1.0, limit - (time.time() - start)))
        if t.is_alive():
            for proc in started:
                proc.kill()
            outputs[i].append((time.time() - start, f"KILLED after {limit}s"))
    for proc in started:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    LOG.flush()
    say(f"   {name}: exit {[proc.returncode for proc in started]} after {time.time() - start:.0f}s")
    return outputs


def run(name: str, cmd: list[str], limit: int, env: dict | None = None) -> list[tuple[float, str]]:
    return run_together(name, [(cmd, env or ENV)], limit)[0]


# ----------------------------------------------------------------------------- prepare

def prepare() -> None:
    if not args.tiny:
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


def trainingjob(res: int, batch: int, tag: str, *, gpus: int = 1, nodes: int = 1, stage: str = "all",
                cache: str = CACHE_1GPU, fresh_cache: bool = False) -> dict:
    """One `trainingjob run` (with nodes > 1: one agent per node, each seeing one GPU), parsed."""
    out = WORK / f"out-{tag}"
    shutil.rmtree(out, ignore_errors=True)  # a finished job in it would make the run a no-op
    if fresh_cache:
        shutil.rmtree(WORK / cache, ignore_errors=True)
    sets = {"spec.model.pretrained": str(WORK / "pixart"), "spec.datasets.0.path": str(WORK / "photos"),
            "spec.datasets.0.resolution": 1.0 if res == 1024 else 0.25, "spec.cacheDir": str(WORK / cache),
            "spec.training.batchSize": batch, "spec.training.maxSteps": args.steps, "spec.output.dir": str(out),
            "spec.hardware.gpusPerNode": gpus, "spec.hardware.nodes": nodes}
    if args.tiny:
        sets.update({"spec.model.pretrained": "builtin:tiny-pixart-sigma", "spec.hardware.accelerator": "cpu",
                     "spec.datasets.0.resolution": 0.0625 if res == 1024 else 0.015625})
    cmd = [PY, "-m", "runner", "run", "bench/bench.yaml", "--stage", stage]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    name, limit = f"trainingjob run {res} px batch {batch} on {gpus * nodes} GPU(s), stage {stage}", 420
    own = {"TORCHINDUCTOR_CACHE_DIR": str(WORK / f"inductor-{tag}")} if args.gpus > 1 else {}
    if own:
        shutil.rmtree(own["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)  # cold, also in a second call
    if nodes == 1:
        return parse_run(run(name, cmd, limit, dict(MULTI_ENV if gpus > 1 else ENV, **own)), WARM_STEPS)
    port, run_id = str(free_port()), uuid.uuid4().hex
    pods = [(cmd, dict(MULTI_ENV, **own, JOB_COMPLETION_INDEX=str(i), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                       POD_IP="127.0.0.1", TRAININGJOB_RUN_ID=run_id,
                       **({} if args.tiny else {"CUDA_VISIBLE_DEVICES": str(i)})))
            for i in range(nodes)]
    logs = run_together(name + f" as {nodes} nodes", pods, limit)
    got = parse_run(logs[0], WARM_STEPS)  # node 0 holds global rank 0, which logs for the group
    got.setdefault("errors", []).extend(parse_run(logs[1], WARM_STEPS).get("errors", []))
    return got


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def comm(res: int, batch: int, base: dict) -> dict:
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "bench/ddp_comm.py",
           "--res", str(res), "--batch", str(batch)] + (["--tiny", "--steps", "3"] if args.tiny else [])
    lines = run(f"all-reduce per step at {res} px", cmd, 300, MULTI_ENV)
    found = [json.loads(line.split("DDP_COMM ", 1)[1]) for _, line in lines if "DDP_COMM " in line]
    errors = [line[:300] for _, line in lines if "Traceback" in line or "Error" in line][:3]
    return dict(base, gpus=2,
                stage="train: all-reduce per step (DDP comm hook around the default all-reduce, bench/ddp_comm.py)", **(found[0] if found else {"resolution": res, "batch": batch, "errors": errors}))


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
    info, ref = reference() if "reference" in ONLY else ({}, {})
    peak = info.get("matmul_bf16_8192_TFLOPs")
    base = dict(card=card, torch=torch.__version__, matmul_peak_tflops=round(peak, 1) if peak else None)
    rows: list[dict] = []
    b1024, b512 = (2, 2) if args.tiny else (8, 32)  # images per GPU per step

    def train_row(res, batch, config, sps, peak_gib, gpus=1, **extra):
        b = ref.get(res, {}).get("samples_per_s")
        mfu = round(sps / gpus * flops_per_sample(res) / 1e12 / peak, 3) if sps and peak else None
        return dict(base, stage="train", resolution=res, config=config, batch=batch, gpus=gpus,
                    samples_per_s=round(sps, 2) if sps else None, mfu=mfu, peak_gib=peak_gib,
                    baseline_samples_per_s=round(b, 2) if b and gpus == 1 else None,
                    speedup=round(sps / b, 3) if sps and b and gpus == 1 else None, **extra)

    def stage_row(res, batch, got, gpus=1, **extra):
        if gpus > 1 or extra.get("nodes", 1) > 1:
            extra.update(ddp=got.get("ddp"), nccl_transports=got["transports"])
        return train_row(res, batch, TRAIN_CONFIG, got["samples_per_s"], got.get("peak_gib"), gpus,
                         attention=got.get("attention"), windows=got["windows"], errors=got.get("errors", [])[:3],
                         **extra)

    for res, r in sorted(ref.items(), reverse=True):
        rows.append(train_row(res, r["bs"], "reference typical loop: fp32 master + bf16 autocast + foreach AdamW, eager",
                              r["samples_per_s"], round(r.get("peak_alloc_GiB", 0), 1)))
    for item in ONLY:
        if item == "buckets" and (bk := buckets()) is not None:
            rows.append(train_row(1024, bk["batch"], f"{bk['buckets']} aspect buckets x {bk['text_lengths']} caption "
                                  f"lengths through the compiled blocks (compileDynamic: {str(bk['dynamic']).lower()})",
                                  bk["samples_per_s"], bk.get("peak_gib"), distinct_shapes=bk["distinct_shapes"],
                                  compile_s=bk["compile_s"], step_ms_by_bucket=bk["step_ms_by_bucket"],
                                  attention=bk.get("attention")))
        elif item == "1024":
            for gpus in ((1,) if args.gpus == 1 else (1, 2)):
                cache = CACHE_1GPU if gpus == 1 else "cache-g2"
                got = trainingjob(1024, b1024, f"1024-g{gpus}", gpus=gpus, cache=cache, fresh_cache=args.gpus > 1)
                rows.append(stage_row(1024, b1024, got, gpus))
                rows += cache_rows(got, dict(base, resolution=1024, gpus=gpus))
        elif item == "512":
            got = trainingjob(512, b512, "512-g1")
            rows.append(stage_row(512, b512, got))
            if args.gpus > 1:  # the same cache: gpus do not enter its key
                rows.append(stage_row(512, b512, trainingjob(512, b512, "512-g2", gpus=2, stage="train"), gpus=2))
        elif item == "cache":
            for gpus in (1, 2):
                got = trainingjob(1024, b1024, f"cache-g{gpus}", gpus=gpus, cache=f"cache-only-g{gpus}",
                                  fresh_cache=True, stage="cache")
                rows += cache_rows(got, dict(base, resolution=1024, gpus=gpus, errors=got.get("errors", [])[:3]))
        elif item == "comm":
            rows += [comm(1024, b1024, base), comm(512, b512, base)]
        elif item == "two-node":
            trainingjob(512, b512, "512-cache", stage="cache")  # encodes nothing when the 512 item just ran
            rows.append(stage_row(512, b512, trainingjob(512, b512, "512-2nodes", nodes=2, stage="train"), gpus=2,
                                  nodes=2))
        rows = with_scaling(rows)
        write(rows, card)
    for r in rows:
        say(json.dumps({k: v for k, v in r.items() if k not in ("windows", "card", "torch")}))


def write(rows: list[dict], card: str) -> None:
    """The rows (after every item, so a run stopped part-way keeps what it measured) and, into
    $OUT, the end of the log beside them."""
    suffix = "" if args.gpus == 1 else f"-x{args.gpus}"
    if args.only:
        suffix += "-" + "-".join(ONLY)
    name = f"{datetime.date.today().isoformat()}-{re.sub(r'[^A-Za-z0-9]+', '-', card).strip('-').lower()}{suffix}"
    home = WORK if args.tiny else REPO / "bench" / "results"  # a CPU smoke run is no result
    for folder in [home] + ([Path(os.environ["OUT"])] if os.environ.get("OUT") else []):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")
    if os.environ.get("OUT"):  # the device tool brings back files of up to 16 MiB
        LOG.flush()
        (Path(os.environ["OUT"]) / f"{name}.log").write_bytes((WORK / "bench.log").read_bytes()[-8 * 2**20:])


if __name__ == "__main__":
    if args.phase in ("all", "prepare"):
        prepare()
    if args.phase in ("all", "measure"):
        measure()
    say("done")
