// models/cli.h: model selection flags (a preset plus per-field overrides), shared by every command that
// builds a model, and the `strata model` command that prints an architecture.
#pragma once

#include <optional>
#include <string>

#include "models/model_config.h"

namespace CLI {
class App;
}

namespace strata::models {

struct ModelOptions {
  std::string preset = "llama-tiny";
  std::optional<int> n_layer, d_model, n_head, n_kv_head, d_ff, vocab_size, max_seq_len;
  std::optional<float> norm_eps, rope_base;
};

// Adds --model and one --<field> override per ModelConfig field to `cmd`.
void add_model_options(CLI::App& cmd, ModelOptions& opts);
// The preset with the overrides applied (name becomes "<preset>+overrides" when any is given), validated.
ModelConfig resolve_model(const ModelOptions& opts);

void add_model_command(CLI::App& app);  // strata model

}  // namespace strata::models
