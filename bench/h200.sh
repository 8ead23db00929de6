#!/usr/bin/env bash
# One device call of `make bench` on one GPU with no network (bench/README.md, "Running it without
# network access"): install the carried wheels and flash-attn-4's CuTe DSL tree, then run a phase.
#   bash bench/h200.sh prepare|check|measure [bench/bench.py arguments] | exec COMMAND...
# Wheels and the CuTe DSL tree: bench/device_env.sh.
# Writes to $OUT (default /tmp/bench-out).
set -o pipefail
phase=${1:?usage: bash bench/h200.sh prepare|check|measure [bench.py arguments]}
shift
OUT=${OUT:-/tmp/bench-out}
export OUT
mkdir -p "$OUT"
source bench/device_env.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/machine.txt"
case $phase in
  prepare) python3 bench/bench.py --phase prepare "$@" 2>&1 | tail -20 ;;
  check)
    {
      echo "== flash-attn-4 as installed, head_dim 72:"
      timeout 200 python3 bench/fa4_check.py --dims 72 --no-timing --no-cross
      echo "== with runner/models/fa4_sm90.py's corrections:"
      timeout 300 python3 bench/fa4_check.py --workaround --dims 72 96 "$@"
    } 2>&1 | grep -v Warning | tee "$OUT/fa4_check.txt" ;;
  measure) python3 bench/bench.py --phase measure --deadline 560 "$@" 2>&1 | grep -v "Loading weights" | tail -60 ;;
  exec) "$@" ;;  # any command, with the wheels and PYTHONPATH in place
  *) echo "unknown phase $phase"; exit 2 ;;
esac
