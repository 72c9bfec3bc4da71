// `strata prepare`: text files -> train/validation token shards. With no --input it prepares the embedded
// default corpus (State of the Union for training, Moby-Dick held out) with the GPT-2 tokenizer.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>
#include <memory>

#include "data/cli.h"
#include "data/documents.h"
#include "data/prepare.h"
#include "engine/parallel.h"

namespace strata::data {

const char* default_data_dir() {
  const char* env = std::getenv("STRATA_DATA_DIR");
  return (env && *env) ? env : STRATA_DEFAULT_DATA_DIR;
}

std::string default_tokenizer_path() { return std::string(default_data_dir()) + "/r50k_base.tiktoken.xz"; }

namespace {

void print_split(const char* name, const SplitSummary& s) {
  if (s.documents == 0) return;
  std::printf("  %-5s %8llu documents  %12llu tokens  %10.2f MB  %5.3f bytes/token  %zu shard%s\n", name,
              static_cast<unsigned long long>(s.documents), static_cast<unsigned long long>(s.tokens),
              static_cast<double>(s.bytes) / 1e6,
              s.tokens ? static_cast<double>(s.bytes) / static_cast<double>(s.tokens) : 0.0, s.shards.size(),
              s.shards.size() == 1 ? "" : "s");
}

}  // namespace

void add_prepare_command(CLI::App& app) {
  auto opts = std::make_shared<PrepareOptions>();
  opts->tokenizer_path = default_tokenizer_path();
  opts->out_dir = "out/default";
  auto no_progress = std::make_shared<bool>(false);
  const std::string data = default_data_dir();

  CLI::App* cmd = app.add_subcommand(
      "prepare", "Tokenize text files into train/validation token shards (llm.c format) + manifest.json");
  cmd->add_option("--input", opts->train_inputs,
                  std::string("Training text: ") + kDocumentFormatsHelp + " [default: " + data + "/sotu.jsonl.xz]");
  cmd->add_option("--val", opts->val_inputs,
                  "Held-out text, same formats [default with no --input: " + data + "/moby_dick.jsonl.xz]");
  cmd->add_option("--val-fraction", opts->val_fraction,
                  "Instead of --val: hold out this fraction of the training documents (the last ones)");
  cmd->add_option("--tokenizer", opts->tokenizer_path, "Tokenizer rank file (tiktoken format, .xz allowed)");
  cmd->add_option("--out", opts->out_dir, "Output folder for the shards and manifest.json");
  cmd->add_option("--shard-tokens", opts->shard_tokens, "Tokens per shard (the last shard of a split may be shorter)");
  cmd->add_option("--threads", opts->threads, "Worker threads (0 = all cores)");
  cmd->add_flag("--overwrite", opts->overwrite, "Replace shards already in the output folder");
  cmd->add_flag("--no-progress", *no_progress, "No progress bar");

  cmd->callback([opts, no_progress, data, cmd] {
    PrepareOptions o = *opts;
    if (cmd->count("--input") == 0) {
      o.train_inputs = {data + "/sotu.jsonl.xz"};
      if (cmd->count("--val") == 0 && o.val_fraction == 0.0) o.val_inputs = {data + "/moby_dick.jsonl.xz"};
    }
    o.progress = !*no_progress;
    std::printf("strata prepare: tokenizer %s, %d threads -> %s\n", o.tokenizer_path.c_str(),
                resolve_threads(o.threads), o.out_dir.c_str());
    std::fflush(stdout);
    const PrepareSummary s = prepare(o);
    print_split("train", s.train);
    print_split("val", s.val);
    const double mb = static_cast<double>(s.train.bytes + s.val.bytes) / 1e6;
    std::printf("  vocabulary %u, %.2f s (%.1f MB/s); wrote %s/manifest.json\n", s.vocab_size, s.seconds,
                s.seconds > 0 ? mb / s.seconds : 0.0, o.out_dir.c_str());
  });
}

}  // namespace strata::data
