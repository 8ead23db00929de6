"""The bench's rows from logs: pure functions over `(seconds since start, line)` pairs, no I/O.

`bench/bench.py` runs the processes and writes the rows; everything here is testable on canned
lines (tests/unit/test_bench_rows.py). Lines of launched workers carry torchrun's `[rankN]: `
prefix; the launching process's own lines carry none.
"""
from __future__ import annotations

import re
import statistics
from collections import defaultdict

RANK = re.compile(r"\[rank(\d+)\]: ")
TRAIN = re.compile(r"train: (\d+)/\d+ step .* samples_s=([\d.]+)")
LATENTS = re.compile(r"latents: (\d+)/(\d+) image \(([\d.]+)")
TEXT = re.compile(r"text embeds: (\d+)/(\d+) caption \(([\d.]+)")
# NCCL_DEBUG=INFO names the transport of each channel, e.g. "... via P2P/CUMEM/read", "via SHM/direct/direct"
NCCL_VIA = re.compile(r"NCCL INFO Channel \S+ ?: .* via (\S+)")

VAE_STAGE = "cache: VAE encode (JPEG decode in worker processes, compiled channels-last bf16, writes overlapped)"
TEXT_STAGE = "cache: T5-XXL text encode (24 layers, length-sorted, padded to the longest)"
STEADY_STAGE = "cache: end to end steady (decode + resize + VAE + T5 + write, one caption per image)"
WHOLE_STAGE = "cache: whole stage wall clock (model loads and compile included)"


def segments(line: str) -> list[tuple[int | None, str]]:
    """`[rank1]: text` -> [(1, "text")]; a line of the launching process -> [(None, line)]. A
    progress bar redrawn with carriage returns and no newline leaves the next line glued to it
    (`[rank0]: Writing 0%|..|[rank0]: latents: ...`), so every rank prefix starts a segment."""
    out: list[tuple[int | None, str]] = []
    for part in line.split("\r"):
        pieces = RANK.split(part)  # [before, rank, text, rank, text, ...]
        if pieces[0] or len(pieces) == 1:
            out.append((None, pieces[0]))
        out += [(int(r), text) for r, text in zip(pieces[1::2], pieces[2::2])]
    return out


def parse_run(lines: list[tuple[float, str]], warm_steps: int = 20) -> dict:
    """Rates of one `trainingjob run` from its timestamped log (one process or several).
    samples_per_s: the median of the logged windows after `warm_steps` (compile and first
    steps excluded); the train stage logs the global rate (every rank's samples)."""
    got: dict = {"windows": [], "latent_lines": [], "text_lines": [], "transports": []}
    stage_s: dict = {}
    for t, raw in lines:
        for rank, line in segments(raw):
            _parse_line(got, stage_s, t, rank, line, raw)
    # the launching process times the whole stage; with one process that is the only line
    if stage_s:
        got["cache_stage_s"] = stage_s.get(None, max(stage_s.values()))
    late = [s for step, s in got["windows"] if step > warm_steps]
    got["samples_per_s"] = statistics.median(late) if late else None
    return got


def _parse_line(got: dict, stage_s: dict, t: float, rank: int | None, line: str, raw: str) -> None:
    """One segment of one log line into `got` (stage_s: `cache stage done` seconds by rank)."""
    if "NCCL INFO" in line:  # set-up chatter (NCCL_DEBUG=INFO); only the channels' transports matter
        if (m := NCCL_VIA.search(line)) and m.group(1) not in got["transports"]:
            got["transports"].append(m.group(1))
    elif m := TRAIN.search(line):
        got["windows"].append((int(m.group(1)), float(m.group(2))))
    elif m := LATENTS.match(line):
        got["latent_lines"].append((t, int(m.group(1)), int(m.group(2)), float(m.group(3)), rank))
    elif m := TEXT.match(line):
        got["text_lines"].append((t, int(m.group(1)), int(m.group(2)), float(m.group(3)), rank))
    elif m := re.search(r"encoding (\d+) image\(s\) with the VAE", line):
        got.setdefault("vae_start", t)  # the first: a sharded run's final pass says it again (0 to do)
    elif m := re.search(r"cache stage done in ([\d.]+)s", line):
        stage_s[rank] = float(m.group(1))
    elif m := re.search(r"peak GPU memory: ([\d.]+) GiB", line):
        got["peak_gib"] = float(m.group(1))
    elif m := re.search(r"attention kernels: (.*)", line):
        got["attention"] = m.group(1)
    elif "data parallel: " in line:
        got["ddp"] = line.split("data parallel: ", 1)[1]
    elif "Traceback" in line or "Error" in line or "NCCL WARN" in line:
        got.setdefault("errors", []).append(raw[:300])


def _by_rank(rows: list[tuple]) -> dict:
    out: dict = defaultdict(list)
    for row in rows:
        out[row[-1]].append(row)
    return out


