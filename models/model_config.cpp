#include "models/model_config.h"

#include <cmath>

#include "engine/check.h"

namespace strata::models {
namespace {

ModelConfig llama(const char* name, int layers, int width, int heads, int kv_heads, int ffn, int vocab,
                  int seq) {
  ModelConfig c;
  c.name = name;
  c.family = Family::kLlama;
  c.n_layer = layers;
  c.d_model = width;
  c.n_head = heads;
  c.n_kv_head = kv_heads;
  c.d_ff = ffn;
  c.vocab_size = vocab;
  c.max_seq_len = seq;
  return c;
}

ModelConfig gpt2(const char* name, int layers, int width, int heads, int vocab, int seq) {
  ModelConfig c = llama(name, layers, width, heads, heads, 4 * width, vocab, seq);
  c.family = Family::kGpt2;
  return c;
}

}  // namespace

const char* family_name(Family f) {
  return f == Family::kLlama ? "llama" : "gpt2";
}

void ModelConfig::validate() const {
  const std::string what = "model '" + name + "': ";
  STRATA_REQUIRE(n_layer >= 1, what, "n_layer must be at least 1 (got ", n_layer, ")");
  STRATA_REQUIRE(d_model >= 1, what, "d_model must be at least 1 (got ", d_model, ")");
  STRATA_REQUIRE(n_head >= 1, what, "n_head must be at least 1 (got ", n_head, ")");
  STRATA_REQUIRE(d_model % n_head == 0, what, "n_head ", n_head, " does not divide d_model ", d_model);
  STRATA_REQUIRE(n_kv_head >= 1 && n_head % n_kv_head == 0, what, "n_kv_head ", n_kv_head,
                 " must be at least 1 and divide n_head ", n_head);
  STRATA_REQUIRE(family == Family::kLlama || n_kv_head == n_head, what,
                 "GPT-2 models have no grouped-query attention (n_kv_head ", n_kv_head, " != n_head ", n_head,
                 ")");
  STRATA_REQUIRE(family == Family::kGpt2 || head_dim() % 2 == 0, what,
                 "RoPE needs an even head dim (d_model ", d_model, " / n_head ", n_head, " = ", head_dim(),
                 ")");
  STRATA_REQUIRE(d_ff >= 1, what, "d_ff must be at least 1 (got ", d_ff, ")");
  STRATA_REQUIRE(vocab_size >= 2, what, "vocab_size must be at least 2 (got ", vocab_size, ")");
  STRATA_REQUIRE(max_seq_len >= 1, what, "max_seq_len must be at least 1 (got ", max_seq_len, ")");
  STRATA_REQUIRE(norm_eps > 0.0f && std::isfinite(norm_eps), what, "norm_eps must be positive (got ",
                 norm_eps, ")");
  STRATA_REQUIRE(rope_base > 1.0f && std::isfinite(rope_base), what, "rope_base must be > 1 (got ", rope_base,
                 ")");
}

const std::vector<ModelConfig>& presets() {
  // The paper's LLaMA shapes (../shared/PAPER.md, vocab 32000, context 2048) and GPT-2's published ones.
  static const std::vector<ModelConfig> all = {
      llama("llama-410m", 24, 1024, 16, 16, 2816, 32000, 2048),
      llama("llama-1.1b", 24, 2048, 32, 4, 5632, 32000, 2048),
      llama("llama-3b", 32, 2560, 20, 4, 7040, 32000, 2048),
      llama("llama-7b", 32, 4096, 32, 32, 11008, 32000, 2048),
      gpt2("gpt2-124m", 12, 768, 12, 50257, 1024),
      gpt2("gpt2-350m", 24, 1024, 16, 50257, 1024),
      gpt2("gpt2-774m", 36, 1280, 20, 50257, 1024),
      gpt2("gpt2-1.5b", 48, 1600, 25, 50257, 1024),
      // Small models for CPU runs and tests, sized for an 8192-token trained vocabulary.
      llama("llama-tiny", 4, 128, 4, 2, 352, 8192, 256),
      llama("llama-mini", 8, 256, 8, 4, 704, 8192, 512),
      gpt2("gpt2-tiny", 4, 128, 4, 8192, 256),
      gpt2("gpt2-mini", 8, 256, 8, 8192, 512),
  };
  return all;
}

ModelConfig preset(const std::string& name) {
  std::string known;
  for (const ModelConfig& c : presets()) {
    if (c.name == name) return c;
    known += (known.empty() ? "" : ", ") + c.name;
  }
  STRATA_FAIL("unknown model preset '", name, "' (known: ", known, ")");
}

int64_t TensorSpec::numel_per_layer() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::vector<TensorSpec> tensor_table(const ModelConfig& c) {
  c.validate();
  const int64_t V = c.vocab_size, C = c.d_model, L = c.n_layer, F = c.d_ff, HS = c.head_dim();
  const int64_t NH = c.n_head, KVH = c.n_kv_head, T = c.max_seq_len;
  const InitRule ones{InitKind::kOnes, 0.0}, zeros{InitKind::kZeros, 0.0};
  std::vector<TensorSpec> t;
  // {name, per_layer, shape, init, weight_decay, is_embedding}
  if (c.family == Family::kLlama) {
    const InitRule normal{InitKind::kNormal, std::sqrt(2.0 / (5.0 * static_cast<double>(C)))};
    const InitRule residual{InitKind::kNormal,
                            1.0 / std::sqrt(static_cast<double>(C)) / static_cast<double>(L)};
    t.push_back({"tok_embedding", false, {V, C}, normal, true, true});
    t.push_back({"attn_norm", true, {C}, ones, false, false});
    t.push_back({"attn_qkv", true, {(NH + 2 * KVH) * HS, C}, normal, true, false});
    t.push_back({"attn_out", true, {C, NH * HS}, residual, true, false});
    t.push_back({"mlp_norm", true, {C}, ones, false, false});
    t.push_back({"mlp_gate_up", true, {2 * F, C}, normal, true, false});  // gate rows, then up rows
    t.push_back({"mlp_down", true, {C, F}, residual, true, false});
    t.push_back({"final_norm", false, {C}, ones, false, false});
    t.push_back({"lm_head", false, {V, C}, normal, true, true});
  } else {
    const InitRule normal{InitKind::kNormal, 0.02};
    const InitRule residual{InitKind::kNormal, 0.02 / std::sqrt(2.0 * static_cast<double>(L))};
    t.push_back({"tok_embedding", false, {V, C}, normal, true, true});  // also the LM head (tied)
    t.push_back({"pos_embedding", false, {T, C}, normal, true, true});
    t.push_back({"attn_norm", true, {C}, ones, false, false});
    t.push_back({"attn_norm_bias", true, {C}, zeros, false, false});
    t.push_back({"attn_qkv", true, {3 * C, C}, normal, true, false});
    t.push_back({"attn_qkv_bias", true, {3 * C}, zeros, false, false});
    t.push_back({"attn_out", true, {C, C}, residual, true, false});
    t.push_back({"attn_out_bias", true, {C}, zeros, false, false});
    t.push_back({"mlp_norm", true, {C}, ones, false, false});
    t.push_back({"mlp_norm_bias", true, {C}, zeros, false, false});
    t.push_back({"mlp_up", true, {F, C}, normal, true, false});
    t.push_back({"mlp_up_bias", true, {F}, zeros, false, false});
    t.push_back({"mlp_down", true, {C, F}, residual, true, false});
    t.push_back({"mlp_down_bias", true, {C}, zeros, false, false});
    t.push_back({"final_norm", false, {C}, ones, false, false});
    t.push_back({"final_norm_bias", false, {C}, zeros, false, false});
  }
  return t;
}

ParamCount count_parameters(const ModelConfig& c) {
  ParamCount p;
  for (const TensorSpec& s : tensor_table(c)) {
    const int64_t n = s.numel_per_layer() * (s.per_layer ? c.n_layer : 1);
    (s.is_embedding ? p.embedding : p.non_embedding) += n;
  }
  return p;
}

double train_flops_per_token(const ModelConfig& c, int seq_len) {
  const ParamCount p = count_parameters(c);
  const double head = static_cast<double>(c.vocab_size) * c.d_model;  // the LM head product, tied or not
  const double n_matmul = static_cast<double>(p.non_embedding) + head;
  return 6.0 * n_matmul + 12.0 * c.n_layer * static_cast<double>(c.d_model) * seq_len;
}

}  // namespace strata::models
