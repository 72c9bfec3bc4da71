#!/usr/bin/env bash
# bench/device_op_times.sh: where a training step's GPU time goes, on the GPU machine, with the build packed here
# by bench/pack_device_kernels.sh (carry: .devcarry/kernels.tar.xz). Runs `strata train --device cuda --op-times`
# (kernels/cuda/op_timer.h: CUDA events around every op, summed per op over the timed steps) on the embedded
# corpus with an 8192-token BPE and prints the per-op table: calls, ms and share per step, and how much of the
# step's wall time the ops cover. Nsight Systems would give the same, but on this workplace's GPU machines it
# writes only a raw .qdstrm file (bench/KERNELS.md, run 8).
#   MODEL=gpt2-124m VOCAB=50257 BATCH=16 SEQ=1024 LAYERS= bash bench/device_op_times.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/strata_device}
mkdir -p "$out"
source bench/device_lib.sh
device_unpack device_op_times
model=${MODEL:-gpt2-124m} vocab=${VOCAB:-50257} batch=${BATCH:-16} seq=${SEQ:-1024}
layers=()
[[ -n ${LAYERS:-} ]] && layers=(--n-layer "$LAYERS")
d=$(mktemp -d)
device_prepare "$d" "$out/op_times_prepare.log" || exit 1
# Steps 6-8 timed: after the first steps' one-time work (cuBLASLt plans, allocations).
run timeout 150 "$w/strata" train --device cuda --data "$d/data" --model "$model" "${layers[@]}" --vocab-size "$vocab" \
  --batch-size "$batch" --seq-len "$seq" --steps 8 --lr 3e-4 --warmup 2 --eval-every 0 --eval-batches 1 \
  --sample-tokens 0 --log-every 1 --out "$d/run" --overwrite --op-times 6:8 >"$out/op_times_$model.log" 2>&1 ||
  { echo "device_op_times: the run failed"; tail -n 15 "$out/op_times_$model.log"; exit 1; }
echo "$model, B=$batch, T=$seq:"
sed -n '/^GPU time per op/,/ops sum/p' "$out/op_times_$model.log"
