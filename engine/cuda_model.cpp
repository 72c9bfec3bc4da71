// engine/cuda_model.cpp: the CUDA model runner (see cuda_model.h). Host code only: it allocates, copies and
// calls the ops of kernels/ops.h for ops::Cuda, bf16; it launches no kernel itself, so the same source builds
// against the CUDA runtime and against the CPU emulation.
#include "engine/cuda_model.h"

#if defined(STRATA_CUDA_EMU)
#include "kernels/cuda/emu/emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "engine/check.h"
#include "engine/device_buffer.h"
#include "engine/model.h"  // kIgnoreIndex
#include "engine/model_tensors.h"
#include "engine/parallel.h"
#include "growth/apply.h"
#include "kernels/cuda/growth_ops.h"
#include "kernels/cuda/workspace.h"
#include "kernels/ops.h"

namespace strata {

std::string gib_text(size_t bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f GiB", static_cast<double>(bytes) / double(size_t{1} << 30));
  return b;
}

DeviceBuffer::DeviceBuffer(size_t n, const char* what) : bytes(n) {
  const cudaError_t err = cudaMalloc(&ptr, std::max<size_t>(n, 1));
  if (err != cudaSuccess) {
    ptr = nullptr;
    cudaGetLastError();
    STRATA_REQUIRE(false, "GPU memory: cannot allocate ", static_cast<double>(n) / (1 << 20), " MiB for ",
                   what, " (", cudaGetErrorString(err), ")");
  }
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr) (void)cudaFree(ptr);
}

namespace {

using bf16 = __nv_bfloat16;
using Stat = float;
// The padded logits' value (a bias on zero weights): exp(kPadLogit - max) is 0 in fp32, and it is finite, so
// the classifier's online max/sum never meets inf - inf.
constexpr float kPadLogit = -1e30f;

void upload(void* dst, const void* src, size_t bytes) {
  CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}
void download(void* dst, const void* src, size_t bytes) {
  CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}
// n bf16 values of the device at src, widened to fp32 into dst.
void download_bf16(float* dst, const void* src, size_t n) {
  std::vector<bf16> b(n);
  download(b.data(), src, n * sizeof(bf16));
  for (size_t i = 0; i < n; ++i) dst[i] = __bfloat162float(b[i]);
}

// Carves typed arrays out of one allocation, each 256-byte aligned (what cuBLASLt and the 16-byte vector
// loads want). Run once with base null to measure, then with the allocation to assign.
class Carver {
 public:
  explicit Carver(char* base) : base_(base) {}
  template <class T>
  T* take(size_t n) {
    off_ = (off_ + 255) / 256 * 256;
    T* p = base_ ? reinterpret_cast<T*>(base_ + off_) : nullptr;
    off_ += n * sizeof(T);
    return p;
  }
  size_t bytes() const { return (off_ + 255) / 256 * 256; }

 private:
  char* base_;
  size_t off_ = 0;
};

// A norm on its own, not fused with the residual add before it: layer 0's attention norm, and every norm
// the backward recomputes. It is the fused op's computation on the stored (bf16) stream, so out, mean and
// rstd are those bits. mean: null for RMSNorm.
void norm_forward(const ops::Cuda& dev, bool llama, bf16* out, Stat* mean, Stat* rstd, const bf16* inp,
                  const bf16* weight, const bf16* bias, int N, int C, float eps) {
  if (llama)
    ops::rmsnorm_forward(dev, out, rstd, inp, weight, N, C, eps);
  else
    ops::layernorm_forward(dev, out, mean, rstd, inp, weight, bias, N, C, eps);
}

// The MLP's first product and activation, in the forward and in the backward's recomputation:
// h (N,H1) = ln2 (N,C) @ mlp_in^T + bias; act (N,F) = swiglu(h) (LLaMA: h = [gate | up]) or gelu(h) (GPT-2:
// the product's epilogue).
void mlp_in_forward(const ops::Cuda& dev, const ModelDims& d, bf16* h, bf16* act, const bf16* ln2,
                    const bf16* weight, const bf16* bias, int N) {
  if (d.llama) {
    ops::matmul_forward(dev, h, ln2, weight, bias, N, d.C, d.H1);
    ops::swiglu_forward(dev, act, h, N, d.Fd);
  } else {
    ops::matmul_gelu_forward(dev, act, h, ln2, weight, bias, N, d.C, d.H1);
  }
}

// The pieces' elements of a flat host buffer (the layout's numel) to a compact fp32 device buffer, and back
// (engine/shard_map.h). A world of one's compact buffer is the flat one.
void upload_pieces(const LayerShards& shards, void* dst, const float* flat) {
  if (shards.world() == 1) return upload(dst, flat, static_cast<size_t>(shards.numel()) * sizeof(float));
  std::vector<float> compact(static_cast<size_t>(shards.compact_size()), 0.0f);
  shards.pack(flat, compact.data());
  upload(dst, compact.data(), compact.size() * sizeof(float));
}
void download_pieces(const LayerShards& shards, float* flat, const void* src) {
  if (shards.world() == 1) return download(flat, src, static_cast<size_t>(shards.numel()) * sizeof(float));
  std::vector<float> compact(static_cast<size_t>(shards.compact_size()));
  download(compact.data(), src, compact.size() * sizeof(float));
  shards.unpack(compact.data(), flat);
}

}  // namespace

