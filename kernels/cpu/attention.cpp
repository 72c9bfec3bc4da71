// kernels/cpu/attention.cpp: causal grouped-query attention, CPU (OpenBLAS per (batch, head)).
//
// qkv (B,T,(NH+2*KVH)*HS) holds per token NH query heads, then KVH key heads, then KVH value heads (after
// RoPE). Query head h reads key/value head g = h / (NH/KVH). scale = 1/sqrt(HS).
// forward:  att[b,h,t,s] = softmax_{s<=t}(q_t . k_s * scale), 0 for s > t                      att `=`
//           out[b,t,h*HS:(h+1)*HS] = sum_s att[b,h,t,s] v_s                                   out `=`
// backward: datt = dout_h v^T;  dpre = att * (datt - sum_s att * datt) * scale  (in datt, scratch)
//           dq_h = dpre k;  dk_g = sum_{h in g} dpre^T q_h;  dv_g = sum_{h in g} att^T dout_h  dqkv `=`
// decode:   the Tn new tokens of one sequence at positions [Tp, Tp+Tn) attend to cache rows [0, Tp+t]:
//           q, out (Tn, NH*HS); kcache, vcache (>= Tp+Tn, KVH*HS); scratch (NH, Tp+Tn)         out `=`
// Shapes: out, dout (B,T,NH*HS); att, datt (B,NH,T,T); dqkv like qkv.
//
// The products are BLAS calls on strided head views (lda = the qkv row length), one (b, h) task per OpenMP
// iteration (the backward: one (b, g) task, so the KVH gradient sums of a group stay in one thread, in head
// order: deterministic). OpenBLAS runs single-threaded inside the parallel region. Causality is exploited in
// blocks of kRowBlock query rows: a block only multiplies keys [0, block end), halving the work for long T.
// Softmax sums in double; the float exp is the vectorised polynomial of cpu_common.h.
#include <algorithm>
#include <cmath>

#include "engine/check.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/ops.h"

namespace strata::ops {

using cpu_detail::attention_work;
using cpu_detail::check_attention_shapes;
using cpu_detail::gemm;
using cpu_detail::softmax_exp;

namespace {

// Rows per causal block: big enough for BLAS efficiency, small enough to skip the masked work.
constexpr int kRowBlock = 64;

// In place on row t of scaled scores p[0, n), n > t: p[s] = softmax over s <= t, 0 for s in (t, len).
// The exp loop runs to m = t+1 rounded up to 16 (whole vectors, no scalar exp remainder; the extra entries
// are computed scores, zeroed before the sum), so the sum and scale loops over [0, m) see zeros there.
template <class F>
STRATA_SIMD_CLONES void softmax_causal_row(F* p, int t, int n, int len) {
  const int m = std::min(n, (t + 16) & ~15);
  F mx = p[0];
#pragma omp simd reduction(max : mx)
  for (int s = 0; s <= t; ++s) mx = p[s] > mx ? p[s] : mx;
#pragma omp simd
  for (int s = 0; s < m; ++s) p[s] = softmax_exp<F>(p[s] - mx);
  std::fill(p + t + 1, p + len, F(0));
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int s = 0; s < m; ++s) sum += static_cast<double>(p[s]);
  const F inv = static_cast<F>(1.0 / sum);
#pragma omp simd
  for (int s = 0; s < m; ++s) p[s] *= inv;
}

// Softmax backward of row t, in place on dr[0, n): dr[s] = a[s] (dr[s] - sum_u a[u] dr[u]) scale, where a is
// zero above the diagonal (so is the result); dr[n, len) = 0.
template <class F>
STRATA_SIMD_CLONES void softmax_backward_row(const F* a, F* dr, int n, int len, F scale) {
  double dot = 0.0;
#pragma omp simd reduction(+ : dot)
  for (int s = 0; s < n; ++s) dot += static_cast<double>(a[s]) * static_cast<double>(dr[s]);
  const F d = static_cast<F>(dot);
#pragma omp simd
  for (int s = 0; s < n; ++s) dr[s] = a[s] * (dr[s] - d) * scale;
  std::fill(dr + n, dr + len, F(0));
}

// One decode query q (HS) against cache rows [0, len): o (HS) = softmax(q . k * scale) v; p (len) is scratch.
template <class F>
STRATA_SIMD_CLONES void decode_row(F* o, F* p, const F* q, const F* k, const F* v, int ld, int len, int HS,
                                   F scale) {
  for (int s = 0; s < len; ++s) {
    const F* ks = k + int64_t{s} * ld;
    F dot = F(0);
#pragma omp simd reduction(+ : dot)
    for (int i = 0; i < HS; ++i) dot += q[i] * ks[i];
    p[s] = dot * scale;
  }
  softmax_causal_row(p, len - 1, len, len);
  std::fill(o, o + HS, F(0));
  for (int s = 0; s < len; ++s) {
    const F* vs = v + int64_t{s} * ld;
    const F w = p[s];
#pragma omp simd
    for (int i = 0; i < HS; ++i) o[i] += w * vs[i];
  }
}

}  // namespace

