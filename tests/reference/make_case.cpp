// tests/reference/make_case.cpp: writes the inputs of one PyTorch reference case (a test-support tool, not
// installed; tests/reference/regenerate.sh drives it).
//
//   make_case CASE OUT_DIR      CASE: llama_gqa | gpt2 (--list prints them)
//
// Writes into OUT_DIR (created when missing):
//   case.json          {"name", "model": <model config JSON (models/model_config_json.h)>, "B", "T", "steps",
//                       "init_seed", "batch_seed", "optimizer": {beta1, beta2, eps, weight_decay, grad_clip},
//                       "schedule": {kind, max_lr, min_lr_frac, warmup_steps, total_steps, decay_frac}}
//   init.safetensors   strata::init_params(seed), saved by save_params_safetensors (F32, layer-indexed)
//   batch.safetensors  "inputs", "targets": I32 (B,T), seeded uniform tokens; a few targets are -1 (ignored)
//   grow_small.safetensors   the small model the growth cases grow: init.safetensors with every gain and bias
//                      (all ones and zeros at init, so the same in every layer) moved by a seeded uniform
//                      offset in [-0.25, 0.25), so a growth operator that fails to copy or zero one shows
// tests/reference/torch_reference.py then adds golden.safetensors, and tests/engine/reference_test.cpp
// compares the engine against it; tests/reference/torch_growth_reference.py grows grow_small in torch and
// adds grown_<growth>.safetensors, which tests/growth/reference_growth_test.cpp compares against.
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "engine/check.h"
#include "engine/checkpoint.h"
#include "engine/fileio.h"
#include "engine/params.h"
#include "engine/safetensors.h"
#include "models/model_config.h"
#include "models/model_config_json.h"

namespace {

using strata::models::Family;
using strata::models::ModelConfig;

struct Case {
  const char* name;
  ModelConfig model;
  int B, T, steps;
  uint64_t init_seed, batch_seed;
  double grad_clip;  // between the step norms, so both the clipped and the unclipped branch run
  // AdamW with eps 1e-4 rather than the usual 1e-8, so the final parameters compare sharply. AdamW's update
  // m^/(sqrt(v^) + eps) has slope up to 1/eps in g near g = 0, so an fp32 gradient error dg (~5e-8 here)
  // moves an element by up to ~2 lr dg / eps per step; with eps 1e-8 that is a random fraction of lr wherever
  // |g| is near its roundoff (GPT-2's key-bias gradient is analytically zero: softmax ignores the shift
  // q.b_k), with eps 1e-4 it is < 1e-3 of the update everywhere. eps still matters for every |g| below ~1e-3
  // (GPT-2's gains and biases), so a misplaced eps (inside the sqrt, missing) still shows.
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-4, weight_decay = 0.1;
  // Cosine with warmup 1 over 3 steps: lr = max_lr, max_lr (p = 0), 0.55 max_lr (p = 1/2).
  const char* schedule = "cosine";
  double max_lr = 1e-2, min_lr_frac = 0.1, decay_frac = 0.2;
  long warmup_steps = 1, total_steps = 3;
};

ModelConfig model(const char* name, Family family, int kv_heads, int d_ff) {
  ModelConfig c;
  c.name = name;
  c.family = family;
  c.n_layer = 2;
  c.d_model = 32;
  c.n_head = 4;
  c.n_kv_head = kv_heads;
  c.d_ff = d_ff;
  c.vocab_size = 67;  // odd, prime: no accidental alignment
  c.max_seq_len = 16;
  return c;
}

std::vector<Case> cases() {
  return {
      {"llama_gqa", model("llama_gqa", Family::kLlama, 2, 40), 3, 9, 3, 1001, 2001, 2.7},
      {"gpt2", model("gpt2", Family::kGpt2, 4, 128), 3, 9, 3, 1002, 2002, 2.7},
  };
}

void write_case(const Case& c, const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  const nlohmann::json j = {
      {"name", c.name},
      {"model", strata::models::model_config_to_json(c.model)},
      {"B", c.B},
      {"T", c.T},
      {"steps", c.steps},
      {"init_seed", c.init_seed},
      {"batch_seed", c.batch_seed},
      {"optimizer",
       {{"beta1", c.beta1},
        {"beta2", c.beta2},
        {"eps", c.eps},
        {"weight_decay", c.weight_decay},
        {"grad_clip", c.grad_clip}}},
      {"schedule",
       {{"kind", c.schedule},
        {"max_lr", c.max_lr},
        {"min_lr_frac", c.min_lr_frac},
        {"warmup_steps", c.warmup_steps},
        {"total_steps", c.total_steps},
        {"decay_frac", c.decay_frac}}},
  };
  strata::write_file_atomic((dir / "case.json").string(), j.dump(2) + "\n");

  strata::ParamLayout layout(c.model);
  strata::ParamBuffer params(layout);
  strata::init_params(params, c.init_seed);
  strata::save_params_safetensors((dir / "init.safetensors").string(), params,
                                  {{"case", c.name}, {"generator", "tests/reference/make_case"}});

  // The growth cases' small model: gains and biases off their constant init (53-bit uniforms from
  // mt19937_64, whose sequence the standard fixes, unlike std's distributions).
  std::mt19937_64 grow_rng(c.init_seed ^ 0x67726f77ull);  // "grow"
  for (const strata::ParamEntry& e : layout.entries()) {
    if (e.spec.shape.size() != 1) continue;
    float* w = params.tensor(e.spec.name);
    for (int64_t i = 0; i < e.numel(); ++i) {
      const double u = static_cast<double>(grow_rng() >> 11) * 0x1.0p-53;
      w[i] += static_cast<float>(0.5 * u - 0.25);
    }
  }
  strata::save_params_safetensors((dir / "grow_small.safetensors").string(), params,
                                  {{"case", c.name}, {"generator", "tests/reference/make_case"}});

  // Uniform tokens from a portable generator (mt19937_64's sequence is fixed by the standard; the modulo
  // bias is irrelevant here). Ignored targets at three places, one per sequence.
  std::mt19937_64 rng(c.batch_seed);
  const size_t n = static_cast<size_t>(c.B) * static_cast<size_t>(c.T);
  std::vector<int32_t> inputs(n), targets(n);
  for (auto& x : inputs) x = static_cast<int32_t>(rng() % static_cast<uint64_t>(c.model.vocab_size));
  for (auto& y : targets) y = static_cast<int32_t>(rng() % static_cast<uint64_t>(c.model.vocab_size));
  for (int b = 0; b < c.B; ++b) targets[static_cast<size_t>(b * c.T + (2 + 3 * b) % c.T)] = -1;
  const std::vector<int64_t> shape = {c.B, c.T};
  strata::write_safetensors((dir / "batch.safetensors").string(),
                            {{"inputs", strata::DType::kI32, shape, inputs.data()},
                             {"targets", strata::DType::kI32, shape, targets.data()}},
                            {{"case", c.name}});
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::vector<Case> all = cases();
    if (argc == 2 && std::string(argv[1]) == "--list") {
      for (const Case& c : all) std::printf("%s\n", c.name);
      return 0;
    }
    STRATA_REQUIRE(argc == 3, "usage: make_case CASE OUT_DIR (make_case --list for the cases)");
    for (const Case& c : all) {
      if (c.name == std::string(argv[1])) {
        write_case(c, argv[2]);
        return 0;
      }
    }
    STRATA_FAIL("unknown case '", argv[1], "' (make_case --list for the cases)");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_case: error: %s\n", e.what());
    return 1;
  }
}