struct CudaModel::Impl {
  ops::Cuda dev;
  DeviceBuffer weights, grads, master, m, v;  // the layout's numel each: bf16, bf16, fp32, fp32, fp32 (ZeRO-1:
                                              // master / m / v the compact pieces, engine/shard_map.h)
  DeviceBuffer grad_shard;                    // ZeRO-1: the reduced gradients of the pieces (bf16, compact)
  DeviceBuffer arena;                         // activations, scratch and the op workspace
  // Activations (pointers into the arena); per-layer arrays hold L slices.
  int32_t *inputs = nullptr, *targets = nullptr;
  bf16* resid = nullptr;                // (L+1, N, C): the stream entering each layer, and the final one
  bf16* resid_mid = nullptr;            // (L, N, C): after the attention branch
  bf16 *ln1 = nullptr, *ln2 = nullptr;  // (L, N, C); null when the norms are recomputed
  Stat *ln1_mean = nullptr, *ln1_rstd = nullptr, *ln2_mean = nullptr, *ln2_rstd = nullptr;  // (L, N)
  bf16* qkv = nullptr;      // (L, N, QKV) after RoPE
  bf16* atty = nullptr;     // (L, N, NH*HS)
  Stat* lse = nullptr;      // (L, B, NH, T)
  bf16* mlp_h = nullptr;    // (L, N, H1): SwiGLU's [gate | up], or GELU's pre-activation; null: recomputed
  bf16* mlp_act = nullptr;  // (L, N, F); null when the MLP is recomputed
  // Recomputation's one-layer scratch (engine/cuda_model.h), shared by every layer: what the forward writes
  // there is read within the same layer, and the backward rebuilds it there before it reads it. rc_ln holds
  // ln1 and then ln2 in the forward, ln2 and then ln1 in the backward.
  bf16* rc_ln = nullptr;                        // (N, C): norms recomputed
  Stat *rc_mean = nullptr, *rc_rstd = nullptr;  // (N): the re-run norm's statistics (unread)
  bf16 *rc_h = nullptr, *rc_act = nullptr;      // (N, H1), (N, F): MLP recomputed
  bf16* lnf = nullptr;      // (N, C)
  Stat *lnf_mean = nullptr, *lnf_rstd = nullptr;  // (N)
  bf16* logits = nullptr;                         // (N, Vp); dlogits in place after a forward with targets
  // The LM head padded to Vp = V rounded up to 64 rows when V is not a multiple of 64 (GPT-2's 50257): a row
  // stride of V elements would leave cuBLASLt 2-byte-aligned rows and its slow kernels. head_w holds the
  // head's weights and zero rows, head_bias 0 for the real columns and kPadLogit for the padding, whose
  // probabilities are then exactly 0; head_g collects the padded product's weight gradient, added into the
  // real one.
  int Vp = 0;
  bf16 *head_w = nullptr, *head_g = nullptr, *head_bias = nullptr;
  Stat* losses = nullptr;  // (N)
  // Scratch.
  bf16 *branch = nullptr, *dx = nullptr, *dln = nullptr, *datty = nullptr;  // (N, C)
  bf16 *dqkv = nullptr, *dmlp_h = nullptr, *dmlp_act = nullptr;
  Stat* delta = nullptr;      // (B, NH, T)
  float* norm_out = nullptr;  // grad_norm_squared's result
  void* workspace = nullptr;
  size_t workspace_bytes = 0;

  // The arena's layout; plan_memory measures it with a null base, the constructor assigns it.
  void carve(Carver& c, const ModelDims& d, int B, int T, const CudaModelOptions& opt) {
    const size_t N = size_t(B) * T, L = d.L, C = d.C;
    const bool keep_norms = !recomputes_norm(opt.recompute), keep_mlp = !recomputes_mlp(opt.recompute);
    inputs = c.take<int32_t>(N);
    targets = c.take<int32_t>(N);
    resid = c.take<bf16>((L + 1) * N * C);
    resid_mid = c.take<bf16>(L * N * C);
    ln1 = keep_norms ? c.take<bf16>(L * N * C) : nullptr;
    ln2 = keep_norms ? c.take<bf16>(L * N * C) : nullptr;
    ln1_mean = d.llama ? nullptr : c.take<Stat>(L * N);
    ln2_mean = d.llama ? nullptr : c.take<Stat>(L * N);
    ln1_rstd = c.take<Stat>(L * N);
    ln2_rstd = c.take<Stat>(L * N);
    qkv = c.take<bf16>(L * N * d.QKV);
    atty = c.take<bf16>(L * N * size_t(d.NH) * d.HS);
    lse = c.take<Stat>(L * N * d.NH);
    mlp_h = keep_mlp ? c.take<bf16>(L * N * d.H1) : nullptr;
    mlp_act = keep_mlp ? c.take<bf16>(L * N * d.Fd) : nullptr;
    rc_ln = keep_norms ? nullptr : c.take<bf16>(N * C);
    rc_mean = keep_norms || d.llama ? nullptr : c.take<Stat>(N);
    rc_rstd = keep_norms ? nullptr : c.take<Stat>(N);
    rc_h = keep_mlp ? nullptr : c.take<bf16>(N * d.H1);
    rc_act = keep_mlp ? nullptr : c.take<bf16>(N * d.Fd);
    lnf = c.take<bf16>(N * C);
    lnf_mean = d.llama ? nullptr : c.take<Stat>(N);
    lnf_rstd = c.take<Stat>(N);
    Vp = (d.V + 63) / 64 * 64;
    if (Vp != d.V) {
      head_w = c.take<bf16>(size_t(Vp) * C);
      head_g = c.take<bf16>(size_t(Vp) * C);
      head_bias = c.take<bf16>(size_t(Vp));
    }
    logits = c.take<bf16>(N * Vp);
    losses = c.take<Stat>(N);
    branch = c.take<bf16>(N * C);
    dx = c.take<bf16>(N * C);
    dln = c.take<bf16>(N * C);
    datty = c.take<bf16>(N * size_t(d.NH) * d.HS);
    dqkv = c.take<bf16>(N * d.QKV);
    dmlp_h = c.take<bf16>(N * d.H1);
    dmlp_act = d.llama ? c.take<bf16>(N * d.Fd) : nullptr;  // GPT-2's d(act) stays in the product's epilogue
    delta = c.take<Stat>(N * d.NH);
    norm_out = c.take<float>(1);
    workspace_bytes = std::max(
        {cuda::embedding_backward_workspace_bytes(B, T),
         cuda::norm_backward_workspace_bytes(static_cast<int>(N), d.C), cuda::grad_norm_workspace_bytes(),
         opt.deterministic || opt.cudnn_attention
             ? size_t{0}
             : cuda::flash_attention_backward_workspace_bytes(B, T, d.NH, d.HS),
         opt.cudnn_attention
             ? cuda::cudnn_attention_workspace_bytes(B, T, d.NH, d.KVH, d.HS, opt.deterministic)
             : size_t{0}});
    workspace = c.take<char>(workspace_bytes);
  }
};

CudaMemoryPlan CudaModel::plan_memory(const models::ModelConfig& cfg, int B, int T,
                                      const CudaModelOptions& opt) {
  const ModelDims d(cfg);
  const ParamLayout layout(cfg);
  // Unsharded: every buffer the layout's numel; ZeRO-1: master weights, moments and reduced gradients for
  // this rank's pieces (compact).
  const size_t P = static_cast<size_t>(layout.numel());
  const size_t S = static_cast<size_t>(LayerShards(layout, opt.shard_world, opt.shard_rank).compact_size());
  CudaMemoryPlan plan;
  plan.weights = P * sizeof(bf16);
  plan.grads = P * sizeof(bf16) + (opt.shard_world > 1 ? S * sizeof(bf16) : 0);
  plan.master = S * sizeof(float);
  plan.moments = 2 * S * sizeof(float);
  Impl measure_only;
  Carver measure(nullptr);
  measure_only.carve(measure, d, B, T, opt);
  plan.activations = measure.bytes();
  // kernels/cuda/matmul.cu's cuBLASLt workspace per stream. Not counted: its ones vector (2 bytes per row of
  // the largest product) and bias-gradient scratch (4 bytes per output feature): ~0.25 MB for gpt2-124m at
  // B=16, T=1024.
  plan.library = size_t{32} << 20;
  return plan;
}

