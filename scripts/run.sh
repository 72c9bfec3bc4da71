#!/usr/bin/env bash
# Sets up, builds and runs Strata's main job on the embedded default data (no network needed beyond Debian's
# mirror for missing packages):
#   1. trains an 8192-token BPE vocabulary on the State of the Union corpus (out/default/tok8k.tiktoken);
#   2. `strata prepare`: SOTU -> training shards, Moby-Dick -> held-out shards (out/default/);
#   3. `strata train`: llama-tiny (width 128, GQA 4/2 heads) on the CPU, grown mid-run: 2 layers for 300 steps,
#      then stacked (G_stack, g = 2) into the 4-layer model for the remaining 1200, about 2 minutes on 2 cores;
#      validation loss and bits per byte every 100 steps, a text sample every 500, a checkpoint at the end
#      (out/main/). Extra arguments go to `strata train` (e.g. --steps 1000, --threads 4).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)"
strata=./build/release/strata
mkdir -p out/default
if [[ ! -f out/default/tok8k.tiktoken ]]; then
  $strata tokenizer train --no-progress --vocab-size 8192 --input data/default/sotu.jsonl.xz \
    --output out/default/tok8k.tiktoken
fi
$strata prepare --no-progress --tokenizer out/default/tok8k.tiktoken --out out/default --overwrite
$strata train --data out/default --model llama-tiny --n-layer 2 --grow "at=300 steps,op=stack,g=2" --batch-size 8 --seq-len 128 --steps 1500 --lr 3e-3 \
  --warmup 100 --eval-every 100 --eval-batches 16 --sample-every 500 --sample-tokens 48 --sample-prompt "The" \
  --out out/main --overwrite "$@"
