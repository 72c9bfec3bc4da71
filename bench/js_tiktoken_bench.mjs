// bench/js_tiktoken_bench.mjs: js-tiktoken (1.0.21, pinned in package.json) encode throughput on a text file,
// the baseline for bench/tokenizer_bench.cpp. Usage: node js_tiktoken_bench.mjs TEXT_FILE [REPS] [--json]
// The file is read as UTF-8 (tokenizer_bench --write-text produces it from valid UTF-8 documents), encoded once
// as a warm-up (JIT, rank map), then REPS times; prints the best and median MB/s (10^6 bytes of UTF-8) and
// tokens/s, and the token count so the caller can check both tokenizers agree.
import { getEncoding } from "js-tiktoken";
import { readFileSync } from "node:fs";

const args = process.argv.slice(2).filter((a) => a !== "--json");
const json = process.argv.includes("--json");
if (args.length < 1) {
  console.error("usage: node js_tiktoken_bench.mjs TEXT_FILE [REPS] [--json]");
  process.exit(2);
}
const bytes = readFileSync(args[0]);
const text = bytes.toString("utf8");
const reps = Number(args[1] ?? 3);

const enc = getEncoding("gpt2");
const tokens = enc.encode(text).length;  // warm-up
const times = [];
for (let r = 0; r < reps; ++r) {
  const t0 = process.hrtime.bigint();
  const n = enc.encode(text).length;
  const t1 = process.hrtime.bigint();
  if (n !== tokens) throw new Error(`repetition ${r} gave ${n} tokens, warm-up ${tokens}`);
  times.push(Number(t1 - t0) / 1e9);
}
times.sort((a, b) => a - b);
const best = times[0], median = times[Math.floor(times.length / 2)];
const mb = bytes.length / 1e6;
const result = { bytes: bytes.length, tokens, reps, best_s: best, median_s: median, mb_per_s: mb / best,
                 tokens_per_s: tokens / best };
if (json) console.log(JSON.stringify(result, null, 2));
else console.log(`js-tiktoken: ${bytes.length} bytes, ${tokens} tokens, best ${(best * 1e3).toFixed(1)} ms, ` +
                 `median ${(median * 1e3).toFixed(1)} ms, ${(mb / best).toFixed(2)} MB/s, ` +
                 `${(tokens / best / 1e6).toFixed(3)} Mtokens/s`);