void CudaModel::require_supported(const models::ModelConfig& cfg, const std::string& what) {
  const std::string prefix = what.empty() ? "" : what + ": ";
  STRATA_REQUIRE(cfg.head_dim() == 64 || cfg.head_dim() == 128, prefix,
                 "the CUDA backend's flash attention takes head dims 64 and 128; ", cfg.name,
                 " has d_model / n_head = ", cfg.head_dim());
  STRATA_REQUIRE(
      cfg.family != models::Family::kGpt2 || cfg.d_ff % 8 == 0, prefix,
      "the CUDA backend's GELU runs in cuBLASLt's epilogues, whose saved pre-activation needs d_ff to "
      "be a multiple of 8; ",
      cfg.name, " has d_ff = ", cfg.d_ff);
}

size_t CudaModel::memory_margin(size_t total_bytes) {
  return std::max<size_t>(size_t{256} << 20, total_bytes / 50);
}

CudaModel::CudaModel(const models::ModelConfig& cfg, int B, int T, const CudaModelOptions& opt)
    : cfg_(cfg), B_(B), T_(T), opt_(opt), impl_(std::make_unique<Impl>()) {
  cfg_.validate();
  STRATA_REQUIRE(B >= 1, "batch size must be at least 1 (got ", B, ")");
  STRATA_REQUIRE(T >= 1 && T <= cfg.max_seq_len, "sequence length ", T, " must be in [1, max_seq_len ",
                 cfg.max_seq_len, "]");
  require_supported(cfg_, "");
  layout_ = ParamLayout(cfg_);
  STRATA_CHECK(opt_.shard_world >= 1 && opt_.shard_rank >= 0 && opt_.shard_rank < opt_.shard_world,
               "CudaModel: shard ", opt_.shard_rank, " of ", opt_.shard_world);
  shards_ = LayerShards(layout_, opt_.shard_world, opt_.shard_rank);
  const ModelDims d(cfg_);
  {
    const CudaMemoryPlan plan = plan_memory(cfg_, B, T, opt_);
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    const size_t margin = memory_margin(total_bytes);
    STRATA_REQUIRE(
        plan.total() + margin <= free_bytes, "GPU memory: ", cfg_.name, " at micro-batch ", B, " x ", T,
        " needs ", gib_text(plan.total()), " (weights, gradients, master weights and AdamW moments ",
        gib_text(plan.weights + plan.grads + plan.master + plan.moments), ", activations ",
        gib_text(plan.activations), ") but the GPU has ", gib_text(free_bytes), " free of ",
        gib_text(total_bytes),
        ": use a smaller --batch-size (and --global-batch-tokens to keep the batch by accumulation)",
        opt_.recompute == Recompute::kAll
            ? ""
            : cat(" or recompute activations in the backward (--recompute all; now ",
                  recompute_name(opt_.recompute), ")"));
  }
  const size_t P = static_cast<size_t>(layout_.numel());
  Impl& s = *impl_;
  s.weights = DeviceBuffer(P * sizeof(bf16), "the bf16 weights");
  s.grads = DeviceBuffer(P * sizeof(bf16), "the bf16 gradients");
  // Sharded: the master weights of the pieces (compact; the alignment gaps stay zero).
  const size_t S = static_cast<size_t>(shards_.compact_size());
  s.master = DeviceBuffer(S * sizeof(float), "the fp32 master weights");
  if (sharded()) {
    s.grad_shard = DeviceBuffer(S * sizeof(bf16), "the bf16 gradient shard");
    CUDA_CHECK(cudaMemset(s.grad_shard.ptr, 0, s.grad_shard.bytes));
  }
  Carver measure(nullptr);
  s.carve(measure, d, B, T, opt_);
  s.arena = DeviceBuffer(measure.bytes(), "the activations");
  Carver assign(s.arena.as<char>());
  s.carve(assign, d, B, T, opt_);
  s.dev.deterministic = opt_.deterministic;
  s.dev.cudnn_attention = opt_.cudnn_attention;
  s.dev.workspace = s.workspace;
  s.dev.workspace_bytes = s.workspace_bytes;
  // Activations start poisoned (all bits set: NaN in bf16 and fp32), so reading one before it is written
  // shows as a NaN loss or gradient instead of a plausible number.
  CUDA_CHECK(cudaMemset(s.arena.ptr, 0xFF, s.arena.bytes));
  if (s.head_w) {  // zero pad rows (the real ones are copied in each forward) and the pad bias
    CUDA_CHECK(cudaMemset(s.head_w, 0, size_t(s.Vp) * d.C * sizeof(bf16)));
    std::vector<bf16> bias(size_t(s.Vp), __float2bfloat16_rn(0.0f));
    for (int v = d.V; v < s.Vp; ++v) bias[size_t(v)] = __float2bfloat16_rn(kPadLogit);
    upload(s.head_bias, bias.data(), bias.size() * sizeof(bf16));
  }
  CUDA_CHECK(cudaMemset(s.weights.ptr, 0, s.weights.bytes));
  CUDA_CHECK(cudaMemset(s.master.ptr, 0, s.master.bytes));
  zero_grad();
}

CudaModel::~CudaModel() = default;

size_t CudaModel::state_bytes() const {
  const Impl& s = *impl_;
  return s.weights.bytes + s.grads.bytes + s.grad_shard.bytes + s.master.bytes + s.m.bytes + s.v.bytes;
}
size_t CudaModel::activation_bytes() const {
  return impl_->arena.bytes;
}

void CudaModel::set_params(const ParamBuffer& params) {
  STRATA_CHECK(params.numel() == layout_.numel(), "CudaModel::set_params: layout differs");
  const size_t P = static_cast<size_t>(layout_.numel());
  std::vector<bf16> w(P);
  for (size_t i = 0; i < P; ++i) w[i] = __float2bfloat16_rn(params.data()[i]);
  upload_pieces(shards_, impl_->master.ptr, params.data());
  upload(impl_->weights.ptr, w.data(), P * sizeof(bf16));
}

void CudaModel::get_params(ParamBuffer& params) const {
  STRATA_CHECK(params.numel() == layout_.numel(), "CudaModel::get_params: layout differs");
  download_pieces(shards_, params.data(), impl_->master.ptr);
}

void CudaModel::get_grads(ParamBuffer& grads) const {
  STRATA_CHECK(grads.numel() == layout_.numel(), "CudaModel::get_grads: layout differs");
  download_bf16(grads.data(), impl_->grads.ptr, static_cast<size_t>(layout_.numel()));
}

void CudaModel::get_reduced_grads(ParamBuffer& grads) const {
  if (!sharded()) return get_grads(grads);
  STRATA_CHECK(grads.numel() == layout_.numel(), "CudaModel::get_reduced_grads: layout differs");
  std::vector<float> compact(static_cast<size_t>(shards_.compact_size()));
  download_bf16(compact.data(), impl_->grad_shard.ptr, compact.size());
  grads.zero();
  shards_.unpack(compact.data(), grads.data());
}

