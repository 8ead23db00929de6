#!/usr/bin/env bash
# 1024 px, batch 8 per GPU, real PixArt-Sigma-XL architecture (random weights):
# eager vs per-block torch.compile on 1 GPU, then compiled data-parallel on 2 GPUs.
set -o pipefail
OUT=${OUT:-/tmp/bench-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia_smi.txt"
timeout 200 python3 bench/make_random_pixart.py /tmp/pixart-xl-random > "$OUT/build.log" 2>&1
common=(--set spec.datasets.0.resolution=1.0 --set spec.training.batchSize=8 --set spec.training.checkpointEvery=1000
        --set spec.metrics.port=0 --set spec.validation.resolutions=1024x1024 --set spec.validation.inferenceSteps=4)
timeout 150 python3 -m runner run bench/h100-ddp.yaml "${common[@]}" --set spec.hardware.gpusPerNode=1 \
  --set spec.training.maxSteps=30 --set spec.validation.prompts=[] --set spec.output.dir=/tmp/eager 2>&1 | grep -v Loading | tee "$OUT/eager_1gpu.log"
timeout 240 python3 -m runner run bench/h100-ddp.yaml "${common[@]}" --set spec.hardware.gpusPerNode=1 \
  --set spec.training.maxSteps=40 --set spec.training.compile=true --set spec.output.dir=/tmp/comp1 2>&1 | grep -v Loading | tee "$OUT/compile_1gpu.log"
timeout 200 python3 -m runner run bench/h100-ddp.yaml "${common[@]}" --set spec.hardware.gpusPerNode=2 \
  --set spec.training.maxSteps=40 --set spec.training.compile=true --set spec.validation.prompts=[] --set spec.output.dir=/tmp/comp2 2>&1 | grep -v Loading | tee "$OUT/compile_2gpu.log"
