// engine/model.h: the model runner. Forward, loss and backward over the layer list of either family, on the
// CPU backend, with activations planned once for a (B, T) and reused every step.
//
// The block, for layer l (x is the residual stream (B,T,C)):
//   h = norm(x; attn_norm[l])                      RMSNorm (LLaMA) or LayerNorm with bias (GPT-2)
//   qkv = h @ attn_qkv[l]^T (+ bias)               (B,T,(NH+2KVH)*HS)
//   rope(q, k)                                     LLaMA only
//   x += attention(qkv) @ attn_out[l]^T (+ bias)
//   h = norm(x; mlp_norm[l])
//   LLaMA: x += swiglu(h @ mlp_gate_up[l]^T) @ mlp_down[l]^T
//   GPT-2: x += gelu(h @ mlp_up[l]^T + b) @ mlp_down[l]^T + b
// then logits = norm(x; final_norm) @ lm_head^T (GPT-2: the token embedding, tied), and the mean
// cross-entropy over non-ignored targets. The family decides only which norm, which MLP activation, RoPE or
// a position embedding, and which tensor is the LM head; everything else is one code path.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "engine/params.h"
#include "models/model_config.h"

namespace strata {

inline constexpr int32_t kIgnoreIndex = -1;

class Model {
 public:
  // Plans activations for batches of B sequences of length T (T <= max_seq_len). Parameters and gradients
  // are allocated with the model's layout; parameters are zero until init_params() or a checkpoint fills
  // them.
  Model(const models::ModelConfig& cfg, int B, int T);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const models::ModelConfig& config() const { return cfg_; }
  int batch() const { return B_; }
  int seq_len() const { return T_; }

  ParamBuffer& params() { return params_; }
  const ParamBuffer& params() const { return params_; }
  ParamBuffer& grads() { return grads_; }

  // Forward pass over inputs (B,T). With targets (B,T) (kIgnoreIndex entries skipped) it also computes the
  // per-position losses and returns their mean over non-ignored targets (0 when all are ignored); without
  // targets it returns 0 and leaves the logits readable. Ids out of range are a strata::Error.
  float forward(const int32_t* inputs, const int32_t* targets);
  // Forward with targets for evaluation only: returns the mean loss and keeps no gradient (backward() may
  // not follow).
  float evaluate(const int32_t* inputs, const int32_t* targets);
  // Backward of the last forward (which must have had targets): accumulates (`+=`) into grads() the
  // gradient of grad_scale * (mean loss). Pass 1/k for each of k accumulated micro-batches.
  void backward(float grad_scale = 1.0f);
  void zero_grad() { grads_.zero(); }

  // Growth (growth/apply.h): release_gradients() frees the gradients and activations (the first half of a
  // growth, so old and new model state never coexist with them); regrow() installs parameters of a new
  // architecture, allocates its gradients and re-plans the activations for the same (B, T).
  void release_gradients();
  void regrow(ParamBuffer&& params);

  // After a forward without targets: the logits (B,T,V). After a forward with targets they are overwritten
  // by their gradient and not available.
  const float* logits() const;
  // Per-position losses (B,T) of the last forward with targets (0 at ignored positions).
  const float* losses() const;
  int64_t num_valid_targets() const { return n_valid_; }

 private:
  struct Acts;
  models::ModelConfig cfg_;
  int B_ = 0, T_ = 0;
  ParamBuffer params_, grads_;
  std::unique_ptr<Acts> acts_;
  float run_forward(const int32_t* inputs, const int32_t* targets, bool need_grad);
  void plan_activations();
  bool have_grad_ = false;  // the last forward left dlogits for backward()
  int64_t n_valid_ = 0;
};

// Autoregressive inference for one sequence with a KV cache (L, Tmax, KVH*HS) for keys and values.
class Generator {
 public:
  explicit Generator(const ParamBuffer& params);  // the parameters must outlive the generator
  ~Generator();
  // Appends tokens (their keys and values enter the cache) and returns the logits (V) after the last one.
  // Errors when the context would exceed max_seq_len.
  const float* append(const int32_t* tokens, int n);
  int position() const { return pos_; }
  int vocab_size() const { return params_.layout().config().vocab_size; }
  int max_seq_len() const { return params_.layout().config().max_seq_len; }
  void reset() { pos_ = 0; }

 private:
  struct State;
  const ParamBuffer& params_;
  std::unique_ptr<State> st_;
  int pos_ = 0;
};

}  // namespace strata
