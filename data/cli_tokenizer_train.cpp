// `strata tokenizer train`: trains a byte-level BPE vocabulary (data/bpe_train.h) on text files and writes it as a
// tiktoken rank file. With no --input it trains on the embedded State of the Union corpus.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "data/bpe_train.h"
#include "data/cli.h"
#include "data/documents.h"
#include "data/tokenizer.h"
#include "engine/check.h"
#include "engine/fileio.h"
#include "engine/parallel.h"

namespace strata::data {
namespace {

struct TrainArgs {
  std::vector<std::string> inputs;
  std::string output;
  BpeTrainOptions bpe;
  bool no_progress = false;
};

// Fails before any work if the output cannot be written there (missing folder, a folder in the way).
void check_output_path(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path p(path);
  STRATA_REQUIRE(!p.filename().empty(), "output '", path, "': not a file name");
  std::error_code ec;
  STRATA_REQUIRE(!fs::is_directory(p, ec), "output '", path, "': is a folder");
  const fs::path dir = p.parent_path().empty() ? fs::path(".") : p.parent_path();
  STRATA_REQUIRE(fs::is_directory(dir, ec), "output '", path, "': folder '", dir.string(), "' does not exist");
}

void run_train(const TrainArgs& args) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  STRATA_REQUIRE(args.bpe.vocab_size >= 257, "--vocab-size ", args.bpe.vocab_size,
                 " is too small: it must be at least 257 (256 bytes + <|endoftext|>)");
  STRATA_REQUIRE(args.bpe.min_frequency >= 1, "--min-frequency must be at least 1");
  check_output_path(args.output);

  const std::vector<std::string> files = expand_inputs(args.inputs);
  std::printf("strata tokenizer train: vocab size %u, min frequency %llu, %d threads, %zu input file%s -> %s\n",
              args.bpe.vocab_size, static_cast<unsigned long long>(args.bpe.min_frequency),
              resolve_threads(args.bpe.threads), files.size(), files.size() == 1 ? "" : "s", args.output.c_str());
  std::fflush(stdout);
  const std::vector<Document> docs = read_documents(files);
  std::vector<std::string_view> texts;
  texts.reserve(docs.size());
  for (const Document& d : docs) texts.push_back(d.text);
  const double read_s = std::chrono::duration<double>(Clock::now() - t0).count();

  BpeTrainOptions bpe = args.bpe;
  bpe.progress = !args.no_progress;
  const BpeTrainResult r = train_bpe_detailed(texts, bpe);
  const Tokenizer tokenizer = Tokenizer::from_tokens(r.tokens);
  tokenizer.save(args.output);
  const double total_s = std::chrono::duration<double>(Clock::now() - t0).count();

  std::printf("  %llu documents, %.2f MB, %llu pieces (%llu unique)\n", static_cast<unsigned long long>(r.documents),
              static_cast<double>(r.bytes) / 1e6, static_cast<unsigned long long>(r.pieces),
              static_cast<unsigned long long>(r.unique_pieces));
  std::printf("  %zu merges (last pair count %llu); vocab size %u with <|endoftext|> = %u\n", r.merges.size(),
              static_cast<unsigned long long>(r.merge_counts.empty() ? 0 : r.merge_counts.back()),
              tokenizer.vocab_size(), tokenizer.eot());
  std::printf("  training text: %llu tokens, %.3f bytes/token\n", static_cast<unsigned long long>(r.tokens_out),
              r.tokens_out ? static_cast<double>(r.bytes) / static_cast<double>(r.tokens_out) : 0.0);
  std::printf("  %.2f s (read %.2f, count %.2f, merge %.2f); wrote %s\n", total_s, read_s, r.seconds_count,
              r.seconds_merge, args.output.c_str());
}

}  // namespace

void add_tokenizer_train_command(CLI::App& tokenizer_app) {
  auto args = std::make_shared<TrainArgs>();
  const std::string data = default_data_dir();
  CLI::App* cmd = tokenizer_app.add_subcommand(
      "train", "Train a byte-level BPE vocabulary on text files and write it as a tiktoken rank file");
  cmd->add_option("--input", args->inputs,
                  std::string("Training text: ") + kDocumentFormatsHelp + " [default: " + data + "/sotu.jsonl.xz]");
  cmd->add_option("--output", args->output, "Output rank file (tiktoken format; <|endoftext|> = the last id)")
      ->required();
  cmd->add_option("--vocab-size", args->bpe.vocab_size,
                  "Vocabulary size including <|endoftext|> (>= 257): 256 bytes + merges + 1");
  cmd->add_option("--threads", args->bpe.threads, "Threads for pre-tokenizing (0 = all cores); no effect on the result");
  cmd->add_option("--min-frequency", args->bpe.min_frequency,
                  "A merge needs its pair to occur at least this often; fewer possible merges is an error");
  cmd->add_flag("--no-progress", args->no_progress, "No progress lines on stderr");
  cmd->callback([args, data, cmd] {
    TrainArgs a = *args;
    if (cmd->count("--input") == 0) a.inputs = {data + "/sotu.jsonl.xz"};
    run_train(a);
  });
}

}  // namespace strata::data
