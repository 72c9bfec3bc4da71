// kernels/cpu/flash_attention.cpp: causal grouped-query flash attention, CPU (the twin of
// kernels/cuda/flash_attention.cu): the same function as attention.cpp without the (T,T) matrix.
//
// qkv (B,T,(NH+2*KVH)*HS): per token NH query heads, then KVH key heads, then KVH value heads (after RoPE).
// Query head h reads key/value head g = h / (NH/KVH). scale = 1/sqrt(HS); s_ts = q_t . k_s * scale.
// forward:  lse[b,h,t] = log sum_{s<=t} exp(s_ts)   (natural log)                                lse `=`
//           out[b,t,h*HS:(h+1)*HS] = sum_{s<=t} exp(s_ts - lse) v_s                              out `=`
// backward: p_ts = exp(s_ts - lse[t]) (recomputed);  delta[t] = dout_t . out_t                 delta `=`
//           dp_ts = dout_t . v_s;  ds_ts = p_ts (dp_ts - delta[t]) scale
//           dq_t = sum_s ds_ts k_s;  dk_s = sum_{h in g} sum_t ds_ts q_t;  dv_s = sum_{h in g} sum_t p_ts dout_t
//                                                                                            dqkv `=`
// Shapes: out, dout (B,T,NH*HS); lse, delta (B,NH,T); dqkv like qkv.
//
// Tiles of kTile queries x kTile keys: the scores of one tile live in a stack buffer (kTile^2 elements), so
// memory is O(T) like the CUDA kernel. The forward keeps a running max m and sum l per row (online softmax)
// and accumulates the unnormalised output in `out` itself, rescaled when m grows; the backward recomputes each
// tile's probabilities from lse. Products are BLAS calls on strided head views. One (b, h) task per OpenMP
// iteration in the forward; one (b, g) task in the backward, so dK/dV of a group are summed in one thread in a
// fixed order (deterministic, independent of the thread count).
#include <algorithm>
#include <cmath>

#include "engine/check.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/ops.h"

namespace strata::ops {

using cpu_detail::gemm;
using cpu_detail::attention_work;
using cpu_detail::check_attention_shapes;
using cpu_detail::softmax_exp;

namespace {

// Queries and keys per tile: big enough for BLAS efficiency, small enough for the stack (32 KB in double).
constexpr int kTile = 64;

// Online-softmax step of one row of scores p[0, nc) (keys c0.., valid up to n <= nc): updates the running max
// m and sum l, leaves p[s] = exp(p[s] - m_new) (0 past n) and returns the factor exp(m_old - m_new) by which
// the row's earlier output must be rescaled (0 on the first tile).
template <class F>
STRATA_SIMD_CLONES F online_softmax_row(F* p, int n, int nc, bool first, F& m, double& l) {
  F mx = p[0];
#pragma omp simd reduction(max : mx)
  for (int s = 0; s < n; ++s) mx = p[s] > mx ? p[s] : mx;
  const F m_new = first ? mx : std::max(m, mx);
  const F alpha = first ? F(0) : softmax_exp<F>(m - m_new);
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int s = 0; s < n; ++s) {
    p[s] = softmax_exp<F>(p[s] - m_new);
    sum += static_cast<double>(p[s]);
  }
  std::fill(p + n, p + nc, F(0));
  l = first ? sum : l * static_cast<double>(alpha) + sum;
  m = m_new;
  return alpha;
}

// Backward of one row of a tile, in place: p[s] = exp(p[s] - lse) for s < n (0 after), and
// dp[s] = p[s] (dp[s] - delta) scale (0 after n).
template <class F>
STRATA_SIMD_CLONES void backward_row(F* p, F* dp, int n, int nc, F lse, F delta, F scale) {
#pragma omp simd
  for (int s = 0; s < n; ++s) {
    p[s] = softmax_exp<F>(p[s] - lse);
    dp[s] = p[s] * (dp[s] - delta) * scale;
  }
  std::fill(p + n, p + nc, F(0));
  std::fill(dp + n, dp + nc, F(0));
}

}  // namespace

