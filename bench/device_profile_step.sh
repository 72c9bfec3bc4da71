#!/usr/bin/env bash
# bench/device_profile_step.sh: where a gpt2-124m training step's GPU time goes, on the GPU machine, with the
# build packed here by bench/pack_device_kernels.sh (carry: .devcarry/kernels.tar.xz). Runs `strata train --device
# cuda` (B=16, T=1024, the embedded corpus with an 8192-token BPE, vocabulary 50257 as gpt2) under Nsight
# Systems, recording steps 6..7 only (--profile-steps, cudaProfilerStart/Stop), then sums the GPU time of every
# kernel by the innermost NVTX range it ran in (the op that launched it: "matmul bwd", "flash attention bwd",
# ...) and prints one table: per op, ms per step, % of the step's GPU time, launches per step. Needs nsys on the
# PATH (the GPU image has it). Output in $OUT (or /tmp/strata_device): the report's SQLite export stays there.
#   MODEL=gpt2-124m BATCH=16 SEQ=1024 STEPS_ARGS=... bash bench/device_profile_step.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/strata_device}
mkdir -p "$out"
# nsys: on the PATH, or in one of the places CUDA and Nsight Systems install it.
if ! command -v nsys >/dev/null; then
  nsys_bin=$(timeout 60 find /usr/local /opt /usr/lib -name nsys -type f -perm -u+x 2>/dev/null | head -1)
  [[ -n $nsys_bin ]] || { echo "device_profile_step: no nsys on the PATH or under /usr/local, /opt, /usr/lib"; exit 1; }
  export PATH="$(dirname "$nsys_bin"):$PATH"
fi
w=$(mktemp -d)
tar -C "$w" -xJf .devcarry/kernels.tar.xz || { echo "device_profile_step: .devcarry/kernels.tar.xz missing"; exit 1; }
cublas=$(dirname "$(timeout 60 find /usr /opt -name 'libcublasLt.so.13' 2>/dev/null | head -1)")
nccl=$(dirname "$(timeout 60 find /usr /opt -name 'libnccl.so.2' 2>/dev/null | head -1)")
export LD_LIBRARY_PATH="$w/lib:$cublas:$nccl:${LD_LIBRARY_PATH:-}"
model=${MODEL:-gpt2-124m} batch=${BATCH:-16} seq=${SEQ:-1024} vocab=${VOCAB:-50257}
d=$(mktemp -d)
"$w/strata" tokenizer train --no-progress --vocab-size 8192 --input data/default/sotu.jsonl.xz \
  --output "$d/tok.tiktoken" >"$out/profile_prepare.log" 2>&1 &&
  "$w/strata" prepare --no-progress --tokenizer "$d/tok.tiktoken" --out "$d/data" >>"$out/profile_prepare.log" 2>&1 ||
  { tail -n 5 "$out/profile_prepare.log"; exit 1; }
steps=2  # profiled steps (6 and 7)
timeout 200 nsys profile -t cuda,nvtx --capture-range=cudaProfilerApi --capture-range-end=stop --force-overwrite true \
  -o "$d/step" "$w/strata" train --device cuda --data "$d/data" --model "$model" --vocab-size "$vocab" \
  --batch-size "$batch" --seq-len "$seq" --steps 8 --lr 6e-4 --warmup 2 --eval-every 0 --eval-batches 1 \
  --sample-tokens 0 --log-every 1 --out "$d/run" --overwrite --profile-steps 6:7 >"$out/profile_train.log" 2>&1 ||
  { echo "device_profile_step: the profiled run failed"; tail -n 15 "$out/profile_train.log"; exit 1; }
