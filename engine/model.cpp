// engine/model.cpp: the model runner (see model.h for the block). Activations for every layer are kept for
// the backward pass; the backward walks the layers in reverse with one residual-gradient buffer dx.
#include "engine/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "engine/check.h"
#include "engine/model_tensors.h"
#include "kernels/ops.h"

namespace strata {
namespace {

using models::Family;
using models::ModelConfig;
const ops::Cpu kDev{};
const float* const kNoBias = nullptr;  // typed nulls: the op templates deduce F from them
float* const kNoGrad = nullptr;

using Tensors = ModelTensors<float>;
using Dims = ModelDims;

Tensors bind(ParamBuffer& b) {
  return bind_tensors(b.layout(), b.data());
}

inline float* at(float* base, int l, int64_t per_layer) {
  return layer_at(base, l, per_layer);
}

// The family's norm: RMSNorm (mean unused) or LayerNorm with bias.
void norm_forward(const Dims& d, float* out, float* mean, float* rstd, const float* inp, const float* w,
                  const float* b, int N, float eps) {
  if (d.llama)
    ops::rmsnorm_forward(kDev, out, rstd, inp, w, N, d.C, eps);
  else
    ops::layernorm_forward(kDev, out, mean, rstd, inp, w, b, N, d.C, eps);
}

void norm_backward(const Dims& d, float* dinp, float* dw, float* db, const float* dout, const float* inp,
                   const float* w, const float* mean, const float* rstd, int N) {
  if (d.llama)
    ops::rmsnorm_backward(kDev, dinp, dw, dout, inp, w, rstd, N, d.C);
  else
    ops::layernorm_backward(kDev, dinp, dw, db, dout, inp, w, mean, rstd, N, d.C);
}

void act_forward(const Dims& d, float* out, const float* h, int N) {
  if (d.llama)
    ops::swiglu_forward(kDev, out, h, N, d.Fd);
  else
    ops::gelu_forward(kDev, out, h, static_cast<int64_t>(N) * d.Fd);
}

void act_backward(const Dims& d, float* dh, const float* dout, const float* h, int N) {
  if (d.llama)
    ops::swiglu_backward(kDev, dh, dout, h, N, d.Fd);
  else
    ops::gelu_backward(kDev, dh, dout, h, static_cast<int64_t>(N) * d.Fd);
}

}  // namespace

// Every activation the backward pass reads, per layer, plus the backward scratch.
struct Model::Acts {
  std::vector<int32_t> inputs;   // (N)
  std::vector<float> resid;      // (L+1, N, C): the residual stream entering each layer, and the final one
  std::vector<float> resid_mid;  // (L, N, C): after the attention branch
  std::vector<float> ln1, ln2;   // (L, N, C)
  std::vector<float> ln1_mean, ln1_rstd, ln2_mean, ln2_rstd;  // (L, N)
  std::vector<float> qkv;                                     // (L, N, QKV), after RoPE
  std::vector<float> atty;                                    // (L, N, NH*HS)
  std::vector<float> att;                                     // (L, B, NH, T, T)
  std::vector<float> mlp_h;                                   // (L, N, H1)
  std::vector<float> mlp_act;                                 // (L, N, F)
  std::vector<float> lnf, lnf_mean, lnf_rstd;                 // (N, C), (N), (N)
  std::vector<float> logits;  // (N, V); dlogits in place after a forward with targets
  std::vector<float> losses;  // (N)
  // Scratch.
  std::vector<float> branch;   // (N, C): a branch output before it joins the stream
  std::vector<float> dx, dln;  // (N, C)
  std::vector<float> dqkv, datty, datt, dmlp_h, dmlp_act;
};

Model::Model(const ModelConfig& cfg, int B, int T) : cfg_(cfg), B_(B), T_(T) {
  cfg_.validate();
  STRATA_REQUIRE(B >= 1, "batch size must be at least 1 (got ", B, ")");
  STRATA_REQUIRE(T >= 1 && T <= cfg.max_seq_len, "sequence length ", T, " must be in [1, max_seq_len ",
                 cfg.max_seq_len, "]");
  const ParamLayout layout(cfg_);
  params_ = ParamBuffer(layout);
  grads_ = ParamBuffer(layout);
  plan_activations();
}

void Model::release_gradients() {
  grads_ = ParamBuffer();
  acts_.reset();
  have_grad_ = false;
}

void Model::regrow(ParamBuffer&& params) {
  const ModelConfig cfg = params.layout().config();
  cfg.validate();
  STRATA_REQUIRE(T_ <= cfg.max_seq_len, "sequence length ", T_, " exceeds the grown model's max_seq_len ",
                 cfg.max_seq_len);
  release_gradients();
  params_ = ParamBuffer();  // the caller's buffer replaces it; free the old one first
  params_ = std::move(params);
  cfg_ = cfg;
  grads_ = ParamBuffer(params_.layout());
  plan_activations();
}

void Model::plan_activations() {
  const int B = B_, T = T_;
  const Dims d(cfg_);
  const size_t N = static_cast<size_t>(B) * T, L = d.L, C = d.C;
  acts_ = std::make_unique<Acts>();
  Acts& a = *acts_;
  a.inputs.resize(N);
  a.resid.resize((L + 1) * N * C);
  a.resid_mid.resize(L * N * C);
  a.ln1.resize(L * N * C);
  a.ln2.resize(L * N * C);
  for (auto* v : {&a.ln1_mean, &a.ln1_rstd, &a.ln2_mean, &a.ln2_rstd}) v->resize(L * N);
  a.qkv.resize(L * N * d.QKV);
  a.atty.resize(L * N * C);
  a.att.resize(L * B * d.NH * static_cast<size_t>(T) * T);
  a.mlp_h.resize(L * N * d.H1);
  a.mlp_act.resize(L * N * d.Fd);
  a.lnf.resize(N * C);
  a.lnf_mean.resize(N);
  a.lnf_rstd.resize(N);
  a.logits.resize(N * d.V);
  a.losses.resize(N);
  a.branch.resize(N * C);
  a.dx.resize(N * C);
  a.dln.resize(N * C);
  a.dqkv.resize(N * d.QKV);
  a.datty.resize(N * C);
  a.datt.resize(B * d.NH * static_cast<size_t>(T) * T);
  a.dmlp_h.resize(N * d.H1);
  a.dmlp_act.resize(N * d.Fd);
}

Model::~Model() = default;

float Model::forward(const int32_t* inputs, const int32_t* targets) {
  return run_forward(inputs, targets, true);
}

float Model::evaluate(const int32_t* inputs, const int32_t* targets) {
  STRATA_CHECK(targets != nullptr, "evaluate() needs targets");
  return run_forward(inputs, targets, false);
}

float Model::run_forward(const int32_t* inputs, const int32_t* targets, bool need_grad) {
  const Dims d(cfg_);
  const int B = B_, T = T_, N = B * T, C = d.C;
  const size_t NC = static_cast<size_t>(N) * C;
  Acts& a = *acts_;
  Tensors w = bind(params_);
  check_tokens(inputs, N, d.V, "input");
  std::copy(inputs, inputs + N, a.inputs.begin());
  have_grad_ = false;

  ops::embedding_forward(kDev, a.resid.data(), a.inputs.data(), w.tok_embedding, w.pos_embedding, B, T, C);
  for (int l = 0; l < d.L; ++l) {
    float* x = a.resid.data() + l * NC;
    float* xm = a.resid_mid.data() + l * NC;
    float* ln1 = a.ln1.data() + l * NC;
    float* ln2 = a.ln2.data() + l * NC;
    float* qkv = a.qkv.data() + static_cast<size_t>(l) * N * d.QKV;
    float* atty = a.atty.data() + l * NC;
    float* att = a.att.data() + static_cast<size_t>(l) * B * d.NH * T * T;
    float* h = a.mlp_h.data() + static_cast<size_t>(l) * N * d.H1;
    float* act = a.mlp_act.data() + static_cast<size_t>(l) * N * d.Fd;
    // Attention branch.
    norm_forward(d, ln1, a.ln1_mean.data() + l * N, a.ln1_rstd.data() + l * N, x, at(w.attn_norm, l, C),
                 at(w.attn_norm_bias, l, C), N, cfg_.norm_eps);
    ops::matmul_forward(kDev, qkv, ln1, at(w.attn_qkv, l, int64_t{d.QKV} * C), at(w.attn_qkv_bias, l, d.QKV),
                        N, C, d.QKV);
    if (d.llama) ops::rope_forward(kDev, qkv, B, T, d.NH, d.KVH, d.HS, cfg_.rope_base, 0);
    ops::attention_forward(kDev, atty, att, qkv, B, T, d.NH, d.KVH, d.HS);
    ops::matmul_forward(kDev, a.branch.data(), atty, at(w.attn_out, l, int64_t{C} * C),
                        at(w.attn_out_bias, l, C), N, C, C);
    ops::residual_forward(kDev, xm, x, a.branch.data(), static_cast<int64_t>(NC));
    // MLP branch.
    norm_forward(d, ln2, a.ln2_mean.data() + l * N, a.ln2_rstd.data() + l * N, xm, at(w.mlp_norm, l, C),
                 at(w.mlp_norm_bias, l, C), N, cfg_.norm_eps);
    ops::matmul_forward(kDev, h, ln2, at(w.mlp_in, l, int64_t{d.H1} * C), at(w.mlp_in_bias, l, d.H1), N, C,
                        d.H1);
    act_forward(d, act, h, N);
    ops::matmul_forward(kDev, a.branch.data(), act, at(w.mlp_down, l, int64_t{C} * d.Fd),
                        at(w.mlp_down_bias, l, C), N, d.Fd, C);
    ops::residual_forward(kDev, x + NC, xm, a.branch.data(), static_cast<int64_t>(NC));
  }
  norm_forward(d, a.lnf.data(), a.lnf_mean.data(), a.lnf_rstd.data(), a.resid.data() + d.L * NC, w.final_norm,
               w.final_norm_bias, N, cfg_.norm_eps);
  ops::matmul_forward(kDev, a.logits.data(), a.lnf.data(), w.lm_head, kNoBias, N, C, d.V);
  n_valid_ = 0;
  if (targets == nullptr) return 0.0f;

  for (int i = 0; i < N; ++i) n_valid_ += targets[i] != kIgnoreIndex;
  const float dloss = (need_grad && n_valid_ > 0) ? 1.0f / static_cast<float>(n_valid_) : 0.0f;
  ops::softmax_cross_entropy(kDev, a.logits.data(), a.losses.data(), targets, N, d.V, kIgnoreIndex, dloss);
  have_grad_ = need_grad;
  double sum = 0.0;
  for (int i = 0; i < N; ++i) sum += a.losses[static_cast<size_t>(i)];
  return n_valid_ > 0 ? static_cast<float>(sum / static_cast<double>(n_valid_)) : 0.0f;
}

void Model::backward(float grad_scale) {
  STRATA_CHECK(have_grad_, "backward() needs a preceding forward() with targets");
  have_grad_ = false;
  if (n_valid_ == 0) return;  // the loss is the constant 0
  const Dims d(cfg_);
  const int B = B_, T = T_, N = B * T, C = d.C;
  const size_t NC = static_cast<size_t>(N) * C;
  Acts& a = *acts_;
  Tensors w = bind(params_);
  Tensors g = bind(grads_);

  float* dlogits = a.logits.data();
  if (grad_scale != 1.0f) {
    const int64_t n = static_cast<int64_t>(N) * d.V;
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) dlogits[i] *= grad_scale;
  }
  // Head: logits = lnf @ lm_head^T, lnf = norm(resid[L]).
  ops::matmul_backward(kDev, a.dln.data(), g.lm_head, kNoGrad, dlogits, a.lnf.data(), w.lm_head, N, C, d.V);
  std::fill(a.dx.begin(), a.dx.end(), 0.0f);
  norm_backward(d, a.dx.data(), g.final_norm, g.final_norm_bias, a.dln.data(), a.resid.data() + d.L * NC,
                w.final_norm, a.lnf_mean.data(), a.lnf_rstd.data(), N);