void CudaModel::set_moments(const ParamBuffer& m, const ParamBuffer& v) {
  STRATA_CHECK(m.numel() == layout_.numel() && v.numel() == layout_.numel(),
               "CudaModel::set_moments: layout");
  Impl& s = *impl_;
  if (!s.m.ptr) allocate_moments();
  upload_pieces(shards_, s.m.ptr, m.data());
  upload_pieces(shards_, s.v.ptr, v.data());
}

void CudaModel::get_moments(ParamBuffer& m, ParamBuffer& v) const {
  STRATA_CHECK(m.numel() == layout_.numel() && v.numel() == layout_.numel(),
               "CudaModel::get_moments: layout");
  const Impl& s = *impl_;
  STRATA_CHECK(s.m.ptr && s.v.ptr, "CudaModel::get_moments: no optimizer step or set_moments yet");
  download_pieces(shards_, m.data(), s.m.ptr);
  download_pieces(shards_, v.data(), s.v.ptr);
}

bool CudaModel::has_moments() const {
  return impl_->m.ptr != nullptr;
}

std::vector<uint16_t> CudaModel::get_weights_bf16() const {
  static_assert(sizeof(bf16) == sizeof(uint16_t));
  std::vector<uint16_t> out(static_cast<size_t>(layout_.numel()));
  download(out.data(), impl_->weights.ptr, out.size() * sizeof(uint16_t));
  return out;
}

void CudaModel::set_weights_bf16(const uint16_t* bits) {
  upload(impl_->weights.ptr, bits, static_cast<size_t>(layout_.numel()) * sizeof(uint16_t));
}

void CudaModel::zero_grad() {
  CUDA_CHECK(cudaMemset(impl_->grads.ptr, 0, impl_->grads.bytes));
}

float CudaModel::forward(const int32_t* inputs, const int32_t* targets, float grad_scale) {
  STRATA_CHECK(targets != nullptr, "CudaModel::forward needs targets");
  return run_forward(inputs, targets, grad_scale, true);
}

float CudaModel::evaluate(const int32_t* inputs, const int32_t* targets) {
  STRATA_CHECK(targets != nullptr, "CudaModel::evaluate needs targets");
  return run_forward(inputs, targets, 0.0f, false);
}

float CudaModel::run_forward(const int32_t* inputs, const int32_t* targets, float dloss_scale,
                             bool need_grad) {
  const ModelDims d(cfg_);
  const int B = B_, T = T_, N = B * T, C = d.C;
  const size_t NC = size_t(N) * C;
  const float eps = cfg_.norm_eps;
  Impl& s = *impl_;
  const ops::Cuda& dev = s.dev;
  const auto w = bind_tensors(layout_, s.weights.as<bf16>());
  check_tokens(inputs, N, d.V, "input");
  for (int i = 0; i < N; ++i)
    STRATA_REQUIRE(targets[i] == kIgnoreIndex || (targets[i] >= 0 && targets[i] < d.V), "target token ",
                   targets[i], " at position ", i, " is outside the vocabulary [0, ", d.V, ")");
  upload(s.inputs, inputs, size_t(N) * sizeof(int32_t));
  upload(s.targets, targets, size_t(N) * sizeof(int32_t));
  have_grad_ = false;

  // The norm entering a branch: layer 0's attention norm stands alone; every later norm is fused with the
  // residual add before it.
  auto residual_norm = [&](bf16* resid_out, bf16* out, Stat* mean, Stat* rstd, const bf16* resid_in,
                           const bf16* wt, const bf16* bias) {
    if (d.llama)
      ops::residual_rmsnorm_forward(dev, resid_out, out, rstd, resid_in, s.branch, wt, N, C, eps);
    else
      ops::residual_layernorm_forward(dev, resid_out, out, mean, rstd, resid_in, s.branch, wt, bias, N, C,
                                      eps);
  };
  auto lmean = [&](Stat* base, int l) { return base ? base + size_t(l) * N : nullptr; };
  // Layer l's norm outputs: its slice of ln1 / ln2, or (recomputed norms) the one-layer scratch.
  auto ln1_at = [&](int l) { return s.ln1 ? s.ln1 + l * NC : s.rc_ln; };
  auto ln2_at = [&](int l) { return s.ln2 ? s.ln2 + l * NC : s.rc_ln; };

  if (forward_hook_) forward_hook_(-1);
  ops::embedding_forward(dev, s.resid, s.inputs, w.tok_embedding, w.pos_embedding, B, T, C);
  if (forward_hook_) forward_hook_(0);  // layer l's weights are read from its attention norm on
  norm_forward(dev, d.llama, ln1_at(0), lmean(s.ln1_mean, 0), s.ln1_rstd, s.resid, w.attn_norm,
               w.attn_norm_bias, N, C, eps);
  for (int l = 0; l < d.L; ++l) {
    bf16* x = s.resid + l * NC;
    bf16* xm = s.resid_mid + l * NC;
    bf16* ln1 = ln1_at(l);
    bf16* ln2 = ln2_at(l);
    bf16* qkv = s.qkv + size_t(l) * N * d.QKV;
    bf16* atty = s.atty + l * NC;
    Stat* lse = s.lse + size_t(l) * N * d.NH;
    bf16* h = s.mlp_h ? s.mlp_h + size_t(l) * N * d.H1 : s.rc_h;
    bf16* act = s.mlp_act ? s.mlp_act + size_t(l) * N * d.Fd : s.rc_act;
    // Attention branch (ln1 of this layer is already written).
    ops::matmul_forward(dev, qkv, ln1, layer_at(w.attn_qkv, l, int64_t{d.QKV} * C),
                        layer_at(w.attn_qkv_bias, l, d.QKV), N, C, d.QKV);
    if (d.llama) ops::rope_forward(dev, qkv, B, T, d.NH, d.KVH, d.HS, cfg_.rope_base, 0);
    ops::flash_attention_forward(dev, atty, lse, qkv, B, T, d.NH, d.KVH, d.HS);
    ops::matmul_forward(dev, s.branch, atty, layer_at(w.attn_out, l, int64_t{C} * C),
                        layer_at(w.attn_out_bias, l, C), N, C, C);
    residual_norm(xm, ln2, lmean(s.ln2_mean, l), s.ln2_rstd + size_t(l) * N, x, layer_at(w.mlp_norm, l, C),
                  layer_at(w.mlp_norm_bias, l, C));
    // MLP branch.
    mlp_in_forward(dev, d, h, act, ln2, layer_at(w.mlp_in, l, int64_t{d.H1} * C),
                   layer_at(w.mlp_in_bias, l, d.H1), N);
    ops::matmul_forward(dev, s.branch, act, layer_at(w.mlp_down, l, int64_t{C} * d.Fd),
                        layer_at(w.mlp_down_bias, l, C), N, d.Fd, C);
    if (forward_hook_) forward_hook_(l + 1);  // layer l+1 from its attention norm on; L: the final norm, head
    if (l + 1 < d.L)
      residual_norm(x + NC, ln1_at(l + 1), lmean(s.ln1_mean, l + 1), s.ln1_rstd + size_t(l + 1) * N, xm,
                    layer_at(w.attn_norm, l + 1, C), layer_at(w.attn_norm_bias, l + 1, C));
    else
      residual_norm(x + NC, s.lnf, s.lnf_mean, s.lnf_rstd, xm, w.final_norm, w.final_norm_bias);
  }
  const bf16* no_bias = nullptr;
  if (s.head_w) {
    CUDA_CHECK(cudaMemcpyAsync(s.head_w, w.lm_head, size_t(d.V) * C * sizeof(bf16), cudaMemcpyDeviceToDevice,
                               static_cast<cudaStream_t>(dev.stream)));
    ops::matmul_forward(dev, s.logits, s.lnf, s.head_w, s.head_bias, N, C, s.Vp);
  } else {
    ops::matmul_forward(dev, s.logits, s.lnf, w.lm_head, no_bias, N, C, d.V);
  }

  n_valid_ = 0;
  for (int i = 0; i < N; ++i) n_valid_ += targets[i] != kIgnoreIndex;
  const float dloss = (need_grad && n_valid_ > 0) ? dloss_scale / static_cast<float>(n_valid_) : 0.0f;
  ops::softmax_cross_entropy(dev, s.logits, s.losses, s.targets, N, s.Vp, kIgnoreIndex, dloss);
  have_grad_ = need_grad;
  const std::vector<float> l = losses();
  double sum = 0.0;
  for (float x : l) sum += x;
  return n_valid_ > 0 ? static_cast<float>(sum / static_cast<double>(n_valid_)) : 0.0f;
}

