// kernels/cpu/rmsnorm.cpp: RMSNorm, CPU.
//
// forward:  rstd[n] = 1 / sqrt(mean_c inp[n,c]^2 + eps)
//           out[n,c] = inp[n,c] * rstd[n] * weight[c]                                       out, rstd `=`
// backward: with xhat = inp * rstd and g = dout * weight,
//           dinp[n,c]  += rstd[n] * (g[n,c] - xhat[n,c] * mean_c(g[n,:] * xhat[n,:]))          dinp `+=`
//           dweight[c] += sum_n dout[n,c] * xhat[n,c]                                       dweight `+=`
// Shapes: out, inp, dout, dinp (N,C); rstd (N); weight, dweight (C).
//
// Row statistics are accumulated in double. Rows are independent (parallel over n); dweight is reduced
// column-wise (each column block owned by one thread, rows summed in order, in double), so every output is
// bitwise identical for any thread count.
#include <algorithm>
#include <cmath>

#include "engine/check.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/ops.h"

namespace strata::ops {

using cpu_detail::kColBlock;
using cpu_detail::kMinParallelWork;

namespace {

template <class F>
STRATA_SIMD_CLONES void rmsnorm_forward_row(F* o, F* rstd, const F* x, const F* weight, int C, float eps) {
  double ss = 0.0;
#pragma omp simd reduction(+ : ss)
  for (int c = 0; c < C; ++c) ss += static_cast<double>(x[c]) * static_cast<double>(x[c]);
  const F r = static_cast<F>(1.0 / std::sqrt(ss / C + static_cast<double>(eps)));
  *rstd = r;
#pragma omp simd
  for (int c = 0; c < C; ++c) o[c] = x[c] * r * weight[c];
}

template <class F>
STRATA_SIMD_CLONES void rmsnorm_backward_row(F* dx, const F* dy, const F* x, const F* weight, F r, int C) {
  double dot = 0.0;  // sum_c g * xhat
#pragma omp simd reduction(+ : dot)
  for (int c = 0; c < C; ++c) dot += static_cast<double>(dy[c] * weight[c]) * static_cast<double>(x[c] * r);
  const F k = static_cast<F>(dot / C);
#pragma omp simd
  for (int c = 0; c < C; ++c) dx[c] += r * (dy[c] * weight[c] - x[c] * r * k);
}

// dweight[c0, c0+w) += sum_n dout[n,c] * inp[n,c] * rstd[n], rows in order, in double.
template <class F>
STRATA_SIMD_CLONES void rmsnorm_dweight_block(F* dweight, const F* dout, const F* inp, const F* rstd, int N,
                                              int C, int c0, int w) {
  double acc[kColBlock] = {};
  for (int n = 0; n < N; ++n) {
    const F* x = inp + int64_t{n} * C + c0;
    const F* dy = dout + int64_t{n} * C + c0;
    const double r = static_cast<double>(rstd[n]);
#pragma omp simd
    for (int j = 0; j < w; ++j) acc[j] += static_cast<double>(dy[j]) * static_cast<double>(x[j]) * r;
  }
  for (int j = 0; j < w; ++j) dweight[c0 + j] += static_cast<F>(acc[j]);
}

}  // namespace

template <class Dev, class F>
void rmsnorm_forward(const Dev&, F* out, Stat<F>* rstd, const F* inp, const F* weight, int N, int C, float eps) {
  STRATA_CHECK(out && rstd && inp && weight, "rmsnorm_forward: null pointer");
  STRATA_CHECK(N > 0 && C > 0 && eps >= 0.0f, "rmsnorm_forward: N=", N, " C=", C, " eps=", eps);
#pragma omp parallel for schedule(static) if (int64_t{N} * C >= kMinParallelWork)
  for (int n = 0; n < N; ++n)
    rmsnorm_forward_row(out + int64_t{n} * C, rstd + n, inp + int64_t{n} * C, weight, C, eps);
}

template <class Dev, class F>
void rmsnorm_backward(const Dev&, F* dinp, F* dweight, const F* dout, const F* inp, const F* weight,
                      const Stat<F>* rstd, int N, int C) {
  STRATA_CHECK(dinp && dweight && dout && inp && weight && rstd, "rmsnorm_backward: null pointer");
  STRATA_CHECK(N > 0 && C > 0, "rmsnorm_backward: N=", N, " C=", C);
  const int nblocks = (C + kColBlock - 1) / kColBlock;
#pragma omp parallel if (int64_t{N} * C >= kMinParallelWork)
  {
#pragma omp for schedule(static) nowait
    for (int n = 0; n < N; ++n)
      rmsnorm_backward_row(dinp + int64_t{n} * C, dout + int64_t{n} * C, inp + int64_t{n} * C, weight,
                           rstd[n], C);
#pragma omp for schedule(static)
    for (int blk = 0; blk < nblocks; ++blk) {
      const int c0 = blk * kColBlock;
      rmsnorm_dweight_block(dweight, dout, inp, rstd, N, C, c0, std::min(C - c0, kColBlock));
    }
  }
}

#define STRATA_INSTANTIATE(F)                                                                             \
  template void rmsnorm_forward<Cpu, F>(const Cpu&, F*, F*, const F*, const F*, int, int, float);         \
  template void rmsnorm_backward<Cpu, F>(const Cpu&, F*, F*, const F*, const F*, const F*, const F*, int, \
                                         int);
STRATA_INSTANTIATE(float)
STRATA_INSTANTIATE(double)
#undef STRATA_INSTANTIATE

}  // namespace strata::ops
