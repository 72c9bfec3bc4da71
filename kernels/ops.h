// kernels/ops.h: the op signatures, declared once for every backend.
//
// Each op is a function template over the backend tag `Dev` and the element type `F`. A backend implements
// the instantiations it supports: the CPU backend (kernels/cpu/<op>.cpp) instantiates Dev = Cpu with
// F = float (training) and F = double (finite-difference tests); the CUDA backend (kernels/cuda/<op>.cu) will
// instantiate Dev = Cuda with its own element types. The model runner (engine/model.h) is written once against
// these signatures and never branches on the backend.
//
// Conventions for every op:
//   - Pointers are to row-major tensors; the shape is given in a comment with the letters B (batch), T
//     (sequence), C (width), NH (query heads), KVH (key/value heads), HS (head dim), F (MLP hidden), V (vocab),
//     N (rows = B*T), IC/OC (in/out features).
//   - Forward outputs are written (`=`). Parameter gradients are accumulated (`+=`), so micro-batches add up.
//     Activation gradients are written (`=`) unless the comment says `+=`.
//   - Nothing allocates; scratch buffers are passed in. Inputs and outputs do not alias unless stated.
//   - Preconditions (positive sizes, non-null required pointers) are checked with STRATA_CHECK in release.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace strata::ops {

// Backend tags. The CPU ops are OpenMP-parallel over rows and use OpenBLAS for matrix products.
struct Cpu {};
// The CUDA ops (kernels/cuda/) store tensors in bf16 (F = __nv_bfloat16) and accumulate in fp32.
struct Cuda {
  void* stream = nullptr;  // cudaStream_t
  // Device scratch for the ops that need it (embedding_backward's sort, the grad norm's partial sums); each
  // such op states its size below and checks it.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  // Bitwise-reproducible results from run to run (no floating-point atomics). Every CUDA op here is
  // deterministic whatever this says, except flash_attention_backward, which may then accumulate dQ with
  // atomics.
  bool deterministic = true;
  // Attention through cuDNN's fused SDPA engines (kernels/cuda/cudnn_sdpa.h) instead of Strata's flash
  // attention kernels: flash_attention_forward/backward then need libcudnn.so.9 at run time and
  // cuda::cudnn_attention_workspace_bytes of workspace. With `deterministic`, cuDNN's deterministic backward
  // (dP for the whole sequence in the workspace); without, dQ accumulated with atomics.
  bool cudnn_attention = false;
  // Benchmarks and tests only: an alternative implementation of an op that has some (0: the default one; the
  // op names its variants), so kernel_bench can measure candidates side by side before one becomes the default.
  int variant = 0;
};

// The type of saved statistics (norm mean/rstd, attention log-sum-exp, per-row losses): fp32 for float and bf16
// storage, double for the double-precision CPU build used by the finite-difference tests.
template <class F>
using Stat = std::conditional_t<std::is_same_v<F, double>, double, float>;

// ---- embedding -------------------------------------------------------------------------------------------
// out[b,t,:] = wte[tokens[b,t], :] + (wpe ? wpe[t, :] : 0)
// out (B,T,C), tokens (B,T) in [0,V), wte (V,C), wpe (Tmax,C) or null (RoPE models).
template <class Dev, class F>
void embedding_forward(const Dev&, F* out, const int32_t* tokens, const F* wte, const F* wpe, int B, int T,
                       int C);
// dwte[tokens[b,t], :] += dout[b,t,:]; dwpe[t,:] += sum_b dout[b,t,:] (when dwpe is non-null).
// Deterministic (no atomics): each vocabulary row is summed in a fixed token order.
template <class Dev, class F>
void embedding_backward(const Dev&, F* dwte, F* dwpe, const F* dout, const int32_t* tokens, int B, int T, int C);