std::vector<float> CudaModel::losses() const {
  std::vector<float> out(size_t(B_) * T_);
  download(out.data(), impl_->losses, out.size() * sizeof(float));
  return out;
}

void CudaModel::backward() {
  STRATA_CHECK(have_grad_, "backward() needs a preceding forward() with targets");
  have_grad_ = false;
  if (n_valid_ == 0) return;  // the loss is the constant 0
  const ModelDims d(cfg_);
  const int B = B_, T = T_, N = B * T, C = d.C;
  const size_t NC = size_t(N) * C;
  Impl& s = *impl_;
  const ops::Cuda& dev = s.dev;
  const auto w = bind_tensors(layout_, s.weights.as<bf16>());
  const auto g = bind_tensors(layout_, s.grads.as<bf16>());
  auto norm_backward = [&](bf16* dw, bf16* db, const bf16* inp, const bf16* wt, const Stat* mean,
                           const Stat* rstd) {
    if (d.llama)
      ops::rmsnorm_backward(dev, s.dx, dw, s.dln, inp, wt, rstd, N, C);
    else
      ops::layernorm_backward(dev, s.dx, dw, db, s.dln, inp, wt, mean, rstd, N, C);
  };
  auto lmean = [&](Stat* base, int l) { return base ? base + size_t(l) * N : nullptr; };

  // Head: logits = lnf @ lm_head^T (dlogits were written by the classifier), lnf = norm(resid[L]).
  bf16* no_grad = nullptr;
  if (s.head_w) {
    const size_t head = size_t(d.V) * C;
    CUDA_CHECK(
        cudaMemsetAsync(s.head_g, 0, size_t(s.Vp) * C * sizeof(bf16), static_cast<cudaStream_t>(dev.stream)));
    ops::matmul_backward(dev, s.dln, s.head_g, no_grad, s.logits, s.lnf, s.head_w, N, C, s.Vp);
    ops::residual_forward(dev, g.lm_head, g.lm_head, s.head_g, static_cast<int64_t>(head));
  } else {
    ops::matmul_backward(dev, s.dln, g.lm_head, no_grad, s.logits, s.lnf, w.lm_head, N, C, d.V);
  }
  CUDA_CHECK(cudaMemsetAsync(s.dx, 0, NC * sizeof(bf16), static_cast<cudaStream_t>(dev.stream)));
  norm_backward(g.final_norm, g.final_norm_bias, s.resid + d.L * NC, w.final_norm, s.lnf_mean, s.lnf_rstd);

  for (int l = d.L - 1; l >= 0; --l) {
    const bf16* x = s.resid + l * NC;
    const bf16* xm = s.resid_mid + l * NC;
    const bf16* qkv = s.qkv + size_t(l) * N * d.QKV;
    const bf16* atty = s.atty + l * NC;
    const Stat* lse = s.lse + size_t(l) * N * d.NH;
    // Recomputation (into the one-layer scratch, by the forward's ops on the forward's inputs): ln2 from
    // resid_mid[l], then the MLP's first product and activation from ln2.
    if (!s.ln2)
      norm_forward(dev, d.llama, s.rc_ln, s.rc_mean, s.rc_rstd, xm, layer_at(w.mlp_norm, l, C),
                   layer_at(w.mlp_norm_bias, l, C), N, C, cfg_.norm_eps);
    const bf16* ln2 = s.ln2 ? s.ln2 + l * NC : s.rc_ln;
    if (!s.mlp_h)
      mlp_in_forward(dev, d, s.rc_h, s.rc_act, ln2, layer_at(w.mlp_in, l, int64_t{d.H1} * C),
                     layer_at(w.mlp_in_bias, l, d.H1), N);
    const bf16* h = s.mlp_h ? s.mlp_h + size_t(l) * N * d.H1 : s.rc_h;
    const bf16* act = s.mlp_act ? s.mlp_act + size_t(l) * N * d.Fd : s.rc_act;
    // dx holds d(resid[l+1]); the residual passes it unchanged to resid_mid, and each branch adds its part.
    // LLaMA: d(act), then SwiGLU's backward into d(h). GPT-2: d(h) directly, GELU's derivative applied in
    // the product's epilogue (d(act) is never stored).
    if (d.llama) {
      ops::matmul_backward(dev, s.dmlp_act, layer_at(g.mlp_down, l, int64_t{C} * d.Fd),
                           layer_at(g.mlp_down_bias, l, C), s.dx, act,
                           layer_at(w.mlp_down, l, int64_t{C} * d.Fd), N, d.Fd, C);
      ops::swiglu_backward(dev, s.dmlp_h, s.dmlp_act, h, N, d.Fd);
    } else {
      ops::matmul_backward_dgelu(dev, s.dmlp_h, layer_at(g.mlp_down, l, int64_t{C} * d.Fd),
                                 layer_at(g.mlp_down_bias, l, C), s.dx, act,
                                 layer_at(w.mlp_down, l, int64_t{C} * d.Fd), h, N, d.Fd, C);
    }
    ops::matmul_backward(dev, s.dln, layer_at(g.mlp_in, l, int64_t{d.H1} * C),
                         layer_at(g.mlp_in_bias, l, d.H1), s.dmlp_h, ln2,
                         layer_at(w.mlp_in, l, int64_t{d.H1} * C), N, C, d.H1);
    norm_backward(layer_at(g.mlp_norm, l, C), layer_at(g.mlp_norm_bias, l, C), xm, layer_at(w.mlp_norm, l, C),
                  lmean(s.ln2_mean, l), s.ln2_rstd + size_t(l) * N);
    // dx now holds d(resid_mid[l]).
    ops::matmul_backward(dev, s.datty, layer_at(g.attn_out, l, int64_t{C} * C),
                         layer_at(g.attn_out_bias, l, C), s.dx, atty, layer_at(w.attn_out, l, int64_t{C} * C),
                         N, C, C);
    ops::flash_attention_backward(dev, s.dqkv, s.delta, s.datty, atty, qkv, lse, B, T, d.NH, d.KVH, d.HS);
    if (d.llama) ops::rope_backward(dev, s.dqkv, B, T, d.NH, d.KVH, d.HS, cfg_.rope_base, 0);
    // Recomputation: ln1 from resid[l], over ln2 (read for the last time above).
    if (!s.ln1)
      norm_forward(dev, d.llama, s.rc_ln, s.rc_mean, s.rc_rstd, x, layer_at(w.attn_norm, l, C),
                   layer_at(w.attn_norm_bias, l, C), N, C, cfg_.norm_eps);
    const bf16* ln1 = s.ln1 ? s.ln1 + l * NC : s.rc_ln;
    ops::matmul_backward(dev, s.dln, layer_at(g.attn_qkv, l, int64_t{d.QKV} * C),
                         layer_at(g.attn_qkv_bias, l, d.QKV), s.dqkv, ln1,
                         layer_at(w.attn_qkv, l, int64_t{d.QKV} * C), N, C, d.QKV);
    norm_backward(layer_at(g.attn_norm, l, C), layer_at(g.attn_norm_bias, l, C), x,
                  layer_at(w.attn_norm, l, C), lmean(s.ln1_mean, l), s.ln1_rstd + size_t(l) * N);
    if (layer_hook_) layer_hook_(l);  // layer l's gradients are final for this micro-batch
  }
  ops::embedding_backward(dev, g.tok_embedding, g.pos_embedding, s.dx, s.inputs, B, T, C);
}