def cache_rows(got: dict, common: dict) -> list[dict]:
    """The cache stage's rows. With several workers, each encoding its own shard, a rate is all
    the entries they encoded over the time from the first one's start to the last one's end:
    the sum of their rates only where they really ran at the same time, less where one waited
    (a cold compile on its GPU) while the other worked."""
    rows = []
    lat = [lines for lines in _by_rank(got["latent_lines"]).values() if len(lines) >= 2]
    # a steady rate needs two lines per worker: the first (compile behind it) and the last
    vae_rate = None
    if lat:
        start, end = min(lines[0][0] for lines in lat), max(lines[-1][0] for lines in lat)
        vae_rate = sum(lines[-1][1] - lines[0][1] for lines in lat) / max(end - start, 1e-9)
        rows.append(dict(common, stage=VAE_STAGE, images=sum(lines[-1][2] for lines in lat),
                         images_per_s=round(vae_rate, 1), first_line_s=round(start - got.get("vae_start", start), 1)))
    txt = list(_by_rank(got["text_lines"]).values())
    # each bar starts after its T5 loads, so its last line is that worker's encode + write rate;
    # its start is its end less its captions over that rate
    text_rate = None
    if txt:
        ends = [(lines[-1][0], lines[-1][2], lines[-1][3]) for lines in txt]
        start, end = min(t - n / max(r, 1e-9) for t, n, r in ends), max(t for t, _, _ in ends)
        text_rate = sum(n for _, n, _ in ends) / max(end - start, 1e-9)
        rows.append(dict(common, stage=TEXT_STAGE, images=sum(n for _, n, _ in ends), images_per_s=round(text_rate, 1)))
    if vae_rate and text_rate:
        rows.append(dict(common, stage=STEADY_STAGE, images_per_s=round(1 / (1 / vae_rate + 1 / text_rate), 1)))
    if got.get("cache_stage_s") and got["latent_lines"]:
        total = sum(lines[-1][2] for lines in _by_rank(got["latent_lines"]).values())
        rows.append(dict(common, stage=WHOLE_STAGE, images=total, images_per_s=round(total / got["cache_stage_s"], 1),
                         stage_s=got["cache_stage_s"]))
    return rows


def rate(row: dict) -> float | None:
    return row.get("samples_per_s") or row.get("images_per_s")


def with_scaling(rows: list[dict]) -> list[dict]:
    """Each row with gpus > 1 gets the 1-GPU figure of the same stage, resolution and batch from
    the same call (`gpus_1`) and the ratio (`scaling`; 2.0 is perfect for 2 GPUs)."""
    key = lambda r: (r.get("stage"), r.get("resolution"), r.get("batch"), r.get("config"))  # noqa: E731
    single = {key(r): r for r in rows if r.get("gpus", 1) == 1 and r.get("nodes", 1) == 1}
    out = []
    for r in rows:
        base = single.get(key(r)) if r.get("gpus", 1) > 1 else None
        if base is not None and rate(base) and rate(r):
            r = dict(r, gpus_1=rate(base), scaling=round(rate(r) / rate(base), 3))
        out.append(r)
    return out


def flops_per_sample(res: int, t: int = 300) -> float:
    """Matmul FLOPs of one training sample (3 x forward) of PixArt-Sigma-XL, as the reference counts them."""
    d, n, c, layers = 1152, (res // 16) ** 2, 4096, 28
    per_layer = (8 * n * d * d + 4 * n * n * d + 4 * n * d * d + 4 * t * d * d + 4 * n * t * d + 16 * n * d * d)
    return 3 * (layers * per_layer + 2 * t * (c * d + d * d) + 2 * n * 16 * d + 2 * n * d * 32)


def comm_summary(steps: list[dict]) -> dict:
    """One row from per-step all-reduce timings (bench/ddp_comm.py), medians over the steps.
    Each step: step_ms, backward_ms, spans = [(ready_ms, done_ms)] per bucket, relative to the
    step's start: ready when the bucket's last gradient exists, done when its all-reduce ends."""
    def median(f):
        return round(statistics.median(f(s) for s in steps), 2)

    return {"step_ms": median(lambda s: s["step_ms"]), "backward_ms": median(lambda s: s["backward_ms"]),
            "allreduce_busy_ms": median(lambda s: busy(s["spans"])),
            "allreduce_exposed_ms": median(lambda s: exposed(s["spans"])),
            "buckets": median(lambda s: len(s["spans"]))}


def busy(spans: list[tuple[float, float]]) -> float:
    """Time at least one bucket's all-reduce was in flight (the union of the spans)."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def exposed(spans: list[tuple[float, float]]) -> float:
    """Communication the step waits for after the backward pass has computed its last gradient:
    from the last bucket ready to the last all-reduce done (0 when fully overlapped)."""
    if not spans:
        return 0.0
    return max(0.0, max(b for _, b in spans) - max(a for a, _ in spans))
