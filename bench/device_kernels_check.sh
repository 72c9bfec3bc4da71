#!/usr/bin/env bash
# bench/device_kernels_check.sh: the CUDA kernels on the GPU machine, in one call of well under 10 minutes, with
# the build packed here by bench/pack_device_kernels.sh (carry: .devcarry):
#   1. every `gpu` kernel test (each kernel against its CPU twin, the MMA layout self-test);
#   2. compute-sanitizer memcheck and racecheck on the kernel tests;
#   3. bench/kernel_bench.cu (ceilings, every op at training shapes) and PyTorch's SDPA (flash and cuDNN backends,
#      bench/attention_torch_bench.py) at the same attention shapes;
# then prints one table last. Full logs and JSON go to $OUT (or /tmp/strata_device when $OUT is unset).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/strata_device}
mkdir -p "$out"
w=$(mktemp -d)
tar -C "$w" -xJf .devcarry/kernels.tar.xz || { echo "device_kernels_check: .devcarry/kernels.tar.xz missing"; exit 1; }
cublas=$(dirname "$(find / -name 'libcublasLt.so.13' -not -path '/proc/*' 2>/dev/null | head -1)")
# The carried libraries serve the carried executables only (PyTorch keeps the image's own).
run() { LD_LIBRARY_PATH="$w/lib:$cublas:${LD_LIBRARY_PATH:-}" "$@"; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader 2>&1 | head -1
rows=()

# 1. the gpu tests
for t in "$w"/tests/kernels_cuda_*_test; do
  name=$(basename "$t")
  run timeout 120 "$t" --gtest_brief=1 >"$out/$name.log" 2>&1
  rc=$?
  summary=$(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$out/$name.log" | tr '\n' ' ')
  [[ $rc -eq 0 ]] || tail -n 30 "$out/$name.log"
  rows+=("test $name|rc=$rc $summary")
done

# 2. compute-sanitizer on the kernel tests, all runs at once (16 cores, one GPU; the sanitizers slow each test
#    10-100x, so in series they would not fit the call), each capped at 150 s (rc 124 = cut off, reported as such).
#    The matmul test calls cuBLASLt: memcheck only.
if command -v compute-sanitizer >/dev/null; then
  jobs_run=()
  for t in "$w"/tests/kernels_cuda_*_test; do
    name=$(basename "$t" _test)
    tools="memcheck racecheck"
    [[ $name == kernels_cuda_matmul || $name == kernels_cuda_device ]] && tools=memcheck
    for tool in $tools; do
      ( run timeout 150 compute-sanitizer --tool "$tool" --error-exitcode 9 "$t" --gtest_brief=1 \
          >"$out/$name.$tool.log" 2>&1; echo $? >"$out/$name.$tool.rc" ) &
      jobs_run+=("$name.$tool")
    done
  done
  wait
  for j in "${jobs_run[@]}"; do
    rc=$(cat "$out/$j.rc")
    verdict=$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/$j.log" | tail -1)
    [[ $rc -eq 0 ]] || tail -n 15 "$out/$j.log"
    rows+=("${j##*.} ${j%.*}|rc=$rc ${verdict:-no summary}")
  done
else
  rows+=("compute-sanitizer|not on the PATH")
fi

# 3. benchmarks
run timeout 240 "$w/kernel_bench" --json "$out/kernel_bench.json" >"$out/kernel_bench.log" 2>&1 || tail -n 20 "$out/kernel_bench.log"
timeout 180 python3 bench/attention_torch_bench.py >"$out/torch_attention.json" 2>"$out/torch_attention.err" ||
  tail -n 20 "$out/torch_attention.err"
sed -n '/^| op /,$p' "$out/kernel_bench.log"
python3 - "$out/kernel_bench.json" "$out/torch_attention.json" <<'PY'
import json, sys
try:
    ours = json.load(open(sys.argv[1]))
except Exception as e:
    print(f"| attention vs PyTorch | kernel_bench gave no JSON ({e}) |"); sys.exit()
try:
    torch_rows = json.load(open(sys.argv[2]))["rows"]
except Exception as e:
    torch_rows = []
    print(f"| attention vs PyTorch | no PyTorch numbers ({e}) |")
def ours_ms(T, HS, what):
    for r in ours["rows"]:
        if r["op"] == f"flash attention {what}" and f"T={T} " in r["shape"] + " " and f"HS={HS}" in r["shape"]:
            return r["ms"]
print("\n| attention (B=8, causal, bf16) | strata fwd+bwd ms | torch flash ms | x flash | torch cuDNN ms | x cuDNN |")
print("|---|---|---|---|---|---|")
for T in (1024, 2048):
    for HS in (64, 128):
        s = ours_ms(T, HS, "fwd+bwd")
        t = {r["backend"]: r.get("fwdbwd_ms") for r in torch_rows if r["T"] == T and r["HS"] == HS}
        cell = lambda b: (f"{t[b]:.3f} | {t[b] / s:.2f}x" if t.get(b) and s else "n/a | n/a")
        print(f"| T={T} HS={HS} NH={2048 // HS} | {s if s is None else round(s, 3)} | {cell('flash')} | {cell('cudnn')} |")
PY
echo
echo "| check | result |"
echo "|---|---|"
for r in "${rows[@]}"; do echo "| ${r%%|*} | ${r#*|} |"; done