  for (int l = d.L - 1; l >= 0; --l) {
    const float* x = a.resid.data() + l * NC;
    const float* xm = a.resid_mid.data() + l * NC;
    const float* ln1 = a.ln1.data() + l * NC;
    const float* ln2 = a.ln2.data() + l * NC;
    const float* qkv = a.qkv.data() + static_cast<size_t>(l) * N * d.QKV;
    const float* atty = a.atty.data() + l * NC;
    const float* att = a.att.data() + static_cast<size_t>(l) * B * d.NH * T * T;
    const float* h = a.mlp_h.data() + static_cast<size_t>(l) * N * d.H1;
    const float* act = a.mlp_act.data() + static_cast<size_t>(l) * N * d.Fd;
    // dx holds d(resid[l+1]); the residual passes it unchanged to resid_mid, and each branch adds its part.
    ops::matmul_backward(kDev, a.dmlp_act.data(), at(g.mlp_down, l, int64_t{C} * d.Fd),
                         at(g.mlp_down_bias, l, C), a.dx.data(), act, at(w.mlp_down, l, int64_t{C} * d.Fd), N,
                         d.Fd, C);
    act_backward(d, a.dmlp_h.data(), a.dmlp_act.data(), h, N);
    ops::matmul_backward(kDev, a.dln.data(), at(g.mlp_in, l, int64_t{d.H1} * C), at(g.mlp_in_bias, l, d.H1),
                         a.dmlp_h.data(), ln2, at(w.mlp_in, l, int64_t{d.H1} * C), N, C, d.H1);
    norm_backward(d, a.dx.data(), at(g.mlp_norm, l, C), at(g.mlp_norm_bias, l, C), a.dln.data(), xm,
                  at(w.mlp_norm, l, C), a.ln2_mean.data() + l * N, a.ln2_rstd.data() + l * N, N);
    // dx now holds d(resid_mid[l]).
    ops::matmul_backward(kDev, a.datty.data(), at(g.attn_out, l, int64_t{C} * C), at(g.attn_out_bias, l, C),
                         a.dx.data(), atty, at(w.attn_out, l, int64_t{C} * C), N, C, C);
    ops::attention_backward(kDev, a.dqkv.data(), a.datt.data(), a.datty.data(), qkv, att, B, T, d.NH, d.KVH,
                            d.HS);
    if (d.llama) ops::rope_backward(kDev, a.dqkv.data(), B, T, d.NH, d.KVH, d.HS, cfg_.rope_base, 0);
    ops::matmul_backward(kDev, a.dln.data(), at(g.attn_qkv, l, int64_t{d.QKV} * C),
                         at(g.attn_qkv_bias, l, d.QKV), a.dqkv.data(), ln1,
                         at(w.attn_qkv, l, int64_t{d.QKV} * C), N, C, d.QKV);
    norm_backward(d, a.dx.data(), at(g.attn_norm, l, C), at(g.attn_norm_bias, l, C), a.dln.data(), x,
                  at(w.attn_norm, l, C), a.ln1_mean.data() + l * N, a.ln1_rstd.data() + l * N, N);
  }
  ops::embedding_backward(kDev, g.tok_embedding, g.pos_embedding, a.dx.data(), a.inputs.data(), B, T, C);
}

