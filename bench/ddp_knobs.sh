#!/usr/bin/env bash
# Same-call A/B of NCCL and DDP knobs for the 2-GPU 1024 px step (bench/ddp_comm.py under each):
#   bash bench/ddp_knobs.sh [NAME=ENV_OR_SET ...]
# Each argument names a variant: NAME=  (defaults), NAME=VAR=VALUE (an environment variable for the
# workers, e.g. NCCL_MAX_NCHANNELS=8) or NAME=spec.FIELD=VALUE (a spec override). One line per
# variant goes to $OUT/ddp-knobs.jsonl: {"variant": NAME, ...bench/rows.comm_summary}.
# DDP_COMM_ARGS adds ddp_comm.py arguments (the CPU check: "--tiny --steps 3").
# On a device machine: source bench/device_env.sh first (bench/gpus2.sh exec does).
set -o pipefail
OUT=${OUT:-/tmp/bench-out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor-ddp-knobs}  # compiled once, shared by the variants
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(default= channels4=NCCL_MAX_NCHANNELS=4 channels8=NCCL_MAX_NCHANNELS=8
                                        buckets100=spec.training.ddp.bucketCapMB=100 default2=)
for v in "${variants[@]}"; do
  name=${v%%=*} knob=${v#*=} env=() set=()
  case $knob in
    "") ;;
    spec.*) set=(--set "$knob") ;;
    *) env=("$knob") ;;
  esac
  line=$(env "${env[@]}" timeout 240 python3 -m torch.distributed.run --standalone --nproc-per-node 2 bench/ddp_comm.py \
           --res 1024 --batch 8 --steps 20 ${DDP_COMM_ARGS:-} "${set[@]}" 2>&1 | tee "$OUT/ddp-knobs-$name.log" | grep -m1 "DDP_COMM ")
  if [ -n "$line" ]; then
    echo "{\"variant\": \"$name\", \"knob\": \"$knob\", ${line#*DDP_COMM \{}" | tee -a "$OUT/ddp-knobs.jsonl"
  else
    echo "{\"variant\": \"$name\", \"knob\": \"$knob\", \"error\": \"no DDP_COMM line, see ddp-knobs-$name.log\"}" | tee -a "$OUT/ddp-knobs.jsonl"
  fi
done
