// kernels/cpu/embedding.cpp: token (+ learned position) embedding, CPU.
//
// forward:  out[b,t,:] = wte[tokens[b,t], :] + (wpe ? wpe[t, :] : 0)                       out `=`
// backward: dwte[tokens[b,t], :] += dout[b,t,:];  dwpe[t, :] += sum_b dout[b,t,:]           dwte, dwpe `+=`
// Shapes: out, dout (B,T,C); tokens (B,T) in [0,V); wte, dwte (V,C); wpe, dwpe (Tmax,C), Tmax >= T.
//
// Determinism: the backward splits dwte by column blocks (kColBlock columns per task), and each block adds
// the token rows in token order, so repeated tokens accumulate in a fixed order whatever the thread count;
// dwpe is split by position t and sums b in order. Bitwise identical for any OMP_NUM_THREADS.
#include <algorithm>

#include "engine/check.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/ops.h"

namespace strata::ops {

using cpu_detail::kColBlock;
using cpu_detail::kMinParallelWork;

template <class Dev, class F>
void embedding_forward(const Dev&, F* out, const int32_t* tokens, const F* wte, const F* wpe, int B, int T,
                       int C) {
  STRATA_CHECK(out && tokens && wte, "embedding_forward: null pointer");
  STRATA_CHECK(B > 0 && T > 0 && C > 0, "embedding_forward: B=", B, " T=", T, " C=", C);
  const int N = B * T;
#pragma omp parallel for schedule(static) if (int64_t{N} * C >= kMinParallelWork)
  for (int n = 0; n < N; ++n) {
    const F* e = wte + int64_t{tokens[n]} * C;
    F* o = out + int64_t{n} * C;
    if (wpe) {
      const F* p = wpe + int64_t{n % T} * C;
#pragma omp simd
      for (int c = 0; c < C; ++c) o[c] = e[c] + p[c];
    } else {
      std::copy(e, e + C, o);
    }
  }
}

template <class Dev, class F>
void embedding_backward(const Dev&, F* dwte, F* dwpe, const F* dout, const int32_t* tokens, int B, int T,
                        int C) {
  STRATA_CHECK(dwte && dout && tokens, "embedding_backward: null pointer");
  STRATA_CHECK(B > 0 && T > 0 && C > 0, "embedding_backward: B=", B, " T=", T, " C=", C);
  const int N = B * T;
  const int nblocks = (C + kColBlock - 1) / kColBlock;
#pragma omp parallel if (int64_t{N} * C >= kMinParallelWork)
  {
#pragma omp for schedule(static) nowait
    for (int blk = 0; blk < nblocks; ++blk) {
      const int c0 = blk * kColBlock, c1 = std::min(C, c0 + kColBlock);
      for (int n = 0; n < N; ++n) {
        F* d = dwte + int64_t{tokens[n]} * C;
        const F* g = dout + int64_t{n} * C;
#pragma omp simd
        for (int c = c0; c < c1; ++c) d[c] += g[c];
      }
    }
    if (dwpe) {
#pragma omp for schedule(static)
      for (int t = 0; t < T; ++t) {
        F* d = dwpe + int64_t{t} * C;
        for (int b = 0; b < B; ++b) {
          const F* g = dout + (int64_t{b} * T + t) * C;
#pragma omp simd
          for (int c = 0; c < C; ++c) d[c] += g[c];
        }
      }
    }
  }
}

#define STRATA_INSTANTIATE(F)                                                                           \
  template void embedding_forward<Cpu, F>(const Cpu&, F*, const int32_t*, const F*, const F*, int, int, \
                                          int);                                                         \
  template void embedding_backward<Cpu, F>(const Cpu&, F*, F*, const F*, const int32_t*, int, int, int);
STRATA_INSTANTIATE(float)
STRATA_INSTANTIATE(double)
#undef STRATA_INSTANTIATE

}  // namespace strata::ops