template <class Dev, class F>
void attention_forward(const Dev&, F* out, F* att, const F* qkv, int B, int T, int NH, int KVH, int HS) {
  STRATA_CHECK(out && att && qkv, "attention_forward: null pointer");
  check_attention_shapes("attention_forward", B, T, NH, KVH, HS);
  const int R = (NH + 2 * KVH) * HS;  // qkv row length
  const int OC = NH * HS;             // out row length
  const int group = NH / KVH;
  const F scale = static_cast<F>(1.0 / std::sqrt(static_cast<double>(HS)));
#pragma omp parallel for schedule(static) if (attention_work(B, T, NH, HS) >= cpu_detail::kMinParallelFlops)
  for (int bh = 0; bh < B * NH; ++bh) {
    const int b = bh / NH, h = bh % NH, g = h / group;
    const F* q = qkv + int64_t{b} * T * R + int64_t{h} * HS;
    const F* k = qkv + int64_t{b} * T * R + int64_t{NH + g} * HS;
    const F* v = qkv + int64_t{b} * T * R + int64_t{NH + KVH + g} * HS;
    F* a = att + int64_t{bh} * T * T;
    F* o = out + int64_t{b} * T * OC + int64_t{h} * HS;
    for (int r0 = 0; r0 < T; r0 += kRowBlock) {
      const int r1 = std::min(T, r0 + kRowBlock);
      gemm<F>(false, true, r1 - r0, r1, HS, scale, q + int64_t{r0} * R, R, k, R, F(0), a + int64_t{r0} * T,
              T);
      for (int t = r0; t < r1; ++t) softmax_causal_row(a + int64_t{t} * T, t, r1, T);
      gemm<F>(false, false, r1 - r0, HS, r1, F(1), a + int64_t{r0} * T, T, v, R, F(0), o + int64_t{r0} * OC,
              OC);
    }
  }
}

