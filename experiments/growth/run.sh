#!/usr/bin/env bash
# A first small-scale reproduction of "Stacking Your Transformers" on the embedded corpus, runnable on 2 cores:
# scratch vs the depth operators (stack, interpolate, zero, random, learn) vs two width operators (direct, learn), all at
# the same total training FLOPs, several seeds per arm; then experiments/growth/analyze.py writes
# OUT/summary.json and OUT/growth_repro.png (see experiments/growth/README.md).
#
#   bash experiments/growth/run.sh                          # defaults: 9 arms x 3 seeds, ~30 min on 2 quiet cores
#   SEEDS=1 ARMS="scratch stack" BUDGET=1e12 OUT=out/g_smoke bash experiments/growth/run.sh   # smoke test
#
# Environment (defaults in brackets):
#   BUDGET [9e12]        training FLOPs of every run, both phases together (strata train --flops)
#   GROW_AT [204800]     growth point in training tokens (200 steps of 1024 tokens: ~10% of the budget)
#   SEEDS [3]            a count N (seeds 1..N) or a list ("1 2 3"); seed = init and data order, shared by arms
#   ARMS [scratch stack interpolate zero random learn width width_learn small]; small = the 2-layer base, never
#                        grown; width = G_direct in width, width_learn = G_learn in width (LEARN_STEPS too)
#   JOBS [2]             runs in parallel;  THREADS [1]: threads per run
#   OUT [out/growth_repro]   DATA [out/growth_data]: a 2048-token BPE vocabulary trained on SOTU, the last 5%
#                        of its speeches held out for validation (prepared here when missing)
#   STRATA [build it]    path of a strata binary to use instead of building the release preset
#   LR [3e-3]  WARMUP [30]  BATCH [8]  SEQ [128]  EVAL_EVERY [25]  EVAL_BATCHES [8]
#   MASK_STEPS [50] (random)  LEARN_STEPS [30] (learn)  KEEP_CKPT [0] (1 keeps each run's final checkpoint)
# Resumable: a finished run (OUT/runs/<arm>/seed<N>/DONE) is skipped; a run stopped by Ctrl-C / SIGTERM (which
# this script forwards to its runs: each finishes its step and checkpoints) continues bit-identically with
# `strata train --resume`; a run killed without a checkpoint starts over.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

BUDGET=${BUDGET:-9e12}
GROW_AT=${GROW_AT:-204800}
SEEDS=${SEEDS:-3}
ARMS=${ARMS:-"scratch stack interpolate zero random learn width width_learn small"}
JOBS=${JOBS:-2}
THREADS=${THREADS:-1}
OUT=${OUT:-out/growth_repro}
DATA=${DATA:-out/growth_data}
LR=${LR:-3e-3}
WARMUP=${WARMUP:-30}
BATCH=${BATCH:-8}
SEQ=${SEQ:-128}
EVAL_EVERY=${EVAL_EVERY:-25}
EVAL_BATCHES=${EVAL_BATCHES:-8}
MASK_STEPS=${MASK_STEPS:-50}
LEARN_STEPS=${LEARN_STEPS:-30}
KEEP_CKPT=${KEEP_CKPT:-0}
PY=/usr/bin/python3

