#!/usr/bin/env bash
# One device call of `make bench` on one GPU with no network (bench/README.md, "Running it without
# network access"): install the carried wheels and flash-attn-4's CuTe DSL tree, then run a phase.
#   bash bench/h200.sh prepare|check|measure [bench/bench.py arguments] | exec COMMAND...
# The CuTe DSL tree travels as cutlass.tar.xz split in parts under .gpu/ (one call carries at most
# 64 MiB): each call copies the parts it carries to /tmp/carry, and the first call that has them
# all unpacks them, so the parts can come in calls sent back to back while the machine stays warm.
# Writes to $OUT (default /tmp/bench-out).
set -o pipefail
phase=${1:?usage: bash bench/h200.sh prepare|check|measure [bench.py arguments]}
shift
OUT=${OUT:-/tmp/bench-out}
export OUT
# a folder named site-packages: quack (flash-attn-4's GEMMs) fingerprints epilogue code and treats
# functions from a site-packages or dist-packages path as installed libraries; anywhere else it
# recurses into cutlass's internals and fails ("has no fail-closed semantic key")
SITE=/tmp/py/site-packages
mkdir -p "$OUT" /tmp/carry "$SITE"
cp .gpu/cutlass.tar.xz.part-* /tmp/carry/ 2>/dev/null
if [ ! -e $SITE/.wheels ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $SITE .whl/*.whl \
    && touch $SITE/.wheels || exit 1
fi
parts=$(ls /tmp/carry/cutlass.tar.xz.part-* 2>/dev/null | wc -l)
if [ ! -e $SITE/.cutlass ] && [ "$parts" -ge 2 ]; then
  cat /tmp/carry/cutlass.tar.xz.part-* | python3 -c 'import sys, tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode="r|xz").extractall(sys.argv[1])' "$SITE" \
    && touch $SITE/.cutlass || exit 1
fi
export PYTHONPATH=$SITE:$SITE/nvidia_cutlass_dsl/dsl_packages:$PWD
export FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1 PYTHONUNBUFFERED=1
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
