#!/usr/bin/env bash
# bench/device_session.sh: one device call that measures everything, within the device tool's limits (8 files
# back from $OUT, 10 minutes a command), after `bash bench/pack_device_kernels.sh build/cuda` here (carry:
# .devcarry/kernels.tar.xz). In order: the kernel check (every `gpu` test, compute-sanitizer, kernel_bench,
# PyTorch's SDPA; ~3 min), one gpt2-124m step's GPU time per op (`--op-times`; ~40 s), then the training runs
# beside PyTorch (~3 min; NO_TORCH=1 leaves PyTorch out, ~1.5 min). Each part's table is printed as it ends, so
# a call cut off at its limit still returns what ran; the logs go to $OUT as three archives.
#   SKIP=kernels|op_times|train (a regex of parts to leave out)   NO_TORCH=1   ONLY=<regex of training runs>
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/strata_device}
mkdir -p "$out"
want() { [[ -z ${SKIP:-} || ! $1 =~ ${SKIP} ]]; }
if want kernels; then
  OUT="$out" bash bench/device_kernels_check.sh 2>&1 | tee "$out/kernels_table.txt"
fi
if want op_times; then
  mkdir -p /tmp/strata_op_times
  OUT=/tmp/strata_op_times bash bench/device_op_times.sh 2>&1
  tar -C /tmp -czf "$out/op_times_logs.tar.gz" strata_op_times
fi
if want train; then
  mkdir -p /tmp/strata_train
  OUT=/tmp/strata_train bash bench/device_gpu_train.sh 2>&1 | tee /tmp/strata_train/table.txt | sed -n '/^MFU against/,$p'
  tar -C /tmp -czf "$out/train_logs.tar.gz" strata_train
fi
