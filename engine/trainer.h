// engine/trainer.h: the training loop behind `strata train`, and the evaluation pass behind `strata eval`.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/loader.h"
#include "data/tokenizer.h"
#include "engine/model.h"
#include "engine/train_config.h"

namespace strata {

// Trains cfg (already finalize()d). With resume_ckpt (a checkpoint folder) the parameters, moments, step,
// token and FLOP counters and the loader position come from it, and the run continues bit-identically.
// Without it, an out_dir that already holds checkpoints is refused unless overwrite is set. SIGINT or SIGTERM
// ends the run after the current step with a checkpoint; returns 0, or 128 + the signal when interrupted.
int run_training(const TrainConfig& cfg, const std::string& resume_ckpt, bool overwrite);

struct EvalResult {
  double loss = 0.0;  // mean cross-entropy (nats per token) over the evaluated targets
  double bits_per_byte = 0.0;
  int64_t tokens = 0;  // targets evaluated
  int64_t bytes = 0;   // their UTF-8 bytes (special tokens count 0)
  int batches = 0;
  double nats = 0.0;  // the summed cross-entropy (loss x tokens)
};

// A loader over `shards` in natural order with the model's B, T and vocabulary (every token is checked once
// here, not at each evaluation).
data::DataLoader eval_loader(const Model& model, const std::vector<std::string>& shards);
// Evaluates `model` on the first `batches` batches of `loader` (from its start; 0 = every batch of one
// epoch). The tokenizer gives the byte count for bits per byte.
EvalResult evaluate(Model& model, data::DataLoader& loader, int batches, const data::Tokenizer& tok);

// The manifest.json `strata prepare` wrote in data_dir; a null JSON when there is none or it is not an
// object.
nlohmann::json data_manifest(const std::string& data_dir);

// The shards of one split ("train" or "val") in a prepared data folder, sorted; empty when there are none.
std::vector<std::string> split_shards(const std::string& data_dir, const std::string& split);

}  // namespace strata
