#!/usr/bin/env bash
# The GPU memory gauges on a real GPU: a short `trainingjob run` of the builtin tiny pipeline on
# 32 JPEGs with /metrics served, scraped every second while it runs. Writes $OUT/metrics-gpu.txt
# (each scrape's trainingjob_gpu_*, step, loss and stage lines), $OUT/nvidia-smi.txt (the memory
# the driver reports in use each second: an independent upper bound for the gauges) and
# $OUT/metrics-gpu-run.log (the run's log).
#   bash bench/metrics_gpu.sh [extra `runner run` --set arguments]
set -eo pipefail
OUT=${OUT:-/tmp/metrics-gpu}
work=/tmp/metrics-gpu-work
port=${PORT:-9464}
mkdir -p "$OUT" "$work"
python3 bench/make_photos.py "$work/photos" 32 >/dev/null
python3 - "$port" "$OUT/metrics-gpu.txt" <<'PY' &
import sys, time, urllib.request
port, path = sys.argv[1], sys.argv[2]
with open(path, "w") as out:
    for _ in range(240):
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        except OSError:
            time.sleep(1)
            continue
        keep = [l for l in text.splitlines() if l.startswith(
            ("trainingjob_gpu_", "trainingjob_train_steps_total", "trainingjob_train_loss", "trainingjob_stage"))]
        out.write(f"# scrape at {time.time():.1f}\n" + "\n".join(keep) + "\n")
        out.flush()
        time.sleep(1)
PY
scraper=$!
smi=
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -l 1 >"$OUT/nvidia-smi.txt" &
  smi=$!
fi
python3 -m runner run bench/bench.yaml --stage all --set spec.model.pretrained=builtin:tiny-pixart-sigma \
  --set spec.model.textEncoderMaxLength=32 --set spec.datasets.0.path="$work/photos" \
  --set spec.datasets.0.resolution=0.25 --set spec.cacheDir="$work/cache" --set spec.output.dir="$work/out" \
  --set spec.training.maxSteps=300 --set spec.metrics.port="$port" "$@" 2>&1 | tee "$OUT/metrics-gpu-run.log" | tail -5
kill "$scraper" $smi 2>/dev/null || true
grep -c "^# scrape" "$OUT/metrics-gpu.txt" || true
grep "^trainingjob_gpu_" "$OUT/metrics-gpu.txt" | tail -2