template <class Dev, class F>
void flash_attention_forward(const Dev&, F* out, Stat<F>* lse, const F* qkv, int B, int T, int NH, int KVH,
                             int HS) {
  STRATA_CHECK(out && lse && qkv, "flash_attention_forward: null pointer");
  check_attention_shapes("flash_attention_forward", B, T, NH, KVH, HS);
  const int R = (NH + 2 * KVH) * HS;  // qkv row length
  const int OC = NH * HS;             // out row length
  const int group = NH / KVH;
  const F scale = static_cast<F>(1.0 / std::sqrt(static_cast<double>(HS)));
#pragma omp parallel for schedule(dynamic) if (attention_work(B, T, NH, HS) >= cpu_detail::kMinParallelFlops)
  for (int bh = 0; bh < B * NH; ++bh) {
    const int b = bh / NH, h = bh % NH, g = h / group;
    const F* q = qkv + int64_t{b} * T * R + int64_t{h} * HS;
    const F* k = qkv + int64_t{b} * T * R + int64_t{NH + g} * HS;
    const F* v = qkv + int64_t{b} * T * R + int64_t{NH + KVH + g} * HS;
    F* o = out + int64_t{b} * T * OC + int64_t{h} * HS;
    Stat<F>* lse_h = lse + int64_t{bh} * T;
    F s[kTile * kTile];
    F m[kTile];
    double l[kTile];
    for (int r0 = 0; r0 < T; r0 += kTile) {
      const int nr = std::min(T, r0 + kTile) - r0;
      // Key tiles c0 <= r0: every row t >= r0 >= c0 has at least one key in each, so m is finite throughout.
      for (int c0 = 0; c0 <= r0; c0 += kTile) {
        const int nc = std::min(T - c0, kTile);
        const bool first = c0 == 0;
        gemm<F>(false, true, nr, nc, HS, scale, q + int64_t{r0} * R, R, k + int64_t{c0} * R, R, F(0), s, kTile);
        for (int i = 0; i < nr; ++i) {
          const int n = std::min(nc, r0 + i - c0 + 1);  // keys s <= t in this tile
          const F alpha = online_softmax_row(s + i * kTile, n, nc, first, m[i], l[i]);
          if (!first && alpha != F(1)) {
            F* oi = o + int64_t{r0 + i} * OC;
#pragma omp simd
            for (int d = 0; d < HS; ++d) oi[d] *= alpha;
          }
        }
        gemm<F>(false, false, nr, HS, nc, F(1), s, kTile, v + int64_t{c0} * R, R, first ? F(0) : F(1),
                o + int64_t{r0} * OC, OC);
      }
      for (int i = 0; i < nr; ++i) {
        F* oi = o + int64_t{r0 + i} * OC;
        const F inv = static_cast<F>(1.0 / l[i]);
#pragma omp simd
        for (int d = 0; d < HS; ++d) oi[d] *= inv;
        lse_h[r0 + i] = static_cast<Stat<F>>(static_cast<double>(m[i]) + std::log(l[i]));
      }
    }
  }
}

