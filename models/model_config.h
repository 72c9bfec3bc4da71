// models/model_config.h: the architecture of a model, its named presets, and the table of its parameter
// tensors.
//
// Two families share one description:
//   LLaMA-style  pre-RMSNorm (eps 1e-5), SwiGLU MLP, RoPE (base 10000, full head dim), grouped-query
//   attention
//                (n_kv_head divides n_head), no biases, untied embedding and LM head.
//   GPT-2-style  pre-LayerNorm with bias (eps 1e-5), tanh-GELU MLP, learned position embedding, biases on
//   every
//                linear map, LM head tied to the token embedding.
//
// Letters used in shapes: V vocab, C d_model, L n_layer, NH n_head, KVH n_kv_head, HS head dim (= C / NH),
// F d_ff, Tmax max_seq_len.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace strata::models {

enum class Family { kLlama, kGpt2 };
const char* family_name(Family f);

struct ModelConfig {
  std::string name;  // preset name, or "custom"
  Family family = Family::kLlama;
  int n_layer = 0;      // L
  int d_model = 0;      // C
  int n_head = 0;       // NH
  int n_kv_head = 0;    // KVH (GPT-2: = NH)
  int d_ff = 0;         // F: SwiGLU hidden size (LLaMA) or MLP hidden size (GPT-2, 4C)
  int vocab_size = 0;   // V
  int max_seq_len = 0;  // Tmax: RoPE table / learned position rows
  float norm_eps = 1e-5f;
  float rope_base = 10000.0f;  // LLaMA only

  int head_dim() const { return d_model / n_head; }
  bool tied_embeddings() const { return family == Family::kGpt2; }
  bool has_bias() const { return family == Family::kGpt2; }
  bool learned_positions() const { return family == Family::kGpt2; }

  // Throws strata::Error with one line naming the field when the shape is impossible (e.g. heads that do not
  // divide the width, KV heads that do not divide the heads, a non-positive size).
  void validate() const;
};

// Every preset, in a fixed order: the paper's llama-410m/1.1b/3b/7b, GPT-2 124m/350m/774m/1.5b, and small
// presets for CPU runs and tests (llama-tiny, llama-mini, gpt2-tiny, gpt2-mini).
const std::vector<ModelConfig>& presets();
// The preset called `name`; an unknown name is a strata::Error that lists the known ones.
ModelConfig preset(const std::string& name);

// How a tensor is initialised.
enum class InitKind { kNormal, kOnes, kZeros };
struct InitRule {
  InitKind kind = InitKind::kNormal;
  double std = 0.0;  // kNormal: standard deviation (mean 0)
};

// One parameter tensor. Per-layer kinds are one contiguous buffer of shape (L, shape...), the layer
// outermost; global ones have shape `shape`.
struct TensorSpec {
  std::string name;  // safetensors name: per-layer kinds are stored as "<name>" with the L axis first
  bool per_layer = false;
  std::vector<int64_t> shape;  // without the L axis
  InitRule init;
  bool weight_decay = false;  // matrices only (rank 2 per layer: linear maps, embeddings, LM head)
  bool is_embedding = false;  // counted as embedding parameters (token/position embeddings, untied LM head)

  int64_t numel_per_layer() const;
};

// The tensor table of a configuration, in storage order. The initialisation rules:
//   LLaMA (the paper's TinyLlama/lit-gpt code): every linear map and the embedding ~ N(0, sqrt(2 / (5 C)))
//         ("small init"), except the residual-branch outputs attn_out and mlp_down ~ N(0, 1 / (sqrt(C) L));
//         norm gains 1.
//   GPT-2 (GPT-2 / nanoGPT): every linear map and both embeddings ~ N(0, 0.02), except the residual-branch
//         outputs attn_out and mlp_down ~ N(0, 0.02 / sqrt(2 L)); biases 0; LayerNorm gains 1, biases 0.
std::vector<TensorSpec> tensor_table(const ModelConfig& cfg);

struct ParamCount {
  int64_t embedding = 0;      // token (+ position) embeddings, and the LM head when untied
  int64_t non_embedding = 0;  // everything else: the blocks and the final norm
  int64_t total() const { return embedding + non_embedding; }
};
ParamCount count_parameters(const ModelConfig& cfg);

// Training FLOPs per token at sequence length T (forward + backward): 6 N_matmul + 12 L C T, where N_matmul
// counts the parameters used in matrix products (all but the embedding lookups; the LM head counted once,
// tied or not) and 12 L C T is the attention score and value products (PaLM's convention, causality not
// halved).
double train_flops_per_token(const ModelConfig& cfg, int seq_len);

}  // namespace strata::models
