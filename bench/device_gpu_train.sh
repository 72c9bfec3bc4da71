#!/usr/bin/env bash
# bench/device_gpu_train.sh: `strata train --device cuda` on the GPU machine, with the build packed here by
# bench/pack_device_kernels.sh (carry: .devcarry/kernels.tar.xz). Trains on the embedded default corpus (an 8192-
# token BPE vocabulary trained on it first; the models keep their own vocabulary sizes) and reports, per run, the
# median tokens/s and MFU of the steps after the first 3 (warm-up), read from metrics.jsonl, and the wall time of
# a growth. Runs: gpt2-124m at T=1024 with micro-batches 16 and 32; llama-1.1b's layer shape at T=2048 with 4 of
# its 24 layers (a whole 1.1B model's checkpoint, 15 GB, would take most of the call to write); a llama-1.1b-
# shaped G_stack growth from 2 to 6 layers and a G_direct widening to its layer width. Beside each (not the
# growths) the PyTorch baseline of the same model and batch (bench/torch_gpu_train_bench.py: torch.compile, SDPA
# flash, bf16 autocast, fused AdamW), and gpt2-124m B=16 again with NCCL's loopback, with --recompute all and
# with cuBLASLt autotuning, each against the plain run. Prints one table last. Logs go to $OUT (or
# /tmp/strata_device).
# ONLY=<regex> runs the matching runs alone (a plain substring works: ONLY=gpt2; ONLY='^gpt2-124m_b16$' the one);
# NO_TORCH=1 skips the PyTorch baselines.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/strata_device}
mkdir -p "$out"
source bench/device_lib.sh
device_unpack device_gpu_train
d=$(mktemp -d)
device_prepare "$d" "$out/train_prepare.log" || exit 1

rows=()
# train NAME TORCH_ARGS STRATA_ARGS...: one strata run (and the PyTorch baseline unless TORCH_ARGS is "-").
train() {
  local name=$1 torch_args=$2
  shift 2
  [[ -z ${ONLY:-} || $name =~ $ONLY ]] || return 0
  [[ -z ${NO_TORCH:-} ]] || torch_args=-
  run timeout 120 "$w/strata" train --device cuda --data "$d/data" --eval-every 0 --eval-batches 1 \
    --sample-tokens 0 --log-every 5 --warmup 2 --out "$d/$name" --overwrite "$@" >"$out/train_$name.log" 2>&1
  local rc=$?
  [[ $rc -eq 0 ]] || tail -n 8 "$out/train_$name.log"
  local torch_json="{}"
  if [[ $torch_args != - ]]; then
    torch_json=$(timeout 150 python3 bench/torch_gpu_train_bench.py $torch_args 2>"$d/torch_$name.err" | tail -1)
    [[ -n $torch_json ]] || { tail -n 5 "$d/torch_$name.err"; torch_json="{}"; }
    echo "$torch_json" >>"$out/train_$name.log"
  fi
  rows+=("$(python3 - "$d/$name/metrics.jsonl" "$name" "$rc" "$out/train_$name.log" "$torch_json" <<'PY'
import json, statistics, sys
path, name, rc, log, torch_json = sys.argv[1:]
try:
    rows = [json.loads(l) for l in open(path)]
except OSError:
    rows = []
steps = [r for r in rows if r.get("type") == "step"][3:]
grow = [r for r in rows if r.get("type") == "growth"]
tps = statistics.median(r["tokens_per_s"] for r in steps) if steps else float("nan")
mfu = statistics.median(r.get("mfu", float("nan")) for r in steps) if steps else float("nan")
t = json.loads(torch_json or "{}")
ttps, tmfu = t.get("tokens_per_s"), t.get("mfu")
tcol = f"{ttps:,.0f} | {100 * tmfu:.1f}% | {tps / ttps:.2f}x" if ttps else "- | - | -"
g = f"{grow[0]['wall_s']:.2f} s" if grow else ""
print(f"{name} | rc={rc} | {tps:,.0f} | {100 * mfu:.1f}% | {tcol} | {g}")
PY
)")
}
train gpt2-124m_b16 "--model gpt2-124m --batch 16 --seq 1024" \
  --model gpt2-124m --vocab-size 50257 --batch-size 16 --seq-len 1024 --steps 25 --lr 6e-4
# The same run on the data-parallel path (NCCL loopback, ZeRO-0's layer-by-layer all-reduce on a second
# stream): the cost of the overlapped reduction machinery on one GPU (issue 7's loopback measurement).
train gpt2-124m_b16_nccl-loopback - \
  --model gpt2-124m --vocab-size 50257 --batch-size 16 --seq-len 1024 --steps 25 --lr 6e-4 --nccl-loopback
