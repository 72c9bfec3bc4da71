#!/usr/bin/env bash
# Packs what bench/device_train_check.sh needs into .devcarry/train.tar.xz (git-ignored; xz keeps it well under
# the device tool's 64 MiB): the strata binary and strata_train_bench of BUILD_DIR, every shared library they
# load except glibc's and the C++ runtime (the image's are newer and compatible) (the GPU image has no OpenBLAS, PCRE2 or libgfortran), a checkpoint's model weights,
# state and tokenizer, and one token shard to evaluate it on.
#   bash bench/pack_device_train.sh [BUILD_DIR] [CHECKPOINT] [SHARD]
#   defaults: build/release, out/main/ckpt-* (newest), out/default/val_000000.bin (made by scripts/run.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
b=${1:-build/release}
ckpt=${2:-$(ls -d out/main/ckpt-* | tail -1)}
shard=${3:-out/default/val_000000.bin}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/lib" "$stage/ckpt"
cp "$b/strata" "$b/bench/strata_train_bench" "$stage/"
strip "$stage/strata" "$stage/strata_train_bench"
ldd "$b/strata" "$b/bench/strata_train_bench" | awk '$3 ~ /^\// {print $3}' | sort -u |
  grep -vE '/(libc|libm|libpthread|libdl|librt|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so' | while read -r lib; do cp -L "$lib" "$stage/lib/"; done
cp "$ckpt/model.safetensors" "$ckpt/state.json" "$stage/ckpt/"
tok=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["trainer"]["config"]["tokenizer"])' "$ckpt/state.json")
cp "$tok" "$stage/tokenizer.tiktoken"
cp "$shard" "$stage/shard.bin"
mkdir -p .devcarry
tar -C "$stage" -cJf .devcarry/train.tar.xz .
du -h .devcarry/train.tar.xz
