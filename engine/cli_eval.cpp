// `strata eval` (loss, perplexity and bits per byte of a checkpoint on any shard set) and `strata sample`
// (text from a checkpoint, with a KV cache).
#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdio>
#include <memory>
#include <random>

#include "data/tokenizer.h"
#include "engine/check.h"
#include "engine/checkpoint.h"
#include "engine/cli.h"
#include "engine/fileio.h"
#include "engine/parallel.h"
#include "engine/sampler.h"
#include "engine/train_config.h"
#include "engine/trainer.h"

namespace strata {
namespace {

// The tokenizer a checkpoint's run used, unless the user names one.
std::string checkpoint_tokenizer(const CheckpointInfo& info, const std::string& given) {
  if (!given.empty()) return given;
  if (info.trainer.is_object() && info.trainer.contains("config")) {
    const auto& c = info.trainer["config"];
    if (c.contains("tokenizer") && c["tokenizer"].is_string() && !c["tokenizer"].get<std::string>().empty())
      return c["tokenizer"].get<std::string>();
  }
  STRATA_FAIL("checkpoint ", info.dir, " does not name its tokenizer; give --tokenizer");
}

struct EvalOptions {
  std::string checkpoint, tokenizer;
  std::vector<std::string> shards;
  std::string data_dir;
  std::string split = "val";
  int batch_size = 8, seq_len = 0, batches = 0, threads = 0;
};

void run_eval(const EvalOptions& o) {
  set_compute_threads(o.threads);
  const std::string dir = resolve_checkpoint(o.checkpoint);
  const CheckpointInfo info = read_checkpoint_info(dir);
  std::vector<std::string> shards;
  if (!o.shards.empty()) {
    shards = expand_inputs(o.shards);
  } else {
    std::string data = o.data_dir;
    if (data.empty() && info.trainer.contains("config")) data = info.trainer["config"].value("data_dir", "");
    STRATA_REQUIRE(!data.empty(), "give --shards or --data");
    shards = split_shards(data, o.split);
    STRATA_REQUIRE(!shards.empty(), "data folder ", data, " holds no ", o.split, "_*.bin shards");
  }
  const int T = o.seq_len > 0 ? o.seq_len : std::min(info.model.max_seq_len, 1024);
  Model model(info.model, o.batch_size, T);
  load_checkpoint_params(dir, model.params());
  const data::Tokenizer tok = data::Tokenizer::load(checkpoint_tokenizer(info, o.tokenizer));
  data::DataLoader loader = eval_loader(model, shards);
  const EvalResult r = evaluate(model, loader, o.batches, tok);
  std::printf("checkpoint %s (step %ld), %zu shard%s, %d batches of %d x %d\n", dir.c_str(), info.step,
              shards.size(), shards.size() == 1 ? "" : "s", r.batches, o.batch_size, T);
  std::printf("loss %.4f | perplexity %.3f | bits/byte %.4f | %lld tokens, %lld bytes\n", r.loss,
              std::exp(r.loss), r.bits_per_byte, static_cast<long long>(r.tokens),
              static_cast<long long>(r.bytes));
}

struct SampleCliOptions {
  std::string checkpoint, tokenizer, prompt;
  int tokens = 128, samples = 1, threads = 0;
  float temperature = 0.8f;
  int top_k = 40;
  uint64_t seed = 1;
};

void run_sample(const SampleCliOptions& o) {
  set_compute_threads(o.threads);
  STRATA_REQUIRE(o.tokens >= 1, "--tokens must be at least 1 (got ", o.tokens, ")");
  STRATA_REQUIRE(o.samples >= 1, "--samples must be at least 1 (got ", o.samples, ")");
  STRATA_REQUIRE(o.temperature >= 0, "--temperature must be >= 0 (got ", o.temperature, ")");
  STRATA_REQUIRE(o.top_k >= 0, "--top-k must be >= 0 (got ", o.top_k, ")");
  const std::string dir = resolve_checkpoint(o.checkpoint);
  const CheckpointInfo info = read_checkpoint_info(dir);
  ParamBuffer params{ParamLayout(info.model)};
  load_checkpoint_params(dir, params);
  const data::Tokenizer tok = data::Tokenizer::load(checkpoint_tokenizer(info, o.tokenizer));
  STRATA_REQUIRE(tok.vocab_size() <= static_cast<uint32_t>(info.model.vocab_size), "tokenizer has ",
                 tok.vocab_size(), " tokens, more than the model's vocabulary ", info.model.vocab_size);
  const std::vector<int32_t> prompt = prompt_tokens(tok, o.prompt);
  STRATA_REQUIRE(static_cast<int>(prompt.size()) < info.model.max_seq_len, "the prompt (", prompt.size(),
                 " tokens) leaves no room in the model's context of ", info.model.max_seq_len);
  Generator gen(params);
  std::mt19937_64 rng(o.seed);
  for (int s = 0; s < o.samples; ++s) {
    const std::string text = sample_text(gen, tok, prompt, o.tokens, {o.temperature, o.top_k}, rng);
    if (o.samples > 1) std::printf("--- sample %d\n", s + 1);
    std::printf("%s\n", text.c_str());
  }
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto o = std::make_shared<EvalOptions>();
  CLI::App* cmd =
      app.add_subcommand("eval", "Loss, perplexity and bits per byte of a checkpoint on token shards");
  cmd->add_option("--checkpoint", o->checkpoint, "Checkpoint folder, or a run folder (its newest)")
      ->required();
  cmd->add_option("--shards", o->shards, "Shard files or globs [default: --data's split]");
  cmd->add_option("--data", o->data_dir, "Prepared data folder [default: the run's]");
  cmd->add_option("--split", o->split, "Split of --data: val | train")
      ->check(CLI::IsMember({"val", "train"}));
  cmd->add_option("--tokenizer", o->tokenizer, "Tokenizer for the byte count [default: the run's]");
  cmd->add_option("--batch-size", o->batch_size, "Sequences per batch")->check(CLI::PositiveNumber);
  cmd->add_option("--seq-len", o->seq_len, "Tokens per sequence (0 = the model's context, at most 1024)");
  cmd->add_option("--batches", o->batches, "Batches to evaluate (0 = all)");
  cmd->add_option("--threads", o->threads, "CPU threads (0 = all cores)");
  cmd->callback([o] { run_eval(*o); });
}

void add_sample_command(CLI::App& app) {
  auto o = std::make_shared<SampleCliOptions>();
  CLI::App* cmd =
      app.add_subcommand("sample", "Generate text from a checkpoint (KV cache, temperature, top-k)");
  cmd->add_option("--checkpoint", o->checkpoint, "Checkpoint folder, or a run folder (its newest)")
      ->required();
  cmd->add_option("--prompt", o->prompt, "Text to continue (after <|endoftext|>)");
  cmd->add_option("--tokens", o->tokens, "Tokens to generate per sample (stops early at <|endoftext|>)");
  cmd->add_option("--samples", o->samples, "Number of samples");
  cmd->add_option("--temperature", o->temperature, "Sampling temperature (0 = greedy)");
  cmd->add_option("--top-k", o->top_k, "Sample from the k most likely tokens (0 = all)");
  cmd->add_option("--seed", o->seed, "Random seed");
  cmd->add_option("--tokenizer", o->tokenizer, "Tokenizer [default: the run's]");
  cmd->add_option("--threads", o->threads, "CPU threads (0 = all cores)");
  cmd->callback([o] { run_sample(*o); });
}

}  // namespace strata