# On the H200 image of 2026-11-28 nsys left only the raw stream (step.qdstrm: "Generated: .../step.qdstrm", no
# report): its QdstrmImporter, shipped beside nsys (host-linux-x64/), converts it.
if [[ ! -f $d/step.nsys-rep && -f $d/step.qdstrm ]]; then
  nsys_dir=$(dirname "$(readlink -f "$(command -v nsys)")")
  importer=$(timeout 60 find "$nsys_dir/.." "$nsys_dir/../.." /opt /usr/local -name QdstrmImporter -type f 2>/dev/null | head -1)
  [[ -n $importer ]] || { echo "device_profile_step: only step.qdstrm, and no QdstrmImporter near $nsys_dir"; exit 1; }
  "$importer" -i "$d/step.qdstrm" >>"$out/profile_train.log" 2>&1 ||
    { echo "device_profile_step: $importer failed on step.qdstrm"; tail -n 5 "$out/profile_train.log"; exit 1; }
fi
nsys export --type sqlite --force-overwrite true -o "$out/step.sqlite" "$d/step.nsys-rep" >>"$out/profile_train.log" 2>&1 ||
  { echo "device_profile_step: nsys export failed"; tail -n 5 "$out/profile_train.log"; exit 1; }
python3 - "$out/step.sqlite" "$steps" "$model B=$batch T=$seq" <<'PY'
import bisect, collections, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
steps, what = int(sys.argv[2]), sys.argv[3]
strings = dict(db.execute("SELECT id, value FROM StringIds"))
# Kernels with their launch's correlation id; the runtime call (cudaLaunchKernel, cuBLASLt's launches) gives the
# CPU thread and time that place it inside an NVTX range.
kernels = db.execute(
    "SELECT k.start, k.end, k.shortName, r.start, r.globalTid FROM CUPTI_ACTIVITY_KIND_KERNEL k "
    "LEFT JOIN CUPTI_ACTIVITY_KIND_RUNTIME r ON k.correlationId = r.correlationId").fetchall()
ranges = collections.defaultdict(list)  # thread -> [(start, end, name)]
for start, end, text, tid, textid in db.execute(
        "SELECT start, end, text, globalTid, textId FROM NVTX_EVENTS WHERE end IS NOT NULL AND eventType = 59"):
    ranges[tid].append((start, end, text if text is not None else strings.get(textid, "?")))
for tid in ranges:
    ranges[tid].sort()
def op_of(t, tid):
    """The innermost (latest-starting) range on thread tid that contains time t."""
    rs = ranges.get(tid, [])
    i = bisect.bisect_right(rs, (t, float("inf"), "")) - 1
    best = None
    while i >= 0:
        s, e, name = rs[i]
        if s <= t <= e and (best is None or s > best[0]):
            best = (s, name)
            break
        i -= 1
    return best[1] if best else "(no range)"
total = collections.Counter()
count = collections.Counter()
by_kernel = collections.Counter()
for kstart, kend, short, rstart, tid in kernels:
    by_kernel[(op_of(rstart, tid) if rstart is not None else "(no API record)", strings.get(short, "?"))] += kend - kstart
    op = op_of(rstart, tid) if rstart is not None else "(no API record)"
    total[op] += kend - kstart
    count[op] += 1
busy = sum(total.values())
first = min(k[0] for k in kernels)
last = max(k[1] for k in kernels)
print(f"\n{what}: {len(kernels) / steps:.0f} kernels per step, GPU busy {busy / steps / 1e6:.2f} ms per step, "
      f"span {(last - first) / steps / 1e6:.2f} ms per step (steps 6-7, nsys)")
print("| op (NVTX range) | ms per step | % of GPU time | kernels per step |")
print("|---|---|---|---|")
for op, ns in total.most_common():
    print(f"| {op} | {ns / steps / 1e6:.3f} | {100 * ns / busy:.1f}% | {count[op] / steps:.0f} |")
print("\n| op | kernel (the 15 longest in all) | ms per step | % of GPU time |")
print("|---|---|---|---|")
for (op, name), ns in by_kernel.most_common(15):
    print(f"| {op} | {name[:70]} | {ns / steps / 1e6:.3f} | {100 * ns / busy:.1f}% |")
PY