// ---- RMSNorm ---------------------------------------------------------------------------------------------
// rstd[n] = 1 / sqrt(mean_c(inp[n,c]^2) + eps);  out[n,c] = inp[n,c] * rstd[n] * weight[c]
// out, inp (N,C); rstd (N) saved for the backward; weight (C).
template <class Dev, class F>
void rmsnorm_forward(const Dev&, F* out, Stat<F>* rstd, const F* inp, const F* weight, int N, int C, float eps);
// dinp (N,C) `+=` (it is the residual stream's gradient); dweight (C) `+=`.
template <class Dev, class F>
void rmsnorm_backward(const Dev&, F* dinp, F* dweight, const F* dout, const F* inp, const F* weight,
                      const Stat<F>* rstd, int N, int C);

// ---- residual add fused with the next norm -------------------------------------------------------------------
// resid_out = resid_in + branch; out = rmsnorm(resid_out) (as rmsnorm_forward, rstd saved). resid_out may alias
// resid_in. The backward is rmsnorm_backward on resid_out: its `+=` into dinp is the residual's gradient.
template <class Dev, class F>
void residual_rmsnorm_forward(const Dev&, F* resid_out, F* out, Stat<F>* rstd, const F* resid_in, const F* branch,
                              const F* weight, int N, int C, float eps);
// resid_out = resid_in + branch; out = layernorm(resid_out) (mean, rstd saved). resid_out may alias resid_in.
template <class Dev, class F>
void residual_layernorm_forward(const Dev&, F* resid_out, F* out, Stat<F>* mean, Stat<F>* rstd, const F* resid_in,
                                const F* branch, const F* weight, const F* bias, int N, int C, float eps);

// ---- LayerNorm -------------------------------------------------------------------------------------------
// mean[n], rstd[n] = 1/sqrt(var[n] + eps) (biased variance); out = (inp - mean) * rstd * weight + bias.
template <class Dev, class F>
void layernorm_forward(const Dev&, F* out, Stat<F>* mean, Stat<F>* rstd, const F* inp, const F* weight, const F* bias, int N,
                       int C, float eps);
// dinp (N,C) `+=`; dweight, dbias (C) `+=`.
template <class Dev, class F>
void layernorm_backward(const Dev&, F* dinp, F* dweight, F* dbias, const F* dout, const F* inp, const F* weight,
                        const Stat<F>* mean, const Stat<F>* rstd, int N, int C);

// ---- linear map ------------------------------------------------------------------------------------------
// out (N,OC) = inp (N,IC) @ weight (OC,IC)^T + bias (OC, or null).
template <class Dev, class F>
void matmul_forward(const Dev&, F* out, const F* inp, const F* weight, const F* bias, int N, int IC, int OC);
// dinp (N,IC) `=` dout @ weight (skipped when dinp is null); dweight (OC,IC) `+=` dout^T @ inp;
// dbias (OC) `+=` column sums of dout (when non-null).
template <class Dev, class F>
void matmul_backward(const Dev&, F* dinp, F* dweight, F* dbias, const F* dout, const F* inp, const F* weight,
                     int N, int IC, int OC);

// ---- RoPE (GPT-NeoX / lit-gpt "rotate half" layout, the full head dim) -------------------------------------
// In place on the query and key heads of qkv (B,T,(NH+2*KVH)*HS): per token, NH query heads, then KVH key heads,
// then KVH value heads (untouched). For head vector x, i in [0, HS/2), position p = pos0 + t,
// theta_i = p * base^(-2i/HS):  x'[i] = x[i] cos - x[i+HS/2] sin;  x'[i+HS/2] = x[i+HS/2] cos + x[i] sin.
template <class Dev, class F>
void rope_forward(const Dev&, F* qkv, int B, int T, int NH, int KVH, int HS, float base, int pos0);
// The transpose rotation, in place on dqkv (B,T,(NH+2*KVH)*HS): turns d(rotated q,k) into d(q,k).
template <class Dev, class F>
void rope_backward(const Dev&, F* dqkv, int B, int T, int NH, int KVH, int HS, float base, int pos0);