template <class Dev, class F>
void attention_backward(const Dev&, F* dqkv, F* datt, const F* dout, const F* qkv, const F* att, int B, int T,
                        int NH, int KVH, int HS) {
  STRATA_CHECK(dqkv && datt && dout && qkv && att, "attention_backward: null pointer");
  check_attention_shapes("attention_backward", B, T, NH, KVH, HS);
  const int R = (NH + 2 * KVH) * HS;
  const int OC = NH * HS;
  const int group = NH / KVH;
  const F scale = static_cast<F>(1.0 / std::sqrt(static_cast<double>(HS)));
#pragma omp parallel for schedule(static) if (attention_work(B, T, NH, HS) >= cpu_detail::kMinParallelFlops)
  for (int bg = 0; bg < B * KVH; ++bg) {
    const int b = bg / KVH, g = bg % KVH;
    const int64_t base = int64_t{b} * T * R;
    const F* k = qkv + base + int64_t{NH + g} * HS;
    const F* v = qkv + base + int64_t{NH + KVH + g} * HS;
    F* dk = dqkv + base + int64_t{NH + g} * HS;
    F* dv = dqkv + base + int64_t{NH + KVH + g} * HS;
    for (int hi = 0; hi < group; ++hi) {
      const int h = g * group + hi;
      const F* q = qkv + base + int64_t{h} * HS;
      F* dq = dqkv + base + int64_t{h} * HS;
      const F* a = att + (int64_t{b} * NH + h) * T * T;
      F* da = datt + (int64_t{b} * NH + h) * T * T;
      const F* dy = dout + int64_t{b} * T * OC + int64_t{h} * HS;
      for (int r0 = 0; r0 < T; r0 += kRowBlock) {
        const int r1 = std::min(T, r0 + kRowBlock);
        gemm<F>(false, true, r1 - r0, r1, HS, F(1), dy + int64_t{r0} * OC, OC, v, R, F(0),
                da + int64_t{r0} * T, T);
        for (int t = r0; t < r1; ++t)
          softmax_backward_row(a + int64_t{t} * T, da + int64_t{t} * T, r1, T, scale);
        gemm<F>(false, false, r1 - r0, HS, r1, F(1), da + int64_t{r0} * T, T, k, R, F(0),
                dq + int64_t{r0} * R, R);
      }
      // dk, dv rows [c0, c1) gather query rows t >= c0: columns c0..c1 of the lower-triangular dpre / att.
      const F beta = hi == 0 ? F(0) : F(1);
      for (int c0 = 0; c0 < T; c0 += kRowBlock) {
        const int c1 = std::min(T, c0 + kRowBlock);
        const int64_t off = int64_t{c0} * T + c0;
        gemm<F>(true, false, c1 - c0, HS, T - c0, F(1), da + off, T, q + int64_t{c0} * R, R, beta,
                dk + int64_t{c0} * R, R);
        gemm<F>(true, false, c1 - c0, HS, T - c0, F(1), a + off, T, dy + int64_t{c0} * OC, OC, beta,
                dv + int64_t{c0} * R, R);
      }
    }
  }
}

template <class Dev, class F>
void attention_decode(const Dev&, F* out, F* scratch, const F* q, const F* kcache, const F* vcache, int Tp,
                      int Tn, int NH, int KVH, int HS) {
  STRATA_CHECK(out && scratch && q && kcache && vcache, "attention_decode: null pointer");
  STRATA_CHECK(Tp >= 0 && Tn > 0, "attention_decode: Tp=", Tp, " Tn=", Tn);
  check_attention_shapes("attention_decode", 1, Tn, NH, KVH, HS);
  const int L = Tp + Tn;
  const int OC = NH * HS;
  const int KC = KVH * HS;  // cache row length
  const int group = NH / KVH;
  const F scale = static_cast<F>(1.0 / std::sqrt(static_cast<double>(HS)));
#pragma omp parallel for schedule(static) if (int64_t{NH} * Tn * L * HS >= cpu_detail::kMinParallelWork)
  for (int h = 0; h < NH; ++h) {
    const int g = h / group;
    F* p = scratch + int64_t{h} * L;
    for (int t = 0; t < Tn; ++t)
      decode_row(out + int64_t{t} * OC + int64_t{h} * HS, p, q + int64_t{t} * OC + int64_t{h} * HS,
                 kcache + int64_t{g} * HS, vcache + int64_t{g} * HS, KC, Tp + t + 1, HS, scale);
  }
}

#define STRATA_INSTANTIATE(F)                                                                               \
  template void attention_forward<Cpu, F>(const Cpu&, F*, F*, const F*, int, int, int, int, int);           \
  template void attention_backward<Cpu, F>(const Cpu&, F*, F*, const F*, const F*, const F*, int, int, int, \
                                           int, int);                                                       \
  template void attention_decode<Cpu, F>(const Cpu&, F*, F*, const F*, const F*, const F*, int, int, int,   \
                                         int, int);
STRATA_INSTANTIATE(float)
STRATA_INSTANTIATE(double)
#undef STRATA_INSTANTIATE

}  // namespace strata::ops
