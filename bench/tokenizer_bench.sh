#!/usr/bin/env bash
# bench/tokenizer_bench.sh: strata's GPT-2 tokenizer against js-tiktoken on the same text, in one run.
#
#   bench/tokenizer_bench.sh [BUILD_DIR]      (default build/release; configured as Release if it does not exist)
#   env: REPS (strata repetitions, default 5), JS_REPS (js-tiktoken repetitions, default 3),
#        MAX_THREADS (largest strata thread count, default all cores)
#
# Installs js-tiktoken into bench/node_modules with `npm ci` if missing, builds tokenizer_bench if needed, runs
# tokenizer_bench (which also writes the benchmarked text) and js_tiktoken_bench.mjs on that text, checks that both
# produce the same number of tokens, and prints: strata 1 thread / js-tiktoken, strata N threads / strata 1
# thread, and the scaling efficiency (speedup / N).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$root/build/release}
reps=${REPS:-5}
js_reps=${JS_REPS:-3}
max_threads=${MAX_THREADS:-0}

if [[ ! -d "$root/bench/node_modules/js-tiktoken" ]]; then
  echo "== installing js-tiktoken into bench/node_modules (npm ci)" >&2
  (cd "$root/bench" && npm ci --no-audit --no-fund >&2)
fi
if [[ ! -f "$build/CMakeCache.txt" ]]; then
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >&2
fi
cmake --build "$build" --target tokenizer_bench >&2

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "== strata tokenizer_bench (reps $reps)" >&2
"$build/bench/tokenizer_bench" --reps "$reps" --max-threads "$max_threads" --json --write-text "$tmp/text.txt" \
  > "$tmp/strata.json"
echo "== js-tiktoken (reps $js_reps after a warm-up)" >&2
(cd "$root/bench" && node js_tiktoken_bench.mjs "$tmp/text.txt" "$js_reps" --json) > "$tmp/js.json"

node - "$tmp/strata.json" "$tmp/js.json" <<'JS'
const fs = require("fs");
const s = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const j = JSON.parse(fs.readFileSync(process.argv[3], "utf8"));
const one = s.results[0];
console.log(`text: ${s.bytes} bytes (${s.corpus}), ${s.tokens} tokens (strata) / ${j.tokens} tokens (js-tiktoken)`);
console.log(`js-tiktoken 1 thread: ${j.mb_per_s.toFixed(2)} MB/s, ${(j.tokens_per_s / 1e6).toFixed(3)} Mtokens/s`);
console.log("threads   strata MB/s   Mtokens/s   vs js-tiktoken   vs strata 1 thread   efficiency");
for (const r of s.results) {
  const speedup = one.best_s / r.best_s;
  console.log(`${String(r.threads).padStart(7)} ${r.mb_per_s.toFixed(2).padStart(13)} ` +
              `${(r.tokens_per_s / 1e6).toFixed(3).padStart(11)} ${(r.mb_per_s / j.mb_per_s).toFixed(1).padStart(15)}x ` +
              `${speedup.toFixed(2).padStart(19)}x ${(100 * speedup / r.threads).toFixed(0).padStart(11)}%`);
}
const last = s.results[s.results.length - 1];
console.log(`summary: strata 1 thread / js-tiktoken = ${(one.mb_per_s / j.mb_per_s).toFixed(1)}x; ` +
            `strata ${last.threads} threads / strata 1 thread = ${(one.best_s / last.best_s).toFixed(2)}x ` +
            `(efficiency ${(100 * one.best_s / last.best_s / last.threads).toFixed(0)}%)`);
if (s.tokens !== j.tokens) {
  console.error(`token counts differ: strata ${s.tokens}, js-tiktoken ${j.tokens}`);
  process.exit(1);
}
console.log("token counts agree");
JS
