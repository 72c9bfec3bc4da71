#!/usr/bin/env bash
# Packs what bench/device_kernels_check.sh and bench/device_gpu_train.sh need into .devcarry/kernels.tar.xz
# (git-ignored; xz keeps it under the device tool's 64 MiB): the `gpu` test executables (the CUDA kernels'
# kernels_cuda_*_test, the CUDA model runner's and trainer's engine_cuda_*_test), kernel_bench, the strata
# executable, and the shared libraries they load except glibc's, the C++ runtime's, cuBLASLt (541 MB) and NCCL
# (218 MB): the GPU image has CUDA 13's and NCCL's (nvidia-nccl-cu13), found there at run time, as is its
# cuDNN (--attention cudnn opens libcudnn.so.9 itself; nothing links against it).
#   bash bench/pack_device_kernels.sh [BUILD_DIR]      (default build/release, configured with CUDA)
set -euo pipefail
cd "$(dirname "$0")/.."
b=${1:-build/release}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/lib" "$stage/tests"
exes=$(find "$b/tests" -maxdepth 1 -type f \( -name 'kernels_cuda_*_test' -o -name 'engine_cuda_*_test' -o -name 'engine_nccl_*_test' \) \
  ! -name '*_emu_test')
[[ -n "$exes" ]] || { echo "pack_device_kernels: no kernels_cuda_*_test in $b/tests (configure with -DSTRATA_CUDA=ON)"; exit 1; }
cp $exes "$stage/tests/"
cp "$b/bench/kernel_bench" "$b/strata" "$stage/"
strip "$stage/kernel_bench" "$stage/strata" "$stage"/tests/*
ldd "$b/bench/kernel_bench" "$b/strata" $exes | awk '$3 ~ /^\// {print $3}' | sort -u |
  grep -vE '/(libc|libm|libpthread|libdl|librt|libstdc\+\+|libgcc_s|ld-linux[^/]*|libcublasLt|libcublas|libcuda|libnccl)\.so' |
  while read -r lib; do cp -L "$lib" "$stage/lib/"; done
mkdir -p .devcarry
tar -C "$stage" -cJf .devcarry/kernels.tar.xz .
du -h .devcarry/kernels.tar.xz
