// kernels/cpu/rope.cpp: rotary position embedding, GPT-NeoX "rotate half" layout over the full head, CPU.
//
// In place on the NH query heads and KVH key heads of every token row of qkv (B,T,(NH+2*KVH)*HS); the KVH
// value heads are untouched. For i in [0, HS/2), position p = pos0 + t, theta_i = p * base^(-2i/HS):
// forward:  x'[i] = x[i] cos - x[i+HS/2] sin;  x'[i+HS/2] = x[i+HS/2] cos + x[i] sin        qkv in place
// backward: the transpose (inverse) rotation, angle -theta, on dqkv (B,T,(NH+2*KVH)*HS)    dqkv in place
//
// The angle and its cos/sin are computed in double for both element types (float's p * inv_freq loses ~3
// digits by p ~ 4096), once per (position, i), and applied to the NH+KVH rotated heads of all B rows.
#include <cmath>

#include "engine/check.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/ops.h"

namespace strata::ops {

namespace {

constexpr int kMaxHalf = 512;  // cos/sin of one position live on the stack: head dims up to 1024

// sign = +1: the forward rotation; -1: its transpose.
template <class F>
void rope_rotate(F* qkv, int B, int T, int NH, int KVH, int HS, float base, int pos0, double sign) {
  STRATA_CHECK(qkv, "rope: null pointer");
  STRATA_CHECK(B > 0 && T > 0 && NH > 0 && KVH > 0 && HS > 0, "rope: B=", B, " T=", T, " NH=", NH,
               " KVH=", KVH, " HS=", HS);
  STRATA_CHECK(HS % 2 == 0 && HS / 2 <= kMaxHalf, "rope: head size ", HS, " is odd or above ", 2 * kMaxHalf);
  STRATA_CHECK(base > 1.0f && pos0 >= 0, "rope: base=", base, " pos0=", pos0);
  const int half = HS / 2;
  const int heads = NH + KVH;  // the rotated heads lead each row
  const int64_t R = int64_t{NH + 2 * KVH} * HS;
  const double log_base = std::log(static_cast<double>(base));
  // Parallel over positions: the cos/sin of a position are computed once and applied to its B rows.
#pragma omp parallel for schedule(static) if (int64_t{B} * T * heads * HS >= cpu_detail::kMinParallelWork)
  for (int t = 0; t < T; ++t) {
    F cs[kMaxHalf], sn[kMaxHalf];
    const double p = static_cast<double>(pos0 + t);
    for (int i = 0; i < half; ++i) {
      const double theta = p * std::exp(-2.0 * i / HS * log_base);
      cs[i] = static_cast<F>(std::cos(theta));
      sn[i] = static_cast<F>(sign * std::sin(theta));
    }
    for (int b = 0; b < B; ++b) {
      F* row = qkv + (int64_t{b} * T + t) * R;
      for (int h = 0; h < heads; ++h) {
        F* x0 = row + int64_t{h} * HS;
        F* x1 = x0 + half;
#pragma omp simd
        for (int i = 0; i < half; ++i) {
          const F a = x0[i], c = x1[i];
          x0[i] = a * cs[i] - c * sn[i];
          x1[i] = c * cs[i] + a * sn[i];
        }
      }
    }
  }
}

}  // namespace

template <class Dev, class F>
void rope_forward(const Dev&, F* qkv, int B, int T, int NH, int KVH, int HS, float base, int pos0) {
  rope_rotate(qkv, B, T, NH, KVH, HS, base, pos0, 1.0);
}

template <class Dev, class F>
void rope_backward(const Dev&, F* dqkv, int B, int T, int NH, int KVH, int HS, float base, int pos0) {
  rope_rotate(dqkv, B, T, NH, KVH, HS, base, pos0, -1.0);
}

#define STRATA_INSTANTIATE(F)                                                              \
  template void rope_forward<Cpu, F>(const Cpu&, F*, int, int, int, int, int, float, int); \
  template void rope_backward<Cpu, F>(const Cpu&, F*, int, int, int, int, int, float, int);
STRATA_INSTANTIATE(float)
STRATA_INSTANTIATE(double)
#undef STRATA_INSTANTIATE

}  // namespace strata::ops
