#!/usr/bin/env bash
# Data-parallel training on the CPU backend under mpirun, side by side in one run: 1 rank against 2 ranks
# with ZeRO-0 and ZeRO-1 at the same global batch. Prints, per configuration, the measured bytes each rank sent
# per step (the communicator's count, metrics.jsonl "comm_bytes") beside the ring formula of
# growth/comm_cost.h (ZeRO-0: 2 (R-1)/R N x 4 bytes; ZeRO-1: (R-1)/R N x 4 + (R-1)/R N x 4) and their ratio,
# median tokens/s, the ratio to 1 rank, the optimizer state each rank holds, and the final loss (1 and 2 ranks
# train the same model on the same samples, so it agrees to reduction order).
#
# Usage: bash bench/dist_train_bench.sh [BUILD_DIR] [extra strata train flags]
#   env: STEPS (default 20), NP (default 2), THREADS per rank (default 1), DATA (a prepared folder, default
#        out/default, prepared when missing), MODEL_FLAGS (default: llama-tiny, 4 layers, width 256)
# On this 2-core machine the ranks share the cores (1 thread each), so tokens/s shows the cost of the
# collectives and of a rank's smaller share, not a speedup; on a many-core host give THREADS.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/release}
shift || true
strata="$build/strata"
[[ -x "$strata" ]] || { echo "dist_train_bench: no $strata (build first)" >&2; exit 1; }
command -v mpirun >/dev/null || { echo "dist_train_bench: mpirun missing (bash scripts/setup.sh)" >&2; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
steps=${STEPS:-20}
np=${NP:-2}
threads=${THREADS:-1}
model=${MODEL_FLAGS:---model llama-tiny --n-layer 4 --d-model 256 --n-head 8 --n-kv-head 4 --d-ff 704}
work=$(mktemp -d /tmp/strata_dist_bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

data=${DATA:-out/default}
if [[ ! -f $data/manifest.json ]]; then
  echo "== preparing the default corpus into $data"
  "$strata" prepare --no-progress --out "$data" >/dev/null
fi
base="train --data $data $model --batch-size 4 --seq-len 128 --global-batch-tokens $((4 * 128 * 2 * np))
      --steps $steps --eval-every 0 --eval-batches 2 --sample-tokens 0 --log-every 1000 --threads $threads
      --keep-last 1 $*"

run() {  # name np zero
  local name=$1 ranks=$2 zero=$3
  if [[ $ranks == 1 ]]; then
    "$strata" $base --out "$work/$name" >"$work/$name.log" 2>&1
  else
    mpirun --oversubscribe -np "$ranks" "$strata" $base --zero "$zero" --out "$work/$name" >"$work/$name.log" 2>&1
  fi || { echo "dist_train_bench: $name failed:"; tail -5 "$work/$name.log"; exit 1; }
}
echo "== 1 rank, $np ranks ZeRO-0, $np ranks ZeRO-1; $steps steps each"
run one 1 0
run z0 "$np" 0
run z1 "$np" 1

/usr/bin/env python3 - "$work" "$np" <<'EOF'
import json, os, statistics, struct, sys
work, R = sys.argv[1], int(sys.argv[2])

def steps(name):
    return [json.loads(l) for l in open(os.path.join(work, name, "metrics.jsonl")) if '"type":"step"' in l]

def last_ckpt(name):
    return os.path.join(work, name, sorted(d for d in os.listdir(os.path.join(work, name)) if d.startswith("ckpt-"))[-1])

def st_metadata(path):  # a safetensors header: 8-byte little-endian length, then JSON
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)).get("__metadata__", {})

# N: the flat fp32 parameter buffer the collectives move, from the ZeRO-1 shard's metadata (the layout's
# size, independent of the communicator's byte count).
N = int(st_metadata(os.path.join(last_ckpt("z1"), f"optimizer-00000-of-{R:05d}.safetensors"))["numel"])
ring = (R - 1) / R
formula = {0: 2 * ring * N * 4, 1: ring * N * 4 + ring * N * 4}  # growth/comm_cost.h, fp32 elements
print(f"N = {N} fp32 elements in the flat buffer, R = {R}")
print(f"{'config':<11} {'sent/rank/step':>15} {'formula':>11} {'ratio':>7} {'tok/s':>8} {'vs 1 rank':>9} "
      f"{'AdamW state/rank':>17} {'final loss':>11}")
base = None
for name, zero in (("one", None), ("z0", 0), ("z1", 1)):
    r = steps(name)
    tps = statistics.median(x["tokens_per_s"] for x in (r[3:] or r))
    base = base or tps
    d = last_ckpt(name)
    files = json.load(open(os.path.join(d, "state.json")))["files"]
    opt = sum(os.path.getsize(os.path.join(d, f)) for f in files if f.startswith("optimizer"))
    per_rank = opt / R if zero == 1 else opt  # ZeRO-1: each rank writes (and holds) its shard
    sent = statistics.median(x.get("comm_bytes", 0.0) for x in r)
    want = formula[zero] if zero is not None else 0.0
    ratio = f"{sent / want:7.4f}" if want else "      -"
    label = "1 rank" if zero is None else f"{R} x ZeRO-{zero}"
    print(f"{label:<11} {sent / 1e6:>12.3f} MB {want / 1e6:>8.3f} MB {ratio} {tps:>8.0f} {tps / base:>8.2f}x "
          f"{per_rank / 1e6:>14.2f} MB {r[-1]['loss']:>11.5f}")
EOF
