// models/model_config_json.h: ModelConfig <-> JSON, for checkpoints (state.json, safetensors metadata) and
// for the PyTorch reference scripts.
//
//   {"name": "llama-tiny", "family": "llama", "n_layer": 4, "d_model": 128, "n_head": 4, "n_kv_head": 2,
//    "d_ff": 352, "vocab_size": 8192, "max_seq_len": 256, "norm_eps": 1e-05, "rope_base": 10000.0}
//
// Every field is written and every field is required on read; floats are written in their shortest decimal
// form that reads back to the same float.
#pragma once

#include <nlohmann/json.hpp>

#include "models/model_config.h"

namespace strata::models {

nlohmann::json model_config_to_json(const ModelConfig& cfg);

// The inverse of model_config_to_json, then ModelConfig::validate(). Errors are one line naming the field:
// "model config: field 'n_layer' is missing", "... must be an integer", "... unknown family 'bert' (expected
// llama or gpt2)", "... unknown field 'n_layers'".
ModelConfig model_config_from_json(const nlohmann::json& j);

}  // namespace strata::models
