#!/usr/bin/env bash
# On a GPU machine without internet: install carried wheels, build the random XL pipeline,
# run the 2-GPU data-parallel job and a 1-GPU 1024px throughput run. Logs go to $OUT.
set -o pipefail
OUT=${OUT:-/tmp/bench-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia_smi.txt"
python3 -c "import torch,transformers,diffusers,accelerate;print('torch',torch.__version__,'cuda',torch.version.cuda,'gpus',torch.cuda.device_count(),'transformers',transformers.__version__,'diffusers',diffusers.__version__,'accelerate',accelerate.__version__)" | tee "$OUT/versions.txt"
timeout 200 python3 bench/make_random_pixart.py /tmp/pixart-xl-random 2>&1 | tee "$OUT/build.log"
timeout 420 python3 -m runner run bench/h100-ddp.yaml "$@" 2>&1 | tee "$OUT/ddp.log"
echo "ddp exit: $?" | tee -a "$OUT/ddp.log"
ls -la /tmp/bench/out-ddp /tmp/bench/out-ddp/checkpoints /tmp/bench/out-ddp/validation/* 2>&1 | tee -a "$OUT/ddp.log"
cp /tmp/bench/out-ddp/validation/step-40/*.png "$OUT/" 2>/dev/null
if [ -n "$ONE_GPU_1024" ]; then
  timeout 300 python3 -m runner run bench/h100-ddp.yaml --set metadata.name=h100-1gpu-1024 \
    --set spec.hardware.gpusPerNode=1 --set spec.datasets.0.resolution=1.0 --set spec.training.batchSize=8 \
    --set spec.training.maxSteps=30 --set spec.training.checkpointEvery=1000 --set spec.validation.prompts=[] \
    --set spec.output.dir=/tmp/bench/out-1024 --set spec.metrics.port=0 2>&1 | tee "$OUT/one_gpu_1024.log"
fi
