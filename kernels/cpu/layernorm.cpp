// kernels/cpu/layernorm.cpp: LayerNorm (biased variance), CPU.
//
// forward:  mean[n] = mean_c inp[n,c];  rstd[n] = 1 / sqrt(mean_c (inp[n,c] - mean[n])^2 + eps)
//           out[n,c] = (inp[n,c] - mean[n]) * rstd[n] * weight[c] + bias[c]          out, mean, rstd `=`
// backward: with xhat = (inp - mean) * rstd and g = dout * weight,
//           dinp[n,c]  += rstd[n] * (g - mean_c(g) - xhat * mean_c(g * xhat))                  dinp `+=`
//           dweight[c] += sum_n dout[n,c] * xhat[n,c];  dbias[c] += sum_n dout[n,c]   dweight, dbias `+=`
// Shapes: out, inp, dout, dinp (N,C); mean, rstd (N); weight, bias, dweight, dbias (C).
//
// Statistics in double, the variance in two passes (no cancellation). Rows are independent; dweight and dbias
// are reduced column-wise (column blocks, rows in order, double accumulators), so every output is bitwise
// identical for any thread count.
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
STRATA_SIMD_CLONES void layernorm_forward_row(F* o, F* mean, F* rstd, const F* x, const F* weight,
                                              const F* bias, int C, float eps) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int c = 0; c < C; ++c) s += static_cast<double>(x[c]);
  const double m = s / C;
  double v = 0.0;
#pragma omp simd reduction(+ : v)
  for (int c = 0; c < C; ++c) {
    const double d = static_cast<double>(x[c]) - m;
    v += d * d;
  }
  const F mf = static_cast<F>(m);
  const F r = static_cast<F>(1.0 / std::sqrt(v / C + static_cast<double>(eps)));
  *mean = mf;
  *rstd = r;
#pragma omp simd
  for (int c = 0; c < C; ++c) o[c] = (x[c] - mf) * r * weight[c] + bias[c];
}

template <class F>
STRATA_SIMD_CLONES void layernorm_backward_row(F* dx, const F* dy, const F* x, const F* weight, F m, F r,
                                               int C) {
  double sg = 0.0, sgx = 0.0;  // sum_c g, sum_c g * xhat
#pragma omp simd reduction(+ : sg, sgx)
  for (int c = 0; c < C; ++c) {
    const double g = static_cast<double>(dy[c] * weight[c]);
    sg += g;
    sgx += g * static_cast<double>((x[c] - m) * r);
  }
  const F mg = static_cast<F>(sg / C), mgx = static_cast<F>(sgx / C);
#pragma omp simd
  for (int c = 0; c < C; ++c) dx[c] += r * (dy[c] * weight[c] - mg - (x[c] - m) * r * mgx);
}

// dweight, dbias [c0, c0+w) += column sums over n in order, in double.
template <class F>
STRATA_SIMD_CLONES void layernorm_dparam_block(F* dweight, F* dbias, const F* dout, const F* inp,
                                               const F* mean, const F* rstd, int N, int C, int c0, int w) {
  double aw[kColBlock] = {}, ab[kColBlock] = {};
  for (int n = 0; n < N; ++n) {
    const F* x = inp + int64_t{n} * C + c0;
    const F* dy = dout + int64_t{n} * C + c0;
    const double m = static_cast<double>(mean[n]), r = static_cast<double>(rstd[n]);
#pragma omp simd
    for (int j = 0; j < w; ++j) {
      const double g = static_cast<double>(dy[j]);
      aw[j] += g * (static_cast<double>(x[j]) - m) * r;
      ab[j] += g;
    }
  }
  for (int j = 0; j < w; ++j) {
    dweight[c0 + j] += static_cast<F>(aw[j]);
    dbias[c0 + j] += static_cast<F>(ab[j]);
  }
}

}  // namespace

template <class Dev, class F>
void layernorm_forward(const Dev&, F* out, Stat<F>* mean, Stat<F>* rstd, const F* inp, const F* weight, const F* bias,
                       int N, int C, float eps) {
  STRATA_CHECK(out && mean && rstd && inp && weight && bias, "layernorm_forward: null pointer");
  STRATA_CHECK(N > 0 && C > 0 && eps >= 0.0f, "layernorm_forward: N=", N, " C=", C, " eps=", eps);
#pragma omp parallel for schedule(static) if (int64_t{N} * C >= kMinParallelWork)
  for (int n = 0; n < N; ++n)
    layernorm_forward_row(out + int64_t{n} * C, mean + n, rstd + n, inp + int64_t{n} * C, weight, bias, C,
                          eps);
}

template <class Dev, class F>
void layernorm_backward(const Dev&, F* dinp, F* dweight, F* dbias, const F* dout, const F* inp,
                        const F* weight, const Stat<F>* mean, const Stat<F>* rstd, int N, int C) {
  STRATA_CHECK(dinp && dweight && dbias && dout && inp && weight && mean && rstd,
               "layernorm_backward: null pointer");
  STRATA_CHECK(N > 0 && C > 0, "layernorm_backward: N=", N, " C=", C);
  const int nblocks = (C + kColBlock - 1) / kColBlock;
#pragma omp parallel if (int64_t{N} * C >= kMinParallelWork)
  {
#pragma omp for schedule(static) nowait
    for (int n = 0; n < N; ++n)
      layernorm_backward_row(dinp + int64_t{n} * C, dout + int64_t{n} * C, inp + int64_t{n} * C, weight,
                             mean[n], rstd[n], C);
#pragma omp for schedule(static)
    for (int blk = 0; blk < nblocks; ++blk) {
      const int c0 = blk * kColBlock;
      layernorm_dparam_block(dweight, dbias, dout, inp, mean, rstd, N, C, c0, std::min(C - c0, kColBlock));
    }
  }
}

#define STRATA_INSTANTIATE(F)                                                                              \
  template void layernorm_forward<Cpu, F>(const Cpu&, F*, F*, F*, const F*, const F*, const F*, int, int,  \
                                          float);                                                          \
  template void layernorm_backward<Cpu, F>(const Cpu&, F*, F*, F*, const F*, const F*, const F*, const F*, \
                                           const F*, int, int);
STRATA_INSTANTIATE(float)
STRATA_INSTANTIATE(double)
#undef STRATA_INSTANTIATE

}  // namespace strata::ops