template <class Dev, class F>
void flash_attention_backward(const Dev&, F* dqkv, Stat<F>* delta, const F* dout, const F* out, const F* qkv,
                              const Stat<F>* lse, int B, int T, int NH, int KVH, int HS) {
  STRATA_CHECK(dqkv && delta && dout && out && qkv && lse, "flash_attention_backward: null pointer");
  check_attention_shapes("flash_attention_backward", B, T, NH, KVH, HS);
  const int R = (NH + 2 * KVH) * HS;
  const int OC = NH * HS;
  const int group = NH / KVH;
  const F scale = static_cast<F>(1.0 / std::sqrt(static_cast<double>(HS)));
#pragma omp parallel for schedule(dynamic) if (attention_work(B, T, NH, HS) >= cpu_detail::kMinParallelFlops)
  for (int bg = 0; bg < B * KVH; ++bg) {
    const int b = bg / KVH, g = bg % KVH;
    const int64_t base = int64_t{b} * T * R;
    const F* k = qkv + base + int64_t{NH + g} * HS;
    const F* v = qkv + base + int64_t{NH + KVH + g} * HS;
    F* dk = dqkv + base + int64_t{NH + g} * HS;
    F* dv = dqkv + base + int64_t{NH + KVH + g} * HS;
    for (int t = 0; t < T; ++t) {
      std::fill(dk + int64_t{t} * R, dk + int64_t{t} * R + HS, F(0));
      std::fill(dv + int64_t{t} * R, dv + int64_t{t} * R + HS, F(0));
    }
    F p[kTile * kTile], dp[kTile * kTile];
    for (int hi = 0; hi < group; ++hi) {
      const int h = g * group + hi;
      const F* q = qkv + base + int64_t{h} * HS;
      F* dq = dqkv + base + int64_t{h} * HS;
      const F* dy = dout + int64_t{b} * T * OC + int64_t{h} * HS;
      const F* y = out + int64_t{b} * T * OC + int64_t{h} * HS;
      const Stat<F>* lse_h = lse + (int64_t{b} * NH + h) * T;
      Stat<F>* delta_h = delta + (int64_t{b} * NH + h) * T;
      for (int t = 0; t < T; ++t) {
        double d = 0.0;
        const F* dyt = dy + int64_t{t} * OC;
        const F* yt = y + int64_t{t} * OC;
#pragma omp simd reduction(+ : d)
        for (int i = 0; i < HS; ++i) d += static_cast<double>(dyt[i]) * static_cast<double>(yt[i]);
        delta_h[t] = static_cast<Stat<F>>(d);
      }
      for (int r0 = 0; r0 < T; r0 += kTile) {
        const int nr = std::min(T, r0 + kTile) - r0;
        for (int c0 = 0; c0 <= r0; c0 += kTile) {
          const int nc = std::min(T - c0, kTile);
          const F* qr = q + int64_t{r0} * R;
          const F* dyr = dy + int64_t{r0} * OC;
          gemm<F>(false, true, nr, nc, HS, scale, qr, R, k + int64_t{c0} * R, R, F(0), p, kTile);
          gemm<F>(false, true, nr, nc, HS, F(1), dyr, OC, v + int64_t{c0} * R, R, F(0), dp, kTile);
          for (int i = 0; i < nr; ++i)
            backward_row(p + i * kTile, dp + i * kTile, std::min(nc, r0 + i - c0 + 1), nc,
                         static_cast<F>(lse_h[r0 + i]), static_cast<F>(delta_h[r0 + i]), scale);
          // dq rows [r0, r0+nr) += ds k;  dk, dv rows [c0, c0+nc) += ds^T q, p^T dout.
          gemm<F>(false, false, nr, HS, nc, F(1), dp, kTile, k + int64_t{c0} * R, R, c0 == 0 ? F(0) : F(1),
                  dq + int64_t{r0} * R, R);
          gemm<F>(true, false, nc, HS, nr, F(1), dp, kTile, qr, R, F(1), dk + int64_t{c0} * R, R);
          gemm<F>(true, false, nc, HS, nr, F(1), p, kTile, dyr, OC, F(1), dv + int64_t{c0} * R, R);
        }
      }
    }
  }
}

#define STRATA_INSTANTIATE(F)                                                                                \
  template void flash_attention_forward<Cpu, F>(const Cpu&, F*, Stat<F>*, const F*, int, int, int, int, int); \
  template void flash_attention_backward<Cpu, F>(const Cpu&, F*, Stat<F>*, const F*, const F*, const F*,     \
                                                 const Stat<F>*, int, int, int, int, int);
STRATA_INSTANTIATE(float)
STRATA_INSTANTIATE(double)
#undef STRATA_INSTANTIATE

}  // namespace strata::ops
