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

#include <cstdint>

namespace strata::ops {

// Backend tags. The CPU ops are OpenMP-parallel over rows and use OpenBLAS for matrix products.
struct Cpu {};
struct Cuda {
  void* stream = nullptr;  // cudaStream_t
};

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
void rmsnorm_forward(const Dev&, F* out, F* rstd, const F* inp, const F* weight, int N, int C, float eps);
// dinp (N,C) `+=` (it is the residual stream's gradient); dweight (C) `+=`.
template <class Dev, class F>
void rmsnorm_backward(const Dev&, F* dinp, F* dweight, const F* dout, const F* inp, const F* weight,
                      const F* rstd, int N, int C);

// ---- LayerNorm -------------------------------------------------------------------------------------------
// mean[n], rstd[n] = 1/sqrt(var[n] + eps) (biased variance); out = (inp - mean) * rstd * weight + bias.
template <class Dev, class F>
void layernorm_forward(const Dev&, F* out, F* mean, F* rstd, const F* inp, const F* weight, const F* bias, int N,
                       int C, float eps);
// dinp (N,C) `+=`; dweight, dbias (C) `+=`.
template <class Dev, class F>
void layernorm_backward(const Dev&, F* dinp, F* dweight, F* dbias, const F* dout, const F* inp, const F* weight,
                        const F* mean, const F* rstd, int N, int C);

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
void softmax_cross_entropy(const Dev&, F* logits, F* losses, const int32_t* targets, int N, int V,
                           int32_t ignore_index, float dloss);

}  // namespace strata::ops