namespace {

struct PieceCopy {
  int64_t dst = 0, src = 0, count = 0;  // compact offsets and elements
};

// Where the fp32 state (master weights, moments) of a copied layer lives in the compact buffers: unsharded,
// the flat ranges themselves (compact == flat); sharded (ZeRO-1), this rank's pieces of the destination
// segment (entry de, layer l of the grown layout) and of its source (entry se, layer src). The growth keeps
// the per-layer size and the world, so both segments split alike (same chunk, same tail) and this rank owns
// the same parts of both: the copies never cross ranks. from / to / per: the flat ranges (per elements).
std::vector<PieceCopy> piece_copies(const LayerShards& old_sh, const ParamEntry& se, int src_layer,
                                    const LayerShards& new_sh, const ParamEntry& de, int dst_layer, int64_t from,
                                    int64_t to, int64_t per) {
  if (old_sh.world() == 1) return {{to, from, per}};
  auto find = [](const LayerShards& sh, int64_t offset) -> const ShardSegment& {
    const auto& segs = sh.segments();
    const auto it = std::lower_bound(segs.begin(), segs.end(), offset,
                                     [](const ShardSegment& g, int64_t o) { return g.offset < o; });
    STRATA_CHECK(it != segs.end() && it->offset == offset, "growth: no shard segment at flat offset ", offset);
    return *it;
  };
  const ShardSegment& a = find(old_sh, from);
  const ShardSegment& b = find(new_sh, to);
  STRATA_CHECK(a.numel == per && b.numel == per && a.chunk == b.chunk && a.body == b.body &&
                   a.layer == (se.spec.per_layer ? src_layer : -1) &&
                   b.layer == (de.spec.per_layer ? dst_layer : -1),
               "growth: the shard segments of ", de.spec.name, " layer ", dst_layer, " do not match its source");
  std::vector<PieceCopy> out;
  if (b.chunk > 0) out.push_back({b.body_compact, a.body_compact, b.chunk});
  if (b.tail() > 0 && b.tail_compact >= 0) out.push_back({b.tail_compact, a.tail_compact, b.tail()});
  return out;
}

}  // namespace

bool CudaModel::layer_copies_only(const growth::GrowthPlan& plan) {
  if (plan.stage.noise > 0) return false;
  for (const growth::TensorRule& r : plan.tensors) {
    if (!r.rows.is_identity() || !r.cols.is_identity()) return false;
    for (const growth::LayerRule& lr : r.layers)
      if (lr.fill == growth::LayerFill::kInit) return false;
  }
  return true;
}

namespace {
// run_rules_into's one-layer scratch for the draws: the largest per-layer tensor of the grown layout.
int64_t largest_layer(const ParamLayout& to) {
  int64_t max_per = 1;
  for (const ParamEntry& e : to.entries()) max_per = std::max(max_per, e.spec.numel_per_layer());
  return max_per;
}
}  // namespace

size_t CudaModel::growth_scratch_bytes(const growth::GrowthPlan& plan) {
  if (layer_copies_only(plan)) return 0;
  size_t maps = 0;  // one tensor's at a time
  for (const growth::TensorRule& r : plan.tensors)
    maps = std::max(maps, size_t(r.rows.size() + (r.cols.src.empty() ? 0 : r.cols.size())) *
                              (sizeof(int32_t) + sizeof(float)));
  return size_t(largest_layer(ParamLayout(plan.to))) * sizeof(float) + maps;
}

std::unique_ptr<CudaModel> CudaModel::grown(const growth::GrowthPlan& plan, bool map_moments, uint64_t seed) {
  STRATA_CHECK(can_grow(plan), "CudaModel::grown: a ZeRO-1 runner grows on the device by layer copies only");
  Impl& s = *impl_;
  s.arena = DeviceBuffer();  // activations and gradients go first: old and new state then fit where they did
  s.grads = DeviceBuffer();
  s.grad_shard = DeviceBuffer();
  auto next = std::make_unique<CudaModel>(plan.to, B_, T_, opt_);  // zero weights and master weights
  Impl& n = *next->impl_;
  const bool moments = map_moments && s.m.ptr != nullptr;
  const size_t P = static_cast<size_t>(next->shards_.compact_size());  // the layout's numel unsharded
  if (moments) {
    n.m = DeviceBuffer(P * sizeof(float), "the AdamW first moments");
    n.v = DeviceBuffer(P * sizeof(float), "the AdamW second moments");
    CUDA_CHECK(cudaMemset(n.m.ptr, 0, n.m.bytes));
    CUDA_CHECK(cudaMemset(n.v.ptr, 0, n.v.bytes));
  }
  if (layer_copies_only(plan))
    copy_layers_into(plan, moments, *next);
  else
    run_rules_into(plan, moments, seed, *next);
  CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(s.dev.stream)));
  return next;
}

