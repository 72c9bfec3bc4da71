// kernels/cpu/softmax_cross_entropy.cpp: fused softmax + cross-entropy, CPU.
//
// Per row n with target y = targets[n]:
//   losses[n] = logsumexp(logits[n,:]) - logits[n,y], or 0 when y == ignore_index                 losses `=`
//   when dloss != 0, logits[n,:] is overwritten by its gradient dloss * (softmax(logits[n,:]) - onehot(y)),
//   a zero row when y == ignore_index                                                             logits `=`
// Shapes: logits (N,V); losses, targets (N).
//
// All targets are validated before any work (an exception cannot leave an OpenMP region): a target outside
// [0,V) that is not ignore_index is a strata::Error naming the value and the row. Rows are independent
// (parallel over n); the sum of exponentials is accumulated in double. With a gradient, the exponentials are
// stored in the row on the way and scaled afterwards, so each logit is exponentiated once.
#include <algorithm>
#include <cmath>

#include "engine/check.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/ops.h"

namespace strata::ops {

using cpu_detail::softmax_exp;

namespace {

// One row with a valid target y: returns the loss; with grad, x becomes dloss * (softmax(x) - onehot(y)).
template <class F>
STRATA_SIMD_CLONES F cross_entropy_row(F* x, int V, int32_t y, bool grad, float dloss) {
  F mx = x[0];
#pragma omp simd reduction(max : mx)
  for (int v = 0; v < V; ++v) mx = x[v] > mx ? x[v] : mx;
  const F xy = x[y];
  double sum = 0.0;
  if (grad) {
#pragma omp simd reduction(+ : sum)
    for (int v = 0; v < V; ++v) {
      const F e = softmax_exp<F>(x[v] - mx);
      x[v] = e;
      sum += static_cast<double>(e);
    }
    const F k = static_cast<F>(static_cast<double>(dloss) / sum);
#pragma omp simd
    for (int v = 0; v < V; ++v) x[v] *= k;
    x[y] -= static_cast<F>(dloss);
  } else {
#pragma omp simd reduction(+ : sum)
    for (int v = 0; v < V; ++v) sum += static_cast<double>(softmax_exp<F>(x[v] - mx));
  }
  return static_cast<F>(std::log(sum) + static_cast<double>(mx) - static_cast<double>(xy));
}

}  // namespace

template <class Dev, class F>
void softmax_cross_entropy(const Dev&, F* logits, Stat<F>* losses, const int32_t* targets, int N, int V,
                           int32_t ignore_index, float dloss) {
  STRATA_CHECK(logits && losses && targets, "softmax_cross_entropy: null pointer");
  STRATA_CHECK(N > 0 && V > 0, "softmax_cross_entropy: N=", N, " V=", V);
  for (int n = 0; n < N; ++n) {
    const int32_t y = targets[n];
    if (y != ignore_index && (y < 0 || y >= V))
      STRATA_FAIL("softmax_cross_entropy: target ", y, " in row ", n, " is outside the vocabulary [0, ", V,
                  ") and is not the ignore index ", ignore_index);
  }
  const bool grad = dloss != 0.0f;
#pragma omp parallel for schedule(static) if (int64_t{N} * V >= cpu_detail::kMinParallelWork)
  for (int n = 0; n < N; ++n) {
    F* x = logits + int64_t{n} * V;
    const int32_t y = targets[n];
    if (y == ignore_index) {
      losses[n] = F(0);
      if (grad) std::fill(x, x + V, F(0));
    } else {
      losses[n] = cross_entropy_row(x, V, y, grad, dloss);
    }
  }
}

#define STRATA_INSTANTIATE(F) \
  template void softmax_cross_entropy<Cpu, F>(const Cpu&, F*, F*, const int32_t*, int, int, int32_t, float);
STRATA_INSTANTIATE(float)
STRATA_INSTANTIATE(double)
#undef STRATA_INSTANTIATE

}  // namespace strata::ops
