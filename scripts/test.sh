#!/usr/bin/env bash
# Sets up, builds and runs every test Strata has on this machine:
#   1. Release build (CUDA targets compiled when nvcc is present), warnings as errors, all ctest tests
#      (GPU tests skip with a reason where there is no GPU);
#   2. the CPU tests again under AddressSanitizer + UndefinedBehaviorSanitizer;
#   3. each libFuzzer target for STRATA_FUZZ_SECONDS (default 60) seconds.
# Usage: bash scripts/test.sh     (STRATA_SKIP_ASAN=1 / STRATA_SKIP_FUZZ=1 to skip stages while iterating)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
jobs=$(nproc)

echo "== release build + tests"
cmake --preset release >/dev/null
cmake --build --preset release -j "$jobs"
ctest --preset release -j "$jobs"

if [[ "${STRATA_SKIP_ASAN:-0}" != 1 ]]; then
  echo "== ASan + UBSan build + CPU tests"
  cmake --preset asan >/dev/null
  cmake --build --preset asan -j "$jobs"
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --preset asan -j "$jobs" -L cpu
fi

if [[ "${STRATA_SKIP_FUZZ:-0}" != 1 ]]; then
  echo "== libFuzzer targets, ${STRATA_FUZZ_SECONDS:-60} s each"
  cmake --preset fuzz >/dev/null
  cmake --build --preset fuzz -j "$jobs"
  for f in fuzz_tokenizer fuzz_shard fuzz_safetensors fuzz_growth_spec; do
    corpus="build/fuzz/corpus/$f"
    mkdir -p "$corpus"
    cp tests/fuzz/seeds/"$f"/* "$corpus"/ 2>/dev/null || true
    "build/fuzz/tests/fuzz/$f" -max_total_time="${STRATA_FUZZ_SECONDS:-60}" -print_final_stats=1 -rss_limit_mb=4096 \
      "$corpus" 2>&1 | tail -n 12
  done
fi
echo "== all tests passed"