if [[ $SEEDS =~ ^[0-9]+$ ]]; then seeds=$(seq 1 "$SEEDS"); else seeds=${SEEDS//,/ }; fi
seeds=$(echo $seeds)
ARMS=$(echo ${ARMS//,/ })

# --- the arms -------------------------------------------------------------------------------------------------
# Target: llama-tiny's width (C=128, NH=4, KVH=2, F=352) with 8 layers. Depth arms start from 2 layers (g = 4),
# the width arm from half width (C=64, NH=2, KVH=1, F=176; the head dim 32 stays, KVH follows the GQA ratio).
# Every grown arm uses the paper's policies (fresh AdamW, LR schedule restarted with the same warmup), the
# defaults of --grow.
arm_args() {  # sets ARGS
  local at="at=$GROW_AT tokens"
  case $1 in
    scratch) ARGS=(--n-layer 8) ;;
    stack) ARGS=(--n-layer 2 --grow "$at,op=stack,g=4") ;;
    interpolate) ARGS=(--n-layer 2 --grow "$at,op=interpolate,g=4") ;;
    zero) ARGS=(--n-layer 2 --grow "$at,op=zero,g=4") ;;
    random) ARGS=(--n-layer 2 --grow "$at,op=random,g=4,mask_steps=$MASK_STEPS") ;;
    learn) ARGS=(--n-layer 2 --grow "$at,op=learn,g=4,learn_steps=$LEARN_STEPS") ;;
    width) ARGS=(--n-layer 8 --d-model 64 --n-head 2 --n-kv-head 1 --d-ff 176
      --grow "$at,op=direct,d_model=128,d_ff=352") ;;
    width_learn) ARGS=(--n-layer 8 --d-model 64 --n-head 2 --n-kv-head 1 --d-ff 176
      --grow "$at,op=learn,d_model=128,n_kv_head=2,d_ff=352,learn_steps=$LEARN_STEPS") ;;
    small) ARGS=(--n-layer 2) ;;  # optional reference: the depth arms' base model, never grown

    *) return 1 ;;
  esac
}
run_cmd() {  # sets CMD: the strata command line of one run (arm, seed)
  arm_args "$1"
  CMD=(train --data "$DATA" --model llama-tiny "${ARGS[@]}" --batch-size "$BATCH" --seq-len "$SEQ"
    --flops "$BUDGET" --lr "$LR" --warmup "$WARMUP" --seed "$2" --eval-every "$EVAL_EVERY"
    --eval-batches "$EVAL_BATCHES" --sample-tokens 0 --log-every 50 --keep-last 1 --threads "$THREADS"
    --out "$OUT/runs/$1/seed$2")
}
for a in $ARMS; do
  arm_args "$a" ||
    { echo "growth: error: unknown arm '$a' (arms: scratch stack interpolate zero random learn width width_learn small)" >&2; exit 1; }
done
[[ -n $seeds ]] || { echo "growth: error: SEEDS is empty" >&2; exit 1; }

# Every run folder keeps its command line (cmd.txt): a finished run is reused only with the same parameters
# (--threads aside), so one OUT never mixes two setups.
no_threads() { sed 's/ --threads [0-9]*//'; }
todo=()
for s in $seeds; do
  for a in $ARMS; do
    dir=$OUT/runs/$a/seed$s
    run_cmd "$a" "$s"
    if [[ -f $dir/cmd.txt && $(no_threads <"$dir/cmd.txt") != "$(echo "${CMD[*]}" | no_threads)" ]]; then
      echo "growth: error: $dir was run with other parameters ($(cat "$dir/cmd.txt")); use another OUT or delete it" >&2
      exit 1
    fi
    if [[ -f $dir/DONE ]]; then echo "growth: $a seed $s: already done"; else todo+=("$a $s"); fi
  done
done

# --- analysis dependencies, checked first so that a missing package does not surface after the runs ------------
if ! $PY -c 'import numpy, matplotlib' 2>/dev/null; then
  echo "growth: installing python3-matplotlib (Debian) for the analysis"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      python3-numpy python3-matplotlib >/dev/null; } ||
    { echo "growth: error: $PY lacks numpy/matplotlib and apt-get could not install python3-matplotlib" >&2; exit 1; }
fi

# --- the binary -----------------------------------------------------------------------------------------------
if [[ -n ${STRATA:-} ]]; then
  strata=$(realpath "$STRATA")
  [[ -x $strata ]] || { echo "growth: error: STRATA=$STRATA is not an executable" >&2; exit 1; }
else
  bash scripts/setup.sh
  cmake --preset release >/dev/null
  cmake --build --preset release -j "$(nproc)"
  strata=$root/build/release/strata
fi

# --- the data, when missing: a 2048-token vocabulary (with 8192 the LM head is ~40% of the target's FLOPs and
# the 2-layer base costs half the target per token) and in-domain validation (the last 5% of the SOTU speeches;
# Moby-Dick, the main job's validation set, is far from the training text) ---------------------------------------
if [[ ! -f $DATA/manifest.json ]]; then
  mkdir -p "$DATA"
  if [[ ! -f $DATA/tok2k.tiktoken ]]; then
    "$strata" tokenizer train --no-progress --vocab-size 2048 --input data/default/sotu.jsonl.xz \
      --output "$DATA/tok2k.tiktoken"
  fi
  "$strata" prepare --no-progress --tokenizer "$DATA/tok2k.tiktoken" --input data/default/sotu.jsonl.xz \
    --val-fraction 0.05 --out "$DATA" --overwrite
fi