void CudaModel::copy_layers_into(const growth::GrowthPlan& plan, bool moments, CudaModel& next) {
  Impl& s = *impl_;
  Impl& n = *next.impl_;
  const cudaStream_t stream = static_cast<cudaStream_t>(s.dev.stream);
  auto copy = [&](void* dst, const void* src, size_t bytes) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
  };
  for (const growth::TensorRule& r : plan.tensors) {
    const ParamEntry* se = layout_.find(r.name);
    const ParamEntry* de = next.layout_.find(r.name);
    STRATA_CHECK(se && de && se->spec.numel_per_layer() == de->spec.numel_per_layer(), "growth: tensor ",
                 r.name);
    const int64_t per = de->spec.numel_per_layer();
    for (size_t l = 0; l < r.layers.size(); ++l) {
      const growth::LayerRule& lr = r.layers[l];
      if (lr.fill == growth::LayerFill::kZero) continue;  // the new runner's state starts at zero
      STRATA_CHECK(lr.src >= 0 && lr.src < se->layers, "growth: source layer ", lr.src, " of ", r.name);
      const int64_t from = se->offset + lr.src * per, to = de->offset + static_cast<int64_t>(l) * per;
      copy(n.weights.as<bf16>() + to, s.weights.as<bf16>() + from, size_t(per) * sizeof(bf16));  // whole
      // The fp32 state: this rank's pieces of the destination segment, from its pieces of the source segment.
      for (const auto& [dst, src, count] :
           piece_copies(shards_, *se, lr.src, next.shards_, *de, static_cast<int>(l), from, to, per)) {
        copy(n.master.as<float>() + dst, s.master.as<float>() + src, size_t(count) * sizeof(float));
        if (moments) {
          copy(n.m.as<float>() + dst, s.m.as<float>() + src, size_t(count) * sizeof(float));
          copy(n.v.as<float>() + dst, s.v.as<float>() + src, size_t(count) * sizeof(float));
        }
      }
    }
  }
}

// Unsharded, so the compact fp32 buffers are the flat layout. Per tensor rule: the axis maps uploaded once;
// the random draws of all its layers made on the host in parallel (serial streams per layer, as apply_params
// makes them), then per target layer an upload of its draws into a one-layer device scratch (stream-ordered:
// the next upload waits for the kernel that reads it) and a gather, or a plain copy for a layer copied
// unchanged. Then the noise, a layer at a time the same way, then the bf16 rounding. The host buffers of one
// tensor's draws are reused only after a stream synchronisation.
void CudaModel::run_rules_into(const growth::GrowthPlan& plan, bool moments, uint64_t seed, CudaModel& next) {
  STRATA_CHECK(!sharded(), "growth: a ZeRO-1 runner runs a plan's rules on the host");
  Impl& s = *impl_;
  Impl& n = *next.impl_;
  const cudaStream_t stream = static_cast<cudaStream_t>(s.dev.stream);
  auto d2d = [&](void* dst, const void* src, size_t bytes) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
  };
  auto h2d = [&](void* dst, const void* src, size_t bytes) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream));
  };
  DeviceBuffer scratch(size_t(largest_layer(next.layout_)) * sizeof(float),
                       "the growth's random draws (one layer)");
  float* const draws_dev = scratch.as<float>();
  const bool noise = plan.stage.noise > 0;
  // The flat (offset, count) ranges whose bf16 weights were copied from the source (layers copied unchanged).
  std::vector<std::pair<int64_t, int64_t>> kept_bits;
  std::vector<float> draws;
  for (const growth::TensorRule& r : plan.tensors) {
    const ParamEntry* se = layout_.find(r.name);
    const ParamEntry* de = next.layout_.find(r.name);
    STRATA_CHECK(se && de, "growth: tensor ", r.name, " is missing from a layout");
    const int64_t per = de->spec.numel_per_layer(), sper = se->spec.numel_per_layer();
    const bool two_d = !r.cols.src.empty();
    const int64_t rows = r.rows.size(), cols = two_d ? r.cols.size() : 1;
    const int64_t src_cols = se->spec.shape.size() == 2 ? se->spec.shape[1] : 1;
    STRATA_CHECK(rows * cols == per && static_cast<int64_t>(r.layers.size()) == de->layers,
                 "growth: the rule of ", r.name, " does not match its target layout");
    const bool unchanged = r.rows.is_identity() && r.cols.is_identity() && per == sper;
    // The axis maps, for the gathers.
    DeviceBuffer maps;
    int32_t *row_src = nullptr, *col_src = nullptr;
    float *row_scale = nullptr, *col_scale = nullptr;
    if (!unchanged) {
      const size_t nr = size_t(rows), nc = two_d ? size_t(cols) : 0;
      maps = DeviceBuffer((nr + nc) * (sizeof(int32_t) + sizeof(float)), "the growth's axis maps");
      row_src = maps.as<int32_t>();
      col_src = two_d ? row_src + nr : nullptr;
      row_scale = reinterpret_cast<float*>(row_src + nr + nc);
      col_scale = two_d ? row_scale + nr : nullptr;
      h2d(row_src, r.rows.src.data(), nr * sizeof(int32_t));
      if (r.rows.scale.empty())
        row_scale = nullptr;
      else
        h2d(row_scale, r.rows.scale.data(), nr * sizeof(float));
      if (two_d) {
        h2d(col_src, r.cols.src.data(), nc * sizeof(int32_t));
        if (r.cols.scale.empty())
          col_scale = nullptr;
        else
          h2d(col_scale, r.cols.scale.data(), nc * sizeof(float));
      }
    }
    // The draws of every layer, on the host (when any layer draws: an init-filled layer, or new elements
    // filled from the init distribution).
    const size_t L = r.layers.size();
    std::vector<char> drew(L, 0);
    if (growth::rule_draws(r)) {
      draws.resize(L * size_t(per));
      parallel_for(L, 0, [&](size_t l) {
        drew[l] = growth::layer_draws(r, *de, static_cast<int64_t>(l), seed, draws.data() + l * size_t(per));
      });
    }
    for (size_t l = 0; l < L; ++l) {
      const growth::LayerRule& lr = r.layers[l];
      const int64_t to = de->offset + static_cast<int64_t>(l) * per;
      float* master = n.master.as<float>() + to;
      if (lr.fill == growth::LayerFill::kZero) continue;  // zero weights and moments, as constructed
      if (lr.fill == growth::LayerFill::kInit) {         // the draws; moments 0
        h2d(master, draws.data() + l * size_t(per), size_t(per) * sizeof(float));
        continue;
      }
      STRATA_CHECK(lr.src >= 0 && lr.src < se->layers, "growth: source layer ", lr.src, " of ", r.name);
      const int64_t from = se->offset + lr.src * sper;
      if (unchanged) {
        d2d(master, s.master.as<float>() + from, size_t(per) * sizeof(float));
        if (moments) {
          d2d(n.m.as<float>() + to, s.m.as<float>() + from, size_t(per) * sizeof(float));
          d2d(n.v.as<float>() + to, s.v.as<float>() + from, size_t(per) * sizeof(float));
        }
        if (!noise) {
          d2d(n.weights.as<bf16>() + to, s.weights.as<bf16>() + from, size_t(per) * sizeof(bf16));
          kept_bits.emplace_back(to, per);
        }
        continue;
      }
      cuda::GrowthGather g;
      g.src_cols = src_cols, g.rows = rows, g.cols = cols;
      g.row_src = row_src, g.row_scale = row_scale, g.col_src = col_src, g.col_scale = col_scale;
      if (drew[l]) {
        h2d(draws_dev, draws.data() + l * size_t(per), size_t(per) * sizeof(float));
        g.fresh = draws_dev;
      }
      g.dst = master, g.src = s.master.as<float>() + from;
      cuda::growth_gather(g, stream);
      if (moments) {
        g.moments = true, g.fresh = nullptr;
        g.dst = n.m.as<float>() + to, g.src = s.m.as<float>() + from;
        cuda::growth_gather(g, stream);
        g.dst = n.v.as<float>() + to, g.src = s.v.as<float>() + from;
        cuda::growth_gather(g, stream);
      }
    }
    CUDA_CHECK(cudaStreamSynchronize(stream));  // the maps and the host draws are released or reused
  }
  if (noise) {
    const double a = plan.stage.noise;
    for (const ParamEntry& de : next.layout_.entries()) {
      if (!de.spec.per_layer) continue;
      const int64_t per = de.spec.numel_per_layer();
      draws.resize(size_t(de.layers) * size_t(per));
      parallel_for(size_t(de.layers), 0, [&](size_t l) {
        growth::noise_draws(de, static_cast<int64_t>(l), seed, draws.data() + l * size_t(per));
      });
      for (int64_t l = 0; l < de.layers; ++l) {
        h2d(draws_dev, draws.data() + size_t(l) * size_t(per), size_t(per) * sizeof(float));
        cuda::growth_noise(n.master.as<float>() + de.offset + l * per, draws_dev, per, 1.0 - a, a, stream);
      }
      CUDA_CHECK(cudaStreamSynchronize(stream));
    }
  }
  // The bf16 weights: rounded from the grown master weights, between the ranges whose bits were copied.
  std::sort(kept_bits.begin(), kept_bits.end());
  int64_t at = 0;
  auto round_range = [&](int64_t end) {
    if (end > at) cuda::round_to_bf16(n.weights.as<bf16>() + at, n.master.as<float>() + at, end - at, stream);
  };
  for (const auto& [offset, count] : kept_bits) {
    round_range(offset);
    at = offset + count;
  }
  round_range(next.layout_.numel());
}

