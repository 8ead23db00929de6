#!/usr/bin/env bash
# 512 px, batch 4 per GPU: the same job on 1 and on 2 GPUs, plus raw all-reduce bandwidth.
set -o pipefail
OUT=${OUT:-/tmp/bench-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi topo -m 2>&1 | tee "$OUT/topo.txt"
env | grep -E "^NCCL|^TORCH_SYMM" | tee -a "$OUT/topo.txt"
timeout 90 python3 bench/allreduce.py 2>&1 | tail -3 | tee "$OUT/allreduce.log"
timeout 90 python3 bench/allreduce.py --dtype bfloat16 2>&1 | tail -3 | tee -a "$OUT/allreduce.log"
timeout 200 python3 bench/make_random_pixart.py /tmp/pixart-xl-random > "$OUT/build.log" 2>&1
common=(--set spec.training.maxSteps=40 --set spec.training.checkpointEvery=1000 --set spec.validation.prompts=[] --set spec.metrics.port=0)
timeout 200 python3 -m runner run bench/h100-ddp.yaml "${common[@]}" --set spec.hardware.gpusPerNode=1 --set spec.output.dir=/tmp/o1 2>&1 | grep -v Loading | tee "$OUT/one_gpu_512.log"
timeout 200 python3 -m runner run bench/h100-ddp.yaml "${common[@]}" --set spec.hardware.gpusPerNode=2 --set spec.output.dir=/tmp/o2 --stage train 2>&1 | grep -v Loading | tee "$OUT/two_gpu_512.log"