mkdir -p "$OUT/runs"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit="$commit+dirty"
cat >"$OUT/experiment.json" <<EOF
{"budget_flops": $BUDGET, "grow_at_tokens": $GROW_AT, "seeds": [$(echo "$seeds" | sed 's/ /, /g')],
 "arms": [$(printf '"%s", ' $ARMS | sed 's/, $//')], "lr": $LR, "warmup": $WARMUP, "batch_size": $BATCH,
 "seq_len": $SEQ, "eval_every": $EVAL_EVERY, "eval_batches": $EVAL_BATCHES, "mask_steps": $MASK_STEPS,
 "learn_steps": $LEARN_STEPS, "jobs": $JOBS, "threads": $THREADS, "data": "$DATA", "commit": "$commit"}
EOF

# One run: OUT/runs/<arm>/seed<N>/ (config.json, metrics.jsonl, train.log, cmd.txt, wall_s, DONE).
run_one() {
  local arm=$1 seed=$2 dir=$OUT/runs/$1/seed$2
  run_cmd "$arm" "$seed"
  mkdir -p "$dir"
  printf '%s\n' "${CMD[*]}" >"$dir/cmd.txt"
  local -a launch
  if compgen -G "$dir/ckpt-*" >/dev/null; then
    launch=(train --resume "$dir" --threads "$THREADS")
    echo "growth: $arm seed $seed: resuming from $(basename "$(compgen -G "$dir/ckpt-*" | sort | tail -1)")"
  else
    launch=("${CMD[@]}" --overwrite)
    echo "growth: $arm seed $seed: starting"
  fi
  local t0 rc=0
  t0=$(date +%s.%N)
  # Own session: a terminal Ctrl-C reaches only this script, which forwards one SIGTERM (strata then finishes
  # its step and checkpoints; a second signal would kill it without one).
  setsid "$strata" "${launch[@]}" >>"$dir/train.log" 2>&1 &
  echo $! >"$dir/.pid"
  wait $! || rc=$?
  if ((rc != 0 && rc != 130 && rc != 143)) && [[ ${launch[1]} == --resume ]]; then
    echo "growth: $arm seed $seed: --resume failed ($(tail -n 1 "$dir/train.log")); starting over"
    rc=0
    setsid "$strata" "${CMD[@]}" --overwrite >>"$dir/train.log" 2>&1 &
    echo $! >"$dir/.pid"
    wait $! || rc=$?
  fi
  rm -f "$dir/.pid"
  if ((rc == 0)); then
    echo "$(date +%s.%N) $t0" | awk '{printf "%.1f\n", $1 - $2}' >>"$dir/wall_s"
    ((KEEP_CKPT)) || rm -rf "$dir"/ckpt-*
    touch "$dir/DONE"
    echo "growth: $arm seed $seed: done in $(tail -1 "$dir/wall_s") s, $(grep -o 'val loss [0-9.]*' "$dir/train.log" | tail -1)"
  elif ((rc == 130 || rc == 143)) && compgen -G "$dir/ckpt-*" >/dev/null; then
    echo "growth: $arm seed $seed: interrupted, checkpoint written (a rerun continues it)"
  elif ((rc == 130 || rc == 143)); then
    echo "growth: $arm seed $seed: interrupted before its first step (a rerun starts it over)"
  else
    echo "growth: $arm seed $seed: FAILED (status $rc), last lines of $dir/train.log:" >&2
    tail -n 3 "$dir/train.log" >&2
  fi
  return $rc
}

stopping=0
on_signal() {
  stopping=1
  echo "growth: stopping: the runs finish their step and checkpoint" >&2
  local f
  for f in "$OUT"/runs/*/*/.pid; do
    if [[ -f $f ]]; then kill -TERM "$(cat "$f")" 2>/dev/null || true; fi
  done
}
trap on_signal INT TERM

t_start=$(date +%s)
echo "growth: ${#todo[@]} runs to do, $JOBS at a time x $THREADS thread(s); BUDGET=$BUDGET FLOPs, GROW_AT=$GROW_AT tokens, seeds: $seeds"
failed=0
for job in "${todo[@]}"; do
  ((stopping)) && break
  while (($(jobs -rp | wc -l) >= JOBS)); do
    wait -n || { ((stopping)) || failed=1; }
  done
  ((stopping)) && break
  # shellcheck disable=SC2086
  run_one $job &
done
while (($(jobs -rp | wc -l) > 0)); do wait -n || { ((stopping)) || failed=1; }; done
trap - INT TERM
echo "growth: runs took $(($(date +%s) - t_start)) s"
if ((stopping)); then echo "growth: interrupted; rerun the same command to continue" >&2; exit 130; fi
if ((failed)); then echo "growth: error: some runs failed (see above); rerun to retry them" >&2; exit 1; fi

$PY experiments/growth/analyze.py "$OUT"
