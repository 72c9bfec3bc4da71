#include "engine/optim.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/check.h"

namespace strata {

void AdamWConfig::validate() const {
  STRATA_REQUIRE(beta1 >= 0 && beta1 < 1, "--beta1 must be in [0, 1) (got ", beta1, ")");
  STRATA_REQUIRE(beta2 >= 0 && beta2 < 1, "--beta2 must be in [0, 1) (got ", beta2, ")");
  STRATA_REQUIRE(eps > 0 && std::isfinite(eps), "--adam-eps must be positive (got ", eps, ")");
  STRATA_REQUIRE(weight_decay >= 0 && std::isfinite(weight_decay), "--weight-decay must be >= 0 (got ",
                 weight_decay, ")");
}

AdamW::AdamW(const ParamLayout& layout, const AdamWConfig& cfg) : cfg_(cfg), m_(layout), v_(layout) {
  cfg_.validate();
}

void AdamW::reset() {
  m_.zero();
  v_.zero();
  t_ = 0;
}

void AdamW::step(ParamBuffer& params, const ParamBuffer& grads, double lr, float grad_scale) {
  STRATA_CHECK(params.numel() == m_.numel() && grads.numel() == m_.numel(), "AdamW: buffer layouts differ");
  ++t_;
  adamw_update_range(params.layout(), cfg_, t_, lr, grad_scale, 0, params.numel(), params.data(),
                     grads.data(), m_.data(), v_.data());
}

void adamw_update_range(const ParamLayout& layout, const AdamWConfig& cfg, long t, double lr, float grad_scale,
                        int64_t begin, int64_t end, float* params, const float* grads, float* m_buf,
                        float* v_buf) {
  const float b1 = static_cast<float>(cfg.beta1), b2 = static_cast<float>(cfg.beta2);
  const float eps = static_cast<float>(cfg.eps);
  // Bias corrections folded into the step size and the denominator, in double then rounded once.
  const float step_size = static_cast<float>(lr / (1.0 - std::pow(cfg.beta1, static_cast<double>(t))));
  const float inv_bc2_sqrt =
      static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(cfg.beta2, static_cast<double>(t))));
  for (const ParamEntry& e : layout.entries()) {
    // The part of the tensor inside [begin, end), relative to begin (the buffers' base).
    const int64_t lo = std::max(e.offset, begin), hi = std::min(e.offset + e.numel(), end);
    if (lo >= hi) continue;
    float* p = params + (lo - begin);
    const float* g = grads + (lo - begin);
    float* m = m_buf + (lo - begin);
    float* v = v_buf + (lo - begin);
    const float decay = e.spec.weight_decay ? static_cast<float>(1.0 - lr * cfg.weight_decay) : 1.0f;
    const int64_t n = hi - lo;
    // One streaming pass (p, g, m, v): memory-bound, so it vectorises (this file is built with
    // -fno-math-errno, without which sqrtf keeps the loop scalar) and splits across threads for large
    // tensors.
#pragma omp parallel for simd schedule(static) if (n > 32768)
    for (int64_t i = 0; i < n; ++i) {
      const float gi = g[i] * grad_scale;
      const float mi = b1 * m[i] + (1.0f - b1) * gi;
      const float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
      m[i] = mi;
      v[i] = vi;
      p[i] = p[i] * decay - step_size * mi / (std::sqrt(vi) * inv_bc2_sqrt + eps);
    }
  }
}

// Sum of squares over fixed chunks, each summed in double in order, chunk sums added in order: the result
// does not depend on the thread count.
double sum_squares(const float* x, int64_t n) {
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> part(static_cast<size_t>(chunks), 0.0);
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    // Eight interleaved accumulators so the loop vectorises; their order is fixed, so the sum is too.
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const int64_t begin = c * kChunk, end = std::min(n, begin + kChunk);
    int64_t i = begin;
    for (; i + 8 <= end; i += 8)
      for (int k = 0; k < 8; ++k) acc[k] += static_cast<double>(x[i + k]) * x[i + k];
    for (; i < end; ++i) acc[0] += static_cast<double>(x[i]) * x[i];
    part[static_cast<size_t>(c)] =
        ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  }
  double total = 0.0;
  for (double s : part) total += s;
  return total;
}

double grad_norm(const ParamBuffer& grads) {
  return std::sqrt(sum_squares(grads.data(), grads.numel()));
}

float clip_scale(double norm, double max_norm) {
  return (max_norm > 0 && norm > max_norm) ? static_cast<float>(max_norm / (norm + 1e-6)) : 1.0f;
}

}  // namespace strata
