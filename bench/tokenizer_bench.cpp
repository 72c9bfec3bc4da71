// bench/tokenizer_bench.cpp: GPT-2 tokenizer encode throughput on a JSON Lines corpus (default: the State of the
// Union addresses), with 1 thread and every thread count up to the machine's cores.
//
// The documents' "text" fields are joined with "\n\n" into one text, which is encoded whole: 1 thread with
// Tokenizer::encode, t > 1 with Tokenizer::encode_parallel. Each configuration runs --reps times after a warm-up
// (round-robin over the thread counts) and reports the best and median times as MB/s (10^6 bytes) and
// tokens/s. --write-text saves the exact text so bench/js_tiktoken_bench.mjs encodes the same bytes
// (bench/tokenizer_bench.sh runs both and prints ratios).
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "data/documents.h"
#include "data/tokenizer.h"
#include "engine/check.h"
#include "engine/fileio.h"
#include "engine/parallel.h"

namespace {

// The corpus's documents joined with blank lines (JSON Lines or plain text, as `strata prepare` reads them).
std::string load_corpus_text(const std::string& path) {
  std::string text;
  for (const auto& doc : strata::data::read_documents(path)) {
    if (!text.empty()) text += "\n\n";
    text += doc.text;
  }
  STRATA_REQUIRE(!text.empty(), path, ": no documents");
  return text;
}

struct Result {
  int threads;
  double best_s, median_s;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"GPT-2 tokenizer encode throughput", "tokenizer_bench"};
  std::string corpus = std::string(STRATA_DEFAULT_DATA_DIR) + "/sotu.jsonl.xz";
  std::string tokenizer_path = std::string(STRATA_DEFAULT_DATA_DIR) + "/r50k_base.tiktoken.xz";
  std::string write_text;
  int reps = 5;
  int max_threads = 0;
  std::vector<int> thread_list;
  bool json = false;
  app.add_option("--corpus", corpus, "JSON Lines corpus; the \"text\" fields are joined with blank lines");
  app.add_option("--tokenizer", tokenizer_path, "tiktoken rank file");
  app.add_option("--reps", reps, "Timed repetitions per thread count (after one warm-up)")->check(CLI::PositiveNumber);
  app.add_option("--max-threads", max_threads, "Run every thread count 1..this (0 = all cores)");
  app.add_option("--threads", thread_list, "Run only these thread counts instead (e.g. --threads 1 4 16)")
      ->check(CLI::PositiveNumber);
  app.add_option("--write-text", write_text, "Also write the benchmarked text to this file (for js_tiktoken_bench)");
  app.add_flag("--json", json, "Print one JSON object instead of a table");
  CLI11_PARSE(app, argc, argv);

  try {
    const auto tok = strata::data::Tokenizer::load(tokenizer_path);
    const std::string text = load_corpus_text(corpus);
    if (!write_text.empty()) strata::write_file_atomic(write_text, text);
    if (thread_list.empty())
      for (int t = 1; t <= strata::resolve_threads(max_threads); ++t) thread_list.push_back(t);
    const double mb = static_cast<double>(text.size()) / 1e6;

    const size_t tokens = tok.encode(text).size();  // warm-up and reference count
    // Repetitions go round-robin over the thread counts, so a slow phase of a shared machine hits every count
    // alike instead of one count's whole series.
    std::vector<std::vector<double>> times(thread_list.size());
    for (int r = 0; r < reps; ++r)
      for (size_t k = 0; k < thread_list.size(); ++k) {
        const int t = thread_list[k];
        const auto t0 = std::chrono::steady_clock::now();
        const auto ids = t == 1 ? tok.encode(text) : tok.encode_parallel(text, false, t);
        const auto t1 = std::chrono::steady_clock::now();
        STRATA_CHECK(ids.size() == tokens, "thread count ", t, " gave ", ids.size(), " tokens, 1 thread ", tokens);
        times[k].push_back(std::chrono::duration<double>(t1 - t0).count());
      }
    std::vector<Result> results;
    for (size_t k = 0; k < thread_list.size(); ++k) {
      std::sort(times[k].begin(), times[k].end());
      results.push_back(Result{thread_list[k], times[k].front(), times[k][times[k].size() / 2]});
    }

    if (json) {
      nlohmann::json out = {{"corpus", corpus}, {"bytes", text.size()}, {"tokens", tokens}, {"reps", reps},
                            {"results", nlohmann::json::array()}};
      for (const auto& r : results)
        out["results"].push_back({{"threads", r.threads},
                                  {"best_s", r.best_s},
                                  {"median_s", r.median_s},
                                  {"mb_per_s", mb / r.best_s},
                                  {"tokens_per_s", static_cast<double>(tokens) / r.best_s}});
      std::printf("%s\n", out.dump(2).c_str());
    } else {
      std::printf("corpus %s: %zu bytes, %zu tokens, best of %d; speedup relative to %d thread%s\n", corpus.c_str(),
                  text.size(), tokens, reps, results[0].threads, results[0].threads == 1 ? "" : "s");
      std::printf("%8s %10s %10s %10s %12s %9s\n", "threads", "best ms", "median ms", "MB/s", "Mtokens/s", "speedup");
      for (const auto& r : results)
        std::printf("%8d %10.1f %10.1f %10.2f %12.3f %9.2f\n", r.threads, r.best_s * 1e3, r.median_s * 1e3,
                    mb / r.best_s, static_cast<double>(tokens) / r.best_s / 1e6, results[0].best_s / r.best_s);
    }
  } catch (const strata::Error& e) {
    std::fprintf(stderr, "tokenizer_bench: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