// ---- causal grouped-query attention ------------------------------------------------------------------------
// Query head h reads key/value head h / (NH/KVH). scale = 1/sqrt(HS).
// att[b,h,t,s] = softmax_s<=t(q.k * scale) (zero for s > t); out[b,t,h*HS:(h+1)*HS] = sum_s att * v.
// out (B,T,NH*HS); att (B,NH,T,T) saved for the backward; qkv (B,T,(NH+2*KVH)*HS) after RoPE.
template <class Dev, class F>
void attention_forward(const Dev&, F* out, F* att, const F* qkv, int B, int T, int NH, int KVH, int HS);
// dqkv (B,T,(NH+2*KVH)*HS) `=`; datt (B,NH,T,T) is scratch.
template <class Dev, class F>
void attention_backward(const Dev&, F* dqkv, F* datt, const F* dout, const F* qkv, const F* att, int B, int T,
                        int NH, int KVH, int HS);
// Flash attention: the same function without the (T,T) matrix. lse (B,NH,T) = log sum_s<=t exp(q.k * scale)
// (natural log, fp32) is saved for the backward instead; memory O(T).
template <class Dev, class F>
void flash_attention_forward(const Dev&, F* out, Stat<F>* lse, const F* qkv, int B, int T, int NH, int KVH, int HS);
// dqkv (B,T,(NH+2*KVH)*HS) `=` (query, key and value parts; K/V gradients summed over the query heads of their
// group); delta (B,NH,T) is scratch (rowsum(dout * out)). Recomputes the scores from qkv and lse. On CUDA with
// Cuda::deterministic false, dQ is accumulated with fp32 atomics in the workspace
// (cuda::flash_attention_backward_workspace_bytes) and may differ in the last bits from run to run.
template <class Dev, class F>
void flash_attention_backward(const Dev&, F* dqkv, Stat<F>* delta, const F* dout, const F* out, const F* qkv,
                              const Stat<F>* lse, int B, int T, int NH, int KVH, int HS);
// Inference with a KV cache, one sequence: the Tn new tokens at positions [Tp, Tp+Tn) attend to the cache
// rows [0, Tp+t]. q (Tn, NH*HS) after RoPE; kcache, vcache (>= Tp+Tn, KVH*HS) already hold the new rows;
// out (Tn, NH*HS); scratch (NH, Tp+Tn).
template <class Dev, class F>
void attention_decode(const Dev&, F* out, F* scratch, const F* q, const F* kcache, const F* vcache, int Tp,
                      int Tn, int NH, int KVH, int HS);

// ---- MLP activations -------------------------------------------------------------------------------------
// SwiGLU: inp (N,2F) holds [gate | up] per row; out (N,F) = silu(gate) * up, silu(x) = x / (1 + e^-x).
template <class Dev, class F>
void swiglu_forward(const Dev&, F* out, const F* inp, int N, int Fdim);
// dinp (N,2F) `=`.
template <class Dev, class F>
void swiglu_backward(const Dev&, F* dinp, const F* dout, const F* inp, int N, int Fdim);
// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). out, inp (n).
template <class Dev, class F>
void gelu_forward(const Dev&, F* out, const F* inp, int64_t n);
// dinp (n) `=`.
template <class Dev, class F>
void gelu_backward(const Dev&, F* dinp, const F* dout, const F* inp, int64_t n);

// out (N,OC) = gelu(pre), pre (N,OC) = inp @ weight^T + bias (saved for gelu_backward): the matmul with the
// activation fused (cuBLASLt's GELU_AUX_BIAS epilogue on CUDA).
template <class Dev, class F>
void matmul_gelu_forward(const Dev&, F* out, F* pre, const F* inp, const F* weight, const F* bias, int N, int IC,
                         int OC);
