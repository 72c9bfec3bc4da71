#!/usr/bin/env bash
# bench/device_check.sh: the checks that need the GPU machine, in one short run (see README "GPU machine").
#
# Uses a build carried from a development machine: bench/pack_device_build.sh copies the executables of
# build/release (configured in /work/main) plus the shared libraries the GPU image lacks into .devcarry/; the run
# then carries .devcarry. Test executables have the source path /work/main compiled in, so that path is made to
# point at this checkout when it does not exist.
#   device run:  bash bench/device_check.sh            (carry: .devcarry)
# Prints a short table last: the GPU smoke test, the CPU test suites, tokenizer scaling over 1..N cores and
# `strata prepare` of the default corpus on 1 and N cores.
set -uo pipefail
cd "$(dirname "$0")/.."
carry=.devcarry
[[ -x $carry/strata ]] || { echo "device_check: $carry/strata missing (run bench/pack_device_build.sh here first)"; exit 1; }
export LD_LIBRARY_PATH="$PWD/$carry/lib:${LD_LIBRARY_PATH:-}"
[[ -e /work/main ]] || { mkdir -p /work && ln -s "$PWD" /work/main; }
mkdir -p build/release/tests build/release/bench
cp -f $carry/strata build/release/strata
cp -f $carry/tests/* build/release/tests/
cp -f $carry/bench/* build/release/bench/
cores=$(nproc)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1
echo "cores: $cores"

rows=()
if out=$(build/release/tests/kernels_cuda_device_test 2>&1); then res=PASS; else res=FAIL; fi
echo "$out" | tail -n 4
grep -q SKIPPED <<<"$out" && res=SKIPPED
rows+=("gpu smoke kernel (kernels_cuda_device_test)|$res")

pass=0; fail=0
for t in build/release/tests/data_*_test build/release/tests/engine_*_test; do
  if "$t" --gtest_brief=1 >/tmp/$(basename "$t").log 2>&1; then pass=$((pass + 1)); else fail=$((fail + 1)); tail -n 20 /tmp/$(basename "$t").log; fi
done
rows+=("CPU test executables on the GPU host|$pass passed, $fail failed")

bench_json=$(build/release/bench/tokenizer_bench --reps 5 --threads 1 2 4 8 "$cores" --json 2>/dev/null)
echo "$bench_json"
rows+=("$(python3 - "$bench_json" <<'PY'
import json, sys
r = json.loads(sys.argv[1])["results"]
one = r[0]["best_s"]
print("tokenizer encode, SOTU 10.8 MB|" + ", ".join(f"{x['threads']}t {x['mb_per_s']:.0f} MB/s ({one / x['best_s']:.1f}x)" for x in r))
PY
)")

for t in 1 "$cores"; do
  start=$(date +%s.%N)
  build/release/strata prepare --no-progress --threads "$t" --out "/tmp/prep$t" --overwrite >/dev/null || echo "prepare failed"
  secs=$(python3 -c "import time; print(f'{time.time() - $start:.2f}')")
  rows+=("strata prepare default corpus, $t threads|$secs s")
done
cmp -s /tmp/prep1/train_000000.bin "/tmp/prep$cores/train_000000.bin" && rows+=("prepare output 1 vs $cores threads|identical") \
  || rows+=("prepare output 1 vs $cores threads|DIFFERENT")

echo
echo "| check | result |"
echo "|---|---|"
for r in "${rows[@]}"; do echo "| ${r%%|*} | ${r#*|} |"; done