const float* Model::logits() const {
  return acts_->logits.data();
}
const float* Model::losses() const {
  return acts_->losses.data();
}

// ---- Generator
// ---------------------------------------------------------------------------------------------

struct Generator::State {
  std::vector<float> kcache, vcache;  // (L, Tmax, KVH*HS)
  std::vector<float> x, ln, qkv, q, atty, branch, h, act, logits, scratch, mean, rstd;
  int cap = 0;  // rows the per-call buffers hold
};

Generator::Generator(const ParamBuffer& params) : params_(params), st_(std::make_unique<State>()) {
  const ModelConfig& c = params.layout().config();
  const Dims d(c);
  const size_t kv = static_cast<size_t>(d.L) * c.max_seq_len * d.KVH * d.HS;
  st_->kcache.resize(kv);
  st_->vcache.resize(kv);
  st_->logits.resize(static_cast<size_t>(d.V));
  st_->scratch.resize(static_cast<size_t>(d.NH) * c.max_seq_len);
}

Generator::~Generator() = default;

const float* Generator::append(const int32_t* tokens, int n) {
  const ModelConfig& c = params_.layout().config();
  const Dims d(c);
  STRATA_REQUIRE(n >= 1, "generator: nothing to append");
  STRATA_REQUIRE(pos_ + n <= c.max_seq_len, "generator: context of ", pos_ + n,
                 " tokens exceeds max_seq_len ", c.max_seq_len);
  check_tokens(tokens, n, d.V, "prompt");
  State& s = *st_;
  const int C = d.C, KV = d.KVH * d.HS;
  if (s.cap < n) {
    s.cap = n;
    const size_t N = static_cast<size_t>(n);
    s.x.resize(N * C);
    s.ln.resize(N * C);
    s.qkv.resize(N * d.QKV);
    s.q.resize(N * d.NH * d.HS);
    s.atty.resize(N * C);
    s.branch.resize(N * C);
    s.h.resize(N * d.H1);
    s.act.resize(N * d.Fd);
    s.mean.resize(N);
    s.rstd.resize(N);
  }
  // The runner binds mutable pointers; the generator only reads them.
  Tensors w = bind(const_cast<ParamBuffer&>(params_));
  const float* wpe = w.pos_embedding ? w.pos_embedding + static_cast<size_t>(pos_) * C : nullptr;
  ops::embedding_forward(kDev, s.x.data(), tokens, w.tok_embedding, wpe, 1, n, C);
  for (int l = 0; l < d.L; ++l) {
    float* kc = s.kcache.data() + static_cast<size_t>(l) * c.max_seq_len * KV;
    float* vc = s.vcache.data() + static_cast<size_t>(l) * c.max_seq_len * KV;
    norm_forward(d, s.ln.data(), s.mean.data(), s.rstd.data(), s.x.data(), at(w.attn_norm, l, C),
                 at(w.attn_norm_bias, l, C), n, c.norm_eps);
    ops::matmul_forward(kDev, s.qkv.data(), s.ln.data(), at(w.attn_qkv, l, int64_t{d.QKV} * C),
                        at(w.attn_qkv_bias, l, d.QKV), n, C, d.QKV);
    if (d.llama) ops::rope_forward(kDev, s.qkv.data(), 1, n, d.NH, d.KVH, d.HS, c.rope_base, pos_);
    const int QD = d.NH * d.HS;
    for (int t = 0; t < n; ++t) {
      const float* row = s.qkv.data() + static_cast<size_t>(t) * d.QKV;
      std::copy(row, row + QD, s.q.data() + static_cast<size_t>(t) * QD);
      std::copy(row + QD, row + QD + KV, kc + static_cast<size_t>(pos_ + t) * KV);
      std::copy(row + QD + KV, row + QD + 2 * KV, vc + static_cast<size_t>(pos_ + t) * KV);
    }
    ops::attention_decode(kDev, s.atty.data(), s.scratch.data(), s.q.data(), kc, vc, pos_, n, d.NH, d.KVH,
                          d.HS);
    ops::matmul_forward(kDev, s.branch.data(), s.atty.data(), at(w.attn_out, l, int64_t{C} * C),
                        at(w.attn_out_bias, l, C), n, C, C);
    ops::residual_forward(kDev, s.x.data(), s.x.data(), s.branch.data(), static_cast<int64_t>(n) * C);
    norm_forward(d, s.ln.data(), s.mean.data(), s.rstd.data(), s.x.data(), at(w.mlp_norm, l, C),
                 at(w.mlp_norm_bias, l, C), n, c.norm_eps);
    ops::matmul_forward(kDev, s.h.data(), s.ln.data(), at(w.mlp_in, l, int64_t{d.H1} * C),
                        at(w.mlp_in_bias, l, d.H1), n, C, d.H1);
    act_forward(d, s.act.data(), s.h.data(), n);
    ops::matmul_forward(kDev, s.branch.data(), s.act.data(), at(w.mlp_down, l, int64_t{C} * d.Fd),
                        at(w.mlp_down_bias, l, C), n, d.Fd, C);
    ops::residual_forward(kDev, s.x.data(), s.x.data(), s.branch.data(), static_cast<int64_t>(n) * C);
  }
  pos_ += n;
  const float* last = s.x.data() + static_cast<size_t>(n - 1) * C;
  norm_forward(d, s.ln.data(), s.mean.data(), s.rstd.data(), last, w.final_norm, w.final_norm_bias, 1,
               c.norm_eps);
  ops::matmul_forward(kDev, s.logits.data(), s.ln.data(), w.lm_head, kNoBias, 1, C, d.V);
  return s.logits.data();
}

}  // namespace strata