# And with every activation recomputation (--recompute all): what the memory it saves costs in speed.
train gpt2-124m_b16_recompute-all - \
  --model gpt2-124m --vocab-size 50257 --batch-size 16 --seq-len 1024 --steps 25 --lr 6e-4 --recompute all
# cuBLASLt autotuning (kernels/cuda/matmul_tuning.h): the first step times the heuristic's first 8 candidates of
# each GEMM shape and keeps the fastest.
STRATA_MATMUL_AUTOTUNE="$d/matmul_autotune.txt" train gpt2-124m_b16_autotune - \
  --model gpt2-124m --vocab-size 50257 --batch-size 16 --seq-len 1024 --steps 25 --lr 6e-4
train gpt2-124m_b32 "--model gpt2-124m --batch 32 --seq 1024" \
  --model gpt2-124m --vocab-size 50257 --batch-size 32 --seq-len 1024 --steps 20 --lr 6e-4
train llama-1.1b-L4_b4 "--model llama-1.1b --layers 4 --vocab 32000 --batch 4 --seq 2048" \
  --model llama-1.1b --n-layer 4 --vocab-size 32000 --batch-size 4 --seq-len 2048 --steps 15 --lr 3e-4
# Attention through cuDNN's fused SDPA engines (--attention cudnn; its deterministic backward, dP in the
# workspace) in place of Strata's flash kernels, beside the runs above.
train gpt2-124m_b16_cudnn - \
  --model gpt2-124m --vocab-size 50257 --batch-size 16 --seq-len 1024 --steps 25 --lr 6e-4 --attention cudnn
train gpt2-124m_b32_cudnn - \
  --model gpt2-124m --vocab-size 50257 --batch-size 32 --seq-len 1024 --steps 20 --lr 6e-4 --attention cudnn
train llama-1.1b-L4_b4_cudnn - \
  --model llama-1.1b --n-layer 4 --vocab-size 32000 --batch-size 4 --seq-len 2048 --steps 15 --lr 3e-4 \
  --attention cudnn
train llama-1.1b-grow2to6 - --model llama-1.1b --n-layer 2 --vocab-size 32000 --batch-size 2 --seq-len 2048 \
  --steps 6 --lr 3e-4 --grow "at=3 steps,op=stack,g=3"
# Width growth on the device (G_direct's split neurons: the plan's row and column gathers run as kernels):
# a half-width 4-layer llama widened to llama-1.1b's layer width.
train llama-1.1b-widen - --model llama-1.1b --n-layer 4 --d-model 1024 --n-head 16 --n-kv-head 2 --d-ff 2816 \
  --vocab-size 32000 --batch-size 2 --seq-len 2048 --steps 6 --lr 3e-4 \
  --grow "at=3 steps,op=direct,d_model=2048,n_head=32,n_kv_head=4,d_ff=5632"

echo
echo "MFU against the H200 / H100 SXM datasheet bf16 peak (989.4 TFLOP/s), model FLOPs (6 N_matmul + 12 L C T)."
echo "| run | exit | strata tokens/s | strata MFU | PyTorch tokens/s | PyTorch MFU | strata / PyTorch | growth |"
echo "|---|---|---|---|---|---|---|---|"
for r in "${rows[@]}"; do echo "| $r |"; done
python3 - "$d" "$out" <<'PY'
import json, statistics, sys
def tps(run):
    try:
        rows = [json.loads(l) for l in open(f"{sys.argv[1]}/{run}/metrics.jsonl")]
    except OSError:
        return None
    steps = [r["tokens_per_s"] for r in rows if r.get("type") == "step"][3:]
    return statistics.median(steps) if steps else None
a = tps("gpt2-124m_b16")
for run, what in (("gpt2-124m_b16_nccl-loopback", "NCCL loopback (ZeRO-0 overlapped all-reduce, world 1)"),
                  ("gpt2-124m_b16_recompute-all", "--recompute all"),
                  ("gpt2-124m_b16_autotune", "STRATA_MATMUL_AUTOTUNE (fastest of 8 cuBLASLt candidates)")):
    b = tps(run)
    if a and b:
        print(f"{what} / plain, gpt2-124m B=16: {b / a:.3f}x tokens/s")
def torch_tps(run):  # the PyTorch baseline's JSON: the last line of the run's log
    try:
        return json.loads(open(f"{sys.argv[2]}/train_{run}.log").read().strip().splitlines()[-1])["tokens_per_s"]
    except Exception:
        return None
for run in ("gpt2-124m_b16", "gpt2-124m_b32", "llama-1.1b-L4_b4"):
    f, c, t = tps(run), tps(run + "_cudnn"), torch_tps(run)
    if f and c:
        vs = f", {c / t:.3f}x PyTorch ({t:,.0f})" if t else ""
        print(f"--attention cudnn, {run}: {c:,.0f} tokens/s, {c / f:.3f}x --attention flash{vs}")
PY
