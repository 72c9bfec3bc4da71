#!/usr/bin/env bash
# bench/train_bench.sh: CPU training throughput, strata against PyTorch, side by side in one run.
#
#   bench/train_bench.sh [BUILD_DIR]      (default build/release; configured as a CPU Release build if new)
#   env: THREADS (default: nproc) threads for both (OMP_NUM_THREADS + OPENBLAS_NUM_THREADS for strata,
#        torch.set_num_threads for PyTorch); MODELS (default "llama-mini gpt2-124m"); B (4); T (64);
#        WARMUP (2); STEPS (5); PYTHON (default /usr/bin/python3: Debian's python3-torch); NO_BUILD=1 to use
#        BUILD_DIR/bench/strata_train_bench as it is; STRATA_LIBS: a library folder for strata only (a carried build).
#        OPENBLAS_CORETYPE: PyTorch runs with the OpenBLAS kernel set strata chose (Debian's OpenBLAS 0.3.21
#        falls back to SSE3 "Prescott" kernels on CPUs newer than it knows, ~4-6x slower sgemm; strata fixes
#        that itself, see kernels/cpu/blas_runtime.h, and Debian's torch 1.13 calls the same OpenBLAS), so both
#        multiply with the same kernels; set it to override both.
#        OMP_WAIT_POLICY, when set, reaches both processes (both use libgomp): on a machine whose cores are
#        busy with other work, `passive` avoids libgomp's spinning barriers waiting on descheduled threads.
#
# For each model: bench/train_bench.cpp (strata_train_bench) and bench/torch_train_bench.py run the same
# step (zero_grad, forward, backward, clip to 1.0, AdamW) on a fixed random batch, one after the other, and
# the table shows tokens/s from the median step of each, the ratio, and each process's peak RSS. PyTorch runs
# twice with several threads (OpenBLAS threaded, and OpenBLAS single-threaded under PyTorch's own threads) and the
# faster run is its number.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$root/build/release}
threads=${THREADS:-$(nproc)}
models=${MODELS:-"llama-mini gpt2-124m"}
B=${B:-4}
T=${T:-64}
warmup=${WARMUP:-2}
steps=${STEPS:-5}
py=${PYTHON:-/usr/bin/python3}

"$py" -c 'import torch' 2>/dev/null || {
  echo "train_bench.sh: $py has no torch (Debian: apt-get install python3-torch)" >&2
  exit 1
}
if [[ "${NO_BUILD:-0}" != 1 ]]; then  # NO_BUILD=1: use $build/bench/strata_train_bench as it is (a carried build)
  if [[ ! -f "$build/CMakeCache.txt" ]]; then
    cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSTRATA_CUDA=OFF >&2
  fi
  cmake --build "$build" --target strata_train_bench >&2
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
args=(--batch "$B" --seq "$T" --warmup "$warmup" --steps "$steps" --json)
for m in $models; do
  echo "== $m: strata ($threads threads)" >&2
  LD_LIBRARY_PATH="${STRATA_LIBS:+$STRATA_LIBS:}${LD_LIBRARY_PATH:-}" OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads \
    "$build/bench/strata_train_bench" --model "$m" "${args[@]}" > "$tmp/$m.strata.json"
  core=${OPENBLAS_CORETYPE:-$("$py" -c 'import json,sys; print(json.load(sys.stdin)["blas_core"])' < "$tmp/$m.strata.json")}
  # PyTorch gets its better of two BLAS settings: OpenBLAS threaded too (its default), or single-threaded
  # inside PyTorch's own intra-op threads (with several threads the default oversubscribes the cores).
  for blas in "$threads" 1; do
    echo "== $m: torch ($threads threads, OPENBLAS_NUM_THREADS=$blas, OPENBLAS_CORETYPE=$core)" >&2
    OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$blas OPENBLAS_CORETYPE=$core "$py" "$root/bench/torch_train_bench.py" \
      --model "$m" --threads "$threads" "${args[@]}" > "$tmp/$m.torch.blas$blas.json"
    [[ "$threads" == 1 ]] && break
  done
  "$py" - "$tmp" "$m" <<'PY'
import glob, json, sys
tmp, m = sys.argv[1], sys.argv[2]
runs = [json.load(open(f)) | {"blas_threads": f.split(".blas")[1][:-5]} for f in glob.glob(f"{tmp}/{m}.torch.blas*.json")]
json.dump(max(runs, key=lambda r: r["tokens_per_s"]), open(f"{tmp}/{m}.torch.json", "w"))
PY
done

"$py" - "$tmp" "$threads" $models <<'PY'
import json, sys
tmp, threads, models = sys.argv[1], sys.argv[2], sys.argv[3:]
s0 = json.load(open(f"{tmp}/{models[0]}.strata.json"))
import os
policy = os.environ.get("OMP_WAIT_POLICY", "unset")
print(f"B x T = {s0['B']} x {s0['T']} tokens per step, {threads} threads, OpenBLAS {s0['blas_core']} for both, "
      f"OMP_WAIT_POLICY {policy}; median step; phases forward / backward / clip+AdamW ms")
print(f"{'model':12s} {'strata tok/s':>13s} {'torch tok/s':>12s} {'ratio':>7s} {'strata MB':>10s} {'torch MB':>9s}"
      f"   strata fwd/bwd/opt ms   torch fwd/bwd/opt ms  torch BLAS threads (its better run)")
for m in models:
    s = json.load(open(f"{tmp}/{m}.strata.json"))
    t = json.load(open(f"{tmp}/{m}.torch.json"))
    ratio = s["tokens_per_s"] / t["tokens_per_s"]
    phases = lambda r: f"{r['forward_ms']:.0f} / {r['backward_ms']:.0f} / {r['optimizer_ms']:.0f}"
    print(f"{m:12s} {s['tokens_per_s']:13.0f} {t['tokens_per_s']:12.0f} {ratio:6.2f}x {s['peak_rss_mb']:10.0f} "
          f"{t['peak_rss_mb']:9.0f}   {phases(s):>21s}   {phases(t):>20s}  {t['blas_threads']}")
PY
