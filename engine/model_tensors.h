// engine/model_tensors.h: what the CPU runner (model.cpp) and the CUDA runner (cuda_model.cpp) share: the
// sizes derived from a config, and pointers to one set of tensors (weights, or their gradients) in a buffer
// laid out by a ParamLayout, for any element type (fp32 on the CPU, bf16 on the device).
#pragma once

#include <cstdint>

#include "engine/check.h"
#include "engine/params.h"
#include "models/model_config.h"

namespace strata {

// Sizes derived from the config.
struct ModelDims {
  int C, NH, KVH, HS, QKV, Fd, H1, V, L;  // H1: width of the MLP's first product (2F SwiGLU, F GELU)
  bool llama;
  explicit ModelDims(const models::ModelConfig& c)
      : C(c.d_model),
        NH(c.n_head),
        KVH(c.n_kv_head),
        HS(c.head_dim()),
        QKV((c.n_head + 2 * c.n_kv_head) * HS),
        Fd(c.d_ff),
        H1(c.family == models::Family::kLlama ? 2 * c.d_ff : c.d_ff),
        V(c.vocab_size),
        L(c.n_layer),
        llama(c.family == models::Family::kLlama) {}
};

// Pointers into one buffer of a layout. Absent tensors are null (no biases or position embedding in LLaMA;
// GPT-2's LM head is the token embedding, so lm_head points there).
template <class T>
struct ModelTensors {
  T *tok_embedding = nullptr, *pos_embedding = nullptr, *lm_head = nullptr;
  T *attn_norm = nullptr, *attn_norm_bias = nullptr, *attn_qkv = nullptr, *attn_qkv_bias = nullptr;
  T *attn_out = nullptr, *attn_out_bias = nullptr, *mlp_norm = nullptr, *mlp_norm_bias = nullptr;
  T *mlp_in = nullptr, *mlp_in_bias = nullptr, *mlp_down = nullptr, *mlp_down_bias = nullptr;
  T *final_norm = nullptr, *final_norm_bias = nullptr;
};

template <class T>
ModelTensors<T> bind_tensors(const ParamLayout& layout, T* base) {
  auto get = [&](const char* name) -> T* {
    const ParamEntry* e = layout.find(name);
    return e ? base + e->offset : nullptr;
  };
  ModelTensors<T> t;
  t.tok_embedding = get("tok_embedding");
  t.pos_embedding = get("pos_embedding");
  t.lm_head = get("lm_head");
  if (t.lm_head == nullptr) t.lm_head = t.tok_embedding;  // tied
  t.attn_norm = get("attn_norm");
  t.attn_norm_bias = get("attn_norm_bias");
  t.attn_qkv = get("attn_qkv");
  t.attn_qkv_bias = get("attn_qkv_bias");
  t.attn_out = get("attn_out");
  t.attn_out_bias = get("attn_out_bias");
  t.mlp_norm = get("mlp_norm");
  t.mlp_norm_bias = get("mlp_norm_bias");
  t.mlp_in = get("mlp_gate_up");
  if (t.mlp_in == nullptr) t.mlp_in = get("mlp_up");
  t.mlp_in_bias = get("mlp_up_bias");
  t.mlp_down = get("mlp_down");
  t.mlp_down_bias = get("mlp_down_bias");
  t.final_norm = get("final_norm");
  t.final_norm_bias = get("final_norm_bias");
  STRATA_CHECK(t.tok_embedding && t.attn_norm && t.attn_qkv && t.attn_out && t.mlp_norm && t.mlp_in &&
                   t.mlp_down && t.final_norm,
               "parameter layout lacks a tensor the runner needs");
  return t;
}

// Layer l's slice of a per-layer tensor of `per_layer` elements (null stays null).
template <class T>
inline T* layer_at(T* base, int l, int64_t per_layer) {
  return base ? base + l * per_layer : nullptr;
}

// Token ids must lie in [0, V): a strata::Error names the first one that does not (`what`: "input", "prompt").
inline void check_tokens(const int32_t* ids, int64_t n, int V, const char* what) {
  for (int64_t i = 0; i < n; ++i)
    STRATA_REQUIRE(ids[i] >= 0 && ids[i] < V, what, " token ", ids[i], " at position ", i,
                   " is outside the vocabulary [0, ", V, ")");
}

}  // namespace strata