double CudaModel::grad_sum_squares() {
  Impl& s = *impl_;
  // Sharded: the compact reduced gradients of the pieces (the alignment gaps are zero).
  const ops::ConstSpan<bf16> all = sharded() ? ops::ConstSpan<bf16>{s.grad_shard.as<bf16>(), shards_.compact_size()}
                                             : ops::ConstSpan<bf16>{s.grads.as<bf16>(), layout_.numel()};
  ops::grad_norm_squared(s.dev, s.norm_out, &all, 1);
  float sq = 0.0f;
  download(&sq, s.norm_out, sizeof sq);
  return static_cast<double>(sq);
}

double CudaModel::grad_norm() {
  return std::sqrt(grad_sum_squares());
}

void* CudaModel::weights_device() {
  return impl_->weights.ptr;
}
void* CudaModel::grads_device() {
  return impl_->grads.ptr;
}
void* CudaModel::grad_shard_device() {
  STRATA_CHECK(sharded(), "CudaModel::grad_shard_device: not sharded");
  return impl_->grad_shard.ptr;
}
void* CudaModel::master_device() {
  return impl_->master.ptr;
}
void* CudaModel::stream() const {
  return impl_->dev.stream;
}

void CudaModel::allocate_moments() {
  Impl& s = *impl_;
  const size_t bytes = static_cast<size_t>(s.master.bytes);  // the master weights' length: layout or stride
  s.m = DeviceBuffer(bytes, "the AdamW first moments");
  s.v = DeviceBuffer(bytes, "the AdamW second moments");
  CUDA_CHECK(cudaMemset(s.m.ptr, 0, bytes));
  CUDA_CHECK(cudaMemset(s.v.ptr, 0, bytes));
}

void CudaModel::adamw_step(const AdamWConfig& cfg, long t, double lr, float grad_scale, uint64_t seed) {
  STRATA_CHECK(t >= 1, "CudaModel::adamw_step: step t starts at 1 (got ", t, ")");
  Impl& s = *impl_;
  if (!s.m.ptr) allocate_moments();
  // One update tensor per piece (a world of one: per tensor). The master weights, moments and (sharded) the
  // reduced gradients are compact, at the piece's compact offset; the bf16 weights and gradients flat.
  const bf16* grad_base = sharded() ? s.grad_shard.as<bf16>() : s.grads.as<bf16>();
  std::vector<ops::AdamWTensor<bf16>> tensors;
  for (const ShardPiece& p : shards_.pieces()) {
    const ParamEntry& e = layout_.entries()[static_cast<size_t>(p.entry)];
    ops::AdamWTensor<bf16> a;
    a.param = s.weights.as<bf16>() + p.begin;
    a.master = s.master.as<float>() + p.compact;
    a.grad = grad_base + p.compact;
    a.m = s.m.as<float>() + p.compact;
    a.v = s.v.as<float>() + p.compact;
    a.n = p.size();
    a.weight_decay = e.spec.weight_decay ? static_cast<float>(cfg.weight_decay) : 0.0f;
    tensors.push_back(a);
  }
  ops::AdamWStep st;
  st.lr = static_cast<float>(lr);
  st.beta1 = static_cast<float>(cfg.beta1);
  st.beta2 = static_cast<float>(cfg.beta2);
  st.eps = static_cast<float>(cfg.eps);
  st.bias_correction1 = static_cast<float>(1.0 - std::pow(cfg.beta1, static_cast<double>(t)));
  st.bias_correction2 = static_cast<float>(1.0 - std::pow(cfg.beta2, static_cast<double>(t)));
  st.grad_scale = grad_scale;
  // The rounding stream of step t: a function of (seed, t) only, so a resumed run replays it.
  st.seed = static_cast<uint32_t>((seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(t)) >> 16);
  ops::adamw_update(s.dev, tensors.data(), static_cast<int>(tensors.size()), st);
}

}  // namespace strata
