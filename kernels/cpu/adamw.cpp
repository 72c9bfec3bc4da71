// kernels/cpu/adamw.cpp: the AdamW update and the squared global gradient norm, CPU.
//
// adamw_update, per element of every tensor (engine/optim.cpp's AdamW::step, the same fp32 arithmetic):
//   g = grad_scale * grad
//   m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2                              m, v (n) fp32 `=`
//   p = p * decay - step_size * m / (sqrt(v) * inv_bc2_sqrt + eps)               param (n) `=`
// with decay = 1 - lr wd (1 where wd = 0), step_size = lr / bias_correction1, inv_bc2_sqrt =
// 1 / sqrt(bias_correction2), each folded in double and rounded once to float as the engine does. The CPU
// backend has no master weights (master must be null): param itself is updated. For F = double the update is
// computed in double and the moments are still stored in fp32.
//
// grad_norm_squared: *out = sum over the tensors of sum x^2, in double over fixed chunks of kNormChunk
// elements (chunk sums added in chunk order), so the result depends on neither the thread count nor the
// schedule. *out is host memory.
//
// Both are streaming passes (memory-bound: p, g, m, v read and p, m, v written per element): one OpenMP
// `parallel for simd` over each large tensor, as in the engine.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "engine/check.h"
#include "kernels/ops.h"

namespace strata::ops {

namespace {

constexpr int64_t kMinParallel = 32768;           // elements; below, a fork/join costs more than the pass
constexpr int64_t kNormChunk = int64_t{1} << 16;  // the engine's chunk (engine/optim.cpp sum_squares)

// The update of one tensor in compute type C (float for F = float, double for F = double).
template <class F, class C>
void adamw_tensor(const AdamWTensor<F>& t, const AdamWStep& s, C step_size, C inv_bc2_sqrt, C decay) {
  F* p = t.param;
  const F* g = t.grad;
  float* m = t.m;
  float* v = t.v;
  const C b1 = s.beta1, b2 = s.beta2, eps = s.eps, scale = s.grad_scale;
  const int64_t n = t.n;
#pragma omp parallel for simd schedule(static) if (n > kMinParallel)
  for (int64_t i = 0; i < n; ++i) {
    const C gi = static_cast<C>(g[i]) * scale;
    const C mi = b1 * static_cast<C>(m[i]) + (C(1) - b1) * gi;
    const C vi = b2 * static_cast<C>(v[i]) + (C(1) - b2) * gi * gi;
    m[i] = static_cast<float>(mi);
    v[i] = static_cast<float>(vi);
    p[i] =
        static_cast<F>(static_cast<C>(p[i]) * decay - step_size * mi / (std::sqrt(vi) * inv_bc2_sqrt + eps));
  }
}

}  // namespace

template <class Dev, class F>
void adamw_update(const Dev&, const AdamWTensor<F>* tensors, int count, const AdamWStep& step) {
  STRATA_CHECK(count >= 0 && (tensors || count == 0), "adamw_update: count=", count);
  STRATA_CHECK(step.bias_correction1 > 0 && step.bias_correction2 > 0 && step.eps > 0,
               "adamw_update: bias corrections ", step.bias_correction1, ", ", step.bias_correction2,
               ", eps ", step.eps);
  using C = std::conditional_t<std::is_same_v<F, double>, double, float>;
  // Folded in double, rounded once (engine/optim.cpp does the same from its double lr and betas).
  const double lr = step.lr;
  const C step_size = static_cast<C>(lr / static_cast<double>(step.bias_correction1));
  const C inv_bc2_sqrt = static_cast<C>(1.0 / std::sqrt(static_cast<double>(step.bias_correction2)));
  for (int i = 0; i < count; ++i) {
    const AdamWTensor<F>& t = tensors[i];
    STRATA_CHECK(t.master == nullptr, "adamw_update: tensor ", i,
                 " has master weights (the CPU backend updates param directly)");
    STRATA_CHECK(t.n >= 0, "adamw_update: tensor ", i, " n=", t.n);
    if (t.n == 0) continue;
    STRATA_CHECK(t.param && t.grad && t.m && t.v, "adamw_update: tensor ", i, " has a null pointer");
    const C decay =
        t.weight_decay != 0.0f ? static_cast<C>(1.0 - lr * static_cast<double>(t.weight_decay)) : C(1);
    adamw_tensor<F, C>(t, step, step_size, inv_bc2_sqrt, decay);
  }
}

template <class Dev, class F>
void grad_norm_squared(const Dev&, Stat<F>* out, const ConstSpan<F>* tensors, int count) {
  STRATA_CHECK(out, "grad_norm_squared: null output");
  STRATA_CHECK(count >= 0 && (tensors || count == 0), "grad_norm_squared: count=", count);
  // Every (tensor, chunk) pair, in tensor order: the order the partial sums are added in.
  struct Chunk {
    const F* x;
    int64_t n;
  };
  std::vector<Chunk> chunks;
  for (int i = 0; i < count; ++i) {
    STRATA_CHECK(tensors[i].n >= 0 && (tensors[i].ptr || tensors[i].n == 0), "grad_norm_squared: tensor ", i,
                 " n=", tensors[i].n);
    for (int64_t b = 0; b < tensors[i].n; b += kNormChunk)
      chunks.push_back({tensors[i].ptr + b, std::min(kNormChunk, tensors[i].n - b)});
  }
  const int64_t nchunks = static_cast<int64_t>(chunks.size());
  std::vector<double> part(chunks.size(), 0.0);
#pragma omp parallel for schedule(static) if (nchunks > 1)
  for (int64_t c = 0; c < nchunks; ++c) {
    const F* x = chunks[static_cast<size_t>(c)].x;
    const int64_t n = chunks[static_cast<size_t>(c)].n;
    // Eight interleaved accumulators in a fixed order: the loop vectorises and the sum stays deterministic.
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
      for (int k = 0; k < 8; ++k) acc[k] += static_cast<double>(x[i + k]) * static_cast<double>(x[i + k]);
    for (; i < n; ++i) acc[0] += static_cast<double>(x[i]) * static_cast<double>(x[i]);
    part[static_cast<size_t>(c)] =
        ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  }
  double total = 0.0;
  for (double s : part) total += s;
  *out = static_cast<Stat<F>>(total);
}

#define STRATA_INSTANTIATE(F)                                                                   \
  template void adamw_update<Cpu, F>(const Cpu&, const AdamWTensor<F>*, int, const AdamWStep&); \
  template void grad_norm_squared<Cpu, F>(const Cpu&, Stat<F>*, const ConstSpan<F>*, int);
STRATA_INSTANTIATE(float)
STRATA_INSTANTIATE(double)
#undef STRATA_INSTANTIATE

}  // namespace strata::ops
