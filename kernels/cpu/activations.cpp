// kernels/cpu/activations.cpp: MLP activations (SwiGLU, tanh-approximate GELU), CPU.
//
// SwiGLU, inp and dinp (N,2F) holding [gate | up] per row, out and dout (N,F), silu(x) = x sigmoid(x):
//   forward:  out[n,j] = silu(g) * u,  g = inp[n,j], u = inp[n,F+j]                               out `=`
//   backward: dinp[n,j] = dout * u * sigmoid(g) * (1 + g (1 - sigmoid(g)));
//             dinp[n,F+j] = dout * silu(g)                                                        dinp `=`
// GELU (tanh approximation), out, inp, dout, dinp (n), u = sqrt(2/pi) (x + 0.044715 x^3):
//   forward:  out = 0.5 x (1 + tanh u)                                                            out `=`
//   backward: dinp = dout * (0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2))
//                                                                                                 dinp `=`
//
// Element-wise and alias-safe (out may equal inp). Float uses the vectorisable exp of cpu_common.h, so the
// loops compile to SIMD code; double uses libm.
#include <algorithm>

#include "engine/check.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/ops.h"

namespace strata::ops {

using cpu_detail::kMinParallelWork;
using cpu_detail::sigmoid_of;
using cpu_detail::tanh_of;

namespace {

constexpr double kGeluScale = 0.7978845608028654;  // sqrt(2/pi)
constexpr double kGeluCubic = 0.044715;
constexpr int64_t kChunk = 4096;  // elements per GELU task: a few microseconds of work

template <class F>
STRATA_SIMD_CLONES void swiglu_forward_row(F* o, const F* gate, const F* up, int Fdim) {
#pragma omp simd
  for (int j = 0; j < Fdim; ++j) o[j] = gate[j] * sigmoid_of<F>(gate[j]) * up[j];
}

template <class F>
STRATA_SIMD_CLONES void swiglu_backward_row(F* dgate, F* dup, const F* dy, const F* gate, const F* up,
                                            int Fdim) {
#pragma omp simd
  for (int j = 0; j < Fdim; ++j) {
    const F x = gate[j], sig = sigmoid_of<F>(x);
    const F u = up[j], d = dy[j];
    dgate[j] = d * u * sig * (F(1) + x * (F(1) - sig));
    dup[j] = d * x * sig;
  }
}

template <class F>
STRATA_SIMD_CLONES void gelu_forward_chunk(F* out, const F* inp, int64_t n) {
  const F s = static_cast<F>(kGeluScale), k = static_cast<F>(kGeluCubic);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const F x = inp[i];
    out[i] = F(0.5) * x * (F(1) + tanh_of<F>(s * (x + k * x * x * x)));
  }
}

template <class F>
STRATA_SIMD_CLONES void gelu_backward_chunk(F* dinp, const F* dout, const F* inp, int64_t n) {
  const F s = static_cast<F>(kGeluScale), k = static_cast<F>(kGeluCubic);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const F x = inp[i];
    const F th = tanh_of<F>(s * (x + k * x * x * x));
    const F local = F(0.5) * (F(1) + th) + F(0.5) * x * (F(1) - th * th) * s * (F(1) + F(3) * k * x * x);
    dinp[i] = dout[i] * local;
  }
}

}  // namespace

template <class Dev, class F>
void swiglu_forward(const Dev&, F* out, const F* inp, int N, int Fdim) {
  STRATA_CHECK(out && inp, "swiglu_forward: null pointer");
  STRATA_CHECK(N > 0 && Fdim > 0, "swiglu_forward: N=", N, " F=", Fdim);
#pragma omp parallel for schedule(static) if (int64_t{N} * Fdim >= kMinParallelWork)
  for (int n = 0; n < N; ++n) {
    const F* gate = inp + int64_t{n} * 2 * Fdim;
    swiglu_forward_row(out + int64_t{n} * Fdim, gate, gate + Fdim, Fdim);
  }
}

template <class Dev, class F>
void swiglu_backward(const Dev&, F* dinp, const F* dout, const F* inp, int N, int Fdim) {
  STRATA_CHECK(dinp && dout && inp, "swiglu_backward: null pointer");
  STRATA_CHECK(N > 0 && Fdim > 0, "swiglu_backward: N=", N, " F=", Fdim);
#pragma omp parallel for schedule(static) if (int64_t{N} * Fdim >= kMinParallelWork)
  for (int n = 0; n < N; ++n) {
    const F* gate = inp + int64_t{n} * 2 * Fdim;
    F* dgate = dinp + int64_t{n} * 2 * Fdim;
    swiglu_backward_row(dgate, dgate + Fdim, dout + int64_t{n} * Fdim, gate, gate + Fdim, Fdim);
  }
}

template <class Dev, class F>
void gelu_forward(const Dev&, F* out, const F* inp, int64_t n) {
  STRATA_CHECK(out && inp, "gelu_forward: null pointer");
  STRATA_CHECK(n > 0, "gelu_forward: n=", n);
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t i0 = c * kChunk;
    gelu_forward_chunk(out + i0, inp + i0, std::min(kChunk, n - i0));
  }
}

template <class Dev, class F>
void gelu_backward(const Dev&, F* dinp, const F* dout, const F* inp, int64_t n) {
  STRATA_CHECK(dinp && dout && inp, "gelu_backward: null pointer");
  STRATA_CHECK(n > 0, "gelu_backward: n=", n);
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t i0 = c * kChunk;
    gelu_backward_chunk(dinp + i0, dout + i0, inp + i0, std::min(kChunk, n - i0));
  }
}

#define STRATA_INSTANTIATE(F)                                                          \
  template void swiglu_forward<Cpu, F>(const Cpu&, F*, const F*, int, int);            \
  template void swiglu_backward<Cpu, F>(const Cpu&, F*, const F*, const F*, int, int); \
  template void gelu_forward<Cpu, F>(const Cpu&, F*, const F*, int64_t);               \
  template void gelu_backward<Cpu, F>(const Cpu&, F*, const F*, const F*, int64_t);
STRATA_INSTANTIATE(float)
STRATA_INSTANTIATE(double)
#undef STRATA_INSTANTIATE

}  // namespace strata::ops
