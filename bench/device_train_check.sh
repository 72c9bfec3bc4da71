#!/usr/bin/env bash
# bench/device_train_check.sh: on the GPU machine's host (16 cores, PyTorch 2.11, the `safetensors` package),
# with the build packed here by bench/pack_device_train.sh (carry: .devcarry):
#   1. a strata checkpoint read by the Python ecosystem (tests/reference/check_safetensors_package.py): names,
#      shapes and bytes through the safetensors package, and the PyTorch reference's loss on a shard's first
#      batch against `strata eval` on the same batch;
#   2. the CPU training benchmark (bench/train_bench.sh) against that PyTorch at all cores and at one thread.
set -uo pipefail
cd "$(dirname "$0")/.."
w=$(mktemp -d)
tar -C "$w" -xJf .devcarry/train.tar.xz || { echo "device_train_check: .devcarry/train.tar.xz missing"; exit 1; }
# The carried libraries serve strata only: PyTorch keeps the image's own (its libstdc++ may be newer).
run_strata() { LD_LIBRARY_PATH="$w/lib:${LD_LIBRARY_PATH:-}" "$@"; }
mkdir -p "$w/build/bench" && cp "$w/strata_train_bench" "$w/build/bench/"
echo "cores: $(nproc); $(python3 -c 'import torch; print("torch", torch.__version__, "threads", torch.get_num_threads())')"
echo "== checkpoint through the safetensors package"
eval_out=$(run_strata "$w/strata" eval --checkpoint "$w/ckpt" --shards "$w/shard.bin" --batch-size 4 --seq-len 128 --batches 1 \
  --tokenizer "$w/tokenizer.tiktoken" 2>&1)
echo "$eval_out"
loss=$(sed -n 's/^loss \([0-9.]*\) .*/\1/p' <<<"$eval_out")
python3 tests/reference/check_safetensors_package.py "$w/ckpt" "$w/shard.bin" 4 128 "$loss"
echo "safetensors check: rc=$?"
for t in "$(nproc)" 1; do
  echo "== train bench, $t threads"
  NO_BUILD=1 STRATA_LIBS="$w/lib" PYTHON=python3 THREADS=$t MODELS="llama-tiny llama-mini gpt2-124m" STEPS=8 \
    bash bench/train_bench.sh "$w/build" 2>&1 | grep -v '^=='
done