// The backward of out = gelu(pre) @ weight^T + bias, from dout (N,OC) to dpre (N,IC) `=`
// gelu'(pre) * (dout @ weight): matmul_backward with GELU's derivative fused into the dinp product
// (cuBLASLt's DGELU epilogue on CUDA: the derivative applied to the fp32 sums, one rounding of dpre), so the
// gradient of the activation is never stored. pre (N,IC) as matmul_gelu_forward saved it; dweight and dbias
// as in matmul_backward (`+=`, dbias may be null), inp (N,IC) = gelu(pre). CUDA variant 1: unfused (the
// product, then gelu_backward in place).
template <class Dev, class F>
void matmul_backward_dgelu(const Dev&, F* dpre, F* dweight, F* dbias, const F* dout, const F* inp,
                           const F* weight, const F* pre, int N, int IC, int OC);

// ---- residual --------------------------------------------------------------------------------------------
// out = a + b (n). out may alias a (the runner adds a branch into the residual stream in place).
template <class Dev, class F>
void residual_forward(const Dev&, F* out, const F* a, const F* b, int64_t n);
// da `+=` dout; db `+=` dout (either may be null).
template <class Dev, class F>
void residual_backward(const Dev&, F* da, F* db, const F* dout, int64_t n);

// ---- fused softmax + cross-entropy -----------------------------------------------------------------------
// Per row n with target y = targets[n]: losses[n] = logsumexp(logits[n,:]) - logits[n,y], or 0 when
// y == ignore_index. When dloss != 0, logits (N,V) is overwritten in place by its gradient
// dlogits[n,:] = dloss * (softmax(logits[n,:]) - onehot(y)) (a zero row for ignored targets), where the caller
// passes dloss = 1/(number of non-ignored targets) for a mean loss. A target outside [0,V) other than
// ignore_index is a checked error. Returns nothing; the caller averages `losses`.
template <class Dev, class F>
void softmax_cross_entropy(const Dev&, F* logits, Stat<F>* losses, const int32_t* targets, int N, int V,
                           int32_t ignore_index, float dloss);

// ---- optimizer ---------------------------------------------------------------------------------------------
// One tensor of an AdamW update. The update is computed in fp32 on `master` (fp32 master weights) when it is
// non-null, and param (bf16) is then written from it with stochastic rounding; with master null (F = float or
// double) param itself is updated.
template <class F>
struct AdamWTensor {
  F* param = nullptr;
  float* master = nullptr;
  const F* grad = nullptr;
  float* m = nullptr;  // first moment, fp32
  float* v = nullptr;  // second moment, fp32
  int64_t n = 0;
  float weight_decay = 0.0f;  // 0 for tensors that are not decayed (norm gains, biases)
};
// The scalars of one step (engine/optim.h has the formula): g = grad_scale * grad;
// p <- p (1 - lr wd); m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
// p <- p - lr (m / bias_correction1) / (sqrt(v / bias_correction2) + eps), bias_correction_i = 1 - b_i^t.
// seed selects the stochastic-rounding stream (a function of the step, so a resumed run replays it).
struct AdamWStep {
  float lr = 0, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
  float bias_correction1 = 1, bias_correction2 = 1;
  float grad_scale = 1;
  uint32_t seed = 0;
};
// Updates every tensor of the host array `tensors` (count entries) in one launch on CUDA.
template <class Dev, class F>
void adamw_update(const Dev&, const AdamWTensor<F>* tensors, int count, const AdamWStep& step);

// A read-only tensor: pointer and element count.
template <class F>
struct ConstSpan {
  const F* ptr = nullptr;
  int64_t n = 0;
};
// *out = sum of squares of every element of the count tensors (fp32 accumulation on CUDA: per-block partial
// sums in a fixed order, then one block sums the partials in order, so the result is bitwise reproducible).
// out points to one Stat<F> in the backend's memory (device memory on CUDA). The CUDA op needs
// grad_norm_workspace_bytes() of workspace.
template <class Dev, class F>
void grad_norm_squared(const Dev&, Stat<F>* out, const ConstSpan<F>* tensors, int count);

}  // namespace strata::ops
