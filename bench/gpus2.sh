#!/usr/bin/env bash
# One device call of `make bench GPUS=2` on a machine with two GPUs and no network (bench/README.md,
# "Two GPUs"): install the carried wheels (and flash-attn-4's CuTe DSL tree once both of its parts
# have come: bench/device_env.sh), record the machine, build what is missing, measure ITEMS.
#   bash bench/gpus2.sh prepare|ITEMS [BENCH ARGS]   ITEMS: a comma list of 1024, 512, comm, two-node, cache
# Writes to $OUT (default /tmp/bench-out): machine.txt, <date>-<card>-x2-<items>.json and .log.
set -o pipefail
items=${1:?usage: bash bench/gpus2.sh prepare|1024|512|comm|two-node|cache[,...] [bench/bench.py arguments]}
shift
OUT=${OUT:-/tmp/bench-out}
export OUT
mkdir -p "$OUT"
source bench/device_env.sh
# NVLink multicast stays off: on this workplace's shared hosts it can take every GPU out of service.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
{
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
  nvidia-smi topo -m
  python3 -c "import torch, diffusers, accelerate; print('torch', torch.__version__, 'gpus', torch.cuda.device_count(),
'nccl', torch.cuda.nccl.version(), 'diffusers', diffusers.__version__, 'accelerate', accelerate.__version__)"
  python3 -c "import flash_attn.cute, quack; print('flash-attn-4 and quack import')" 2>&1 | tail -1
  env | grep -E '^(NCCL|TORCH_SYMM|NVSHMEM)' | sort
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
if [ "$items" = prepare ]; then  # the pipeline and the photos only, for the next calls on this machine
  python3 bench/bench.py --gpus 2 --phase prepare "$@" 2>&1 | tail -20
  exit
fi
# A device call may run 600 s; the bench skips a step that would not end within 560 s of its start.
python3 bench/bench.py --gpus 2 --only "$items" --deadline 560 "$@" 2>&1 | grep -v "Loading weights" | tail -60
