// engine/optim.h: AdamW with decoupled weight decay, and global-norm gradient clipping, over the flat
// layer-indexed buffers of engine/params.h.
//
// One step t = 1, 2, ... (PyTorch's torch.optim.AdamW, with weight decay only on tensors whose TensorSpec
// says weight_decay: matrices and embeddings, never norm gains or biases):
//   p <- p * (1 - lr * wd)                          (decayed tensors only)
//   m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
//   p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
#pragma once

#include <cstdint>

#include "engine/params.h"

namespace strata {

struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  void validate() const;  // strata::Error naming the bad field
};

class AdamW {
 public:
  AdamW(const ParamLayout& layout, const AdamWConfig& cfg);
  // One update of params with grad_scale * grads at rate lr; advances the step counter t first. grad_scale
  // folds gradient clipping into the update (clip_scale below): the same arithmetic as scaling the gradients
  // first, without another pass over them.
  void step(ParamBuffer& params, const ParamBuffer& grads, double lr, float grad_scale = 1.0f);

  const AdamWConfig& config() const { return cfg_; }
  long t() const { return t_; }
  void set_t(long t) { t_ = t; }  // checkpoint restore
  ParamBuffer& m() { return m_; }
  ParamBuffer& v() { return v_; }
  const ParamBuffer& m() const { return m_; }
  const ParamBuffer& v() const { return v_; }
  void reset();  // zero moments, t = 0

 private:
  AdamWConfig cfg_;
  ParamBuffer m_, v_;
  long t_ = 0;
};

// The AdamW update of step t on the elements [begin, end) of buffers laid out by `layout`; the four pointers
// point at element `begin` (whole buffers, or one rank's shard of them under ZeRO-1). Padding between tensors
// is left alone. AdamW::step is this over the whole layout.
void adamw_update_range(const ParamLayout& layout, const AdamWConfig& cfg, long t, double lr, float grad_scale,
                        int64_t begin, int64_t end, float* params, const float* grads, float* m, float* v);

// Sum of squares of x[0, n) in double, in a fixed order (chunks of 2^16 summed in order): the same bits on
// any thread count.
double sum_squares(const float* x, int64_t n);
// The global L2 norm of all gradients (accumulated in double).
double grad_norm(const ParamBuffer& grads);
// The factor clipping applies for a gradient of global norm `norm`: max_norm / (norm + 1e-6) when max_norm >
// 0 and norm > max_norm, else 1 (PyTorch's clip_grad_norm_).
float clip_scale(double norm, double max_norm);

}  // namespace strata
