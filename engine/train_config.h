// engine/train_config.h: everything that defines a training run, its JSON form (saved in every checkpoint and
// in <out>/config.json), and its validation.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "engine/optim.h"
#include "engine/schedule.h"
#include "models/model_config.h"

namespace strata {

struct TrainConfig {
  models::ModelConfig model;
  // Data: the folder `strata prepare` wrote (train_*.bin, val_*.bin, manifest.json).
  std::string data_dir = "out/default";
  std::string tokenizer;  // tokenizer file for samples and bits per byte; empty = the manifest's
  // Batch: B sequences of T tokens per micro-batch; the global batch (tokens per optimizer step) is a
  // multiple of B*T, reached by gradient accumulation.
  int batch_size = 8;
  int seq_len = 128;
  int64_t global_batch_tokens = 0;  // 0 = B*T (no accumulation)
  int64_t steps = 0;                // optimizer steps; 0 = derived from `tokens`
  int64_t tokens = 0;               // training tokens, used when steps == 0
  Schedule schedule;
  AdamWConfig adamw;
  double grad_clip = 1.0;  // global-norm clip; 0 = off
  uint64_t seed = 1337;    // initialisation and data order
  bool shuffle = true;
  // Reporting.
  int64_t log_every = 10;  // progress lines when stdout is not a terminal, and metrics.jsonl rows: every step
  int64_t eval_every = 100;  // validation every N steps (0 = only at the end)
  int eval_batches = 20;     // validation micro-batches per evaluation (0 = the whole validation set)
  int64_t sample_every = 0;  // text samples every N steps (0 = only at the end)
  int sample_tokens = 48;
  std::string sample_prompt;  // empty = start from <|endoftext|>
  float temperature = 0.8f;
  int top_k = 40;
  // Output.
  std::string out_dir = "out/run";
  int64_t ckpt_every = 0;  // checkpoint every N steps (0 = only at the end)
  int keep_last = 2;       // checkpoints kept (0 = all)
  int threads = 0;         // OpenMP threads (0 = all cores)
  int64_t stop_at = 0;     // stop after this step as if interrupted (tests resume); 0 = run to the end

  int accumulation() const { return static_cast<int>(global_batch_tokens / (int64_t{batch_size} * seq_len)); }
  // Resolves defaults (global batch, steps from tokens, schedule total) and checks every field; errors are
  // one line naming the option.
  void finalize();
  nlohmann::json to_json() const;
  static TrainConfig from_json(const nlohmann::json& j);
};

}  // namespace strata
