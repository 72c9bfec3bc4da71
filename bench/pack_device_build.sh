#!/usr/bin/env bash
# Copies what bench/device_check.sh needs from build/release into .devcarry/ (git-ignored): the strata binary,
# the test and benchmark executables, and the shared libraries the GPU image may lack (PCRE2, liblzma, cudart).
set -euo pipefail
cd "$(dirname "$0")/.."
b=build/release
rm -rf .devcarry && mkdir -p .devcarry/tests .devcarry/bench .devcarry/lib
cp $b/strata .devcarry/
find $b/tests -maxdepth 1 -type f -name '*_test' -exec cp {} .devcarry/tests/ \;
cp $b/bench/tokenizer_bench .devcarry/bench/
for lib in libpcre2-8.so.0 liblzma.so.5 libcudart.so.13; do
  path=$(ldd $b/strata .devcarry/tests/kernels_cuda_device_test 2>/dev/null | awk -v l="$lib" '$1 == l {p = $3} END {print p}')
  [[ -n "$path" ]] && cp -L "$path" .devcarry/lib/
done
strip .devcarry/strata .devcarry/tests/* .devcarry/bench/* 2>/dev/null || true
du -sh .devcarry
