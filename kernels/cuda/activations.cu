// kernels/cuda/activations.cu: the MLP activations and the residual add, CUDA, bf16 storage, fp32 math. CPU
// twins: kernels/cpu/activations.cpp, residual.cpp.
//
// swiglu_forward:  out[n,j] = silu(gate) * up, gate = inp[n,j], up = inp[n,F+j], silu(x) = x / (1 + e^-x)
//                                                                                                  out `=`
// swiglu_backward: with s = sigmoid(gate): dinp[n,j] = dout * up * s * (1 + gate (1 - s));
//                  dinp[n,F+j] = dout * gate * s                                                  dinp `=`
// gelu_forward:    out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))                            out `=`
// gelu_backward:   dinp = dout * (0.5 (1 + th) + 0.5 x (1 - th^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2))
//                  (dinp may alias dout: matmul_backward_dgelu's fallback)                        dinp `=`
// residual_forward:  out = a + b (out may alias a)                                                  out `=`
// residual_backward: da += dout; db += dout (either may be null)                               da, db `+=`
// Shapes: SwiGLU inp, dinp (N,2F), out, dout (N,F); the others flat (n).
//
// One thread per 8 elements: a 16-byte vector per tensor when every pointer is 16-byte aligned (and, for
// SwiGLU, F % 8 == 0, so a vector never straddles the gate/up halves), else scalar accesses (the last
// thread of a flat array does only the remainder: any n). 256 threads per block: streaming, no shared
// memory, enough blocks for any real size. Each byte is touched once; bytes per element (bf16): SwiGLU fwd
// 6 (2 in, 1 out), bwd 10 (3 in, 2 out); GELU fwd 4, bwd 6; residual fwd 6, bwd 6 with both gradients (4
// with one). Napkin: GELU fwd on 65536 x 3072 elements moves 805 MB, ~250 us at ~3.3 TB/s.
#include <cmath>
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/nvtx.h"
#include "kernels/ops.h"

namespace strata::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kVec = 8;                            // bf16 per 16-byte vector
constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluCubic = 0.044715f;

// count (<= W) consecutive bf16 as floats: one 16-byte access when W == 8 and count == 8, else scalar ones
// (the elements past count are set to 0 and never stored).
template <int W>
__device__ __forceinline__ void load_f(const bf16* p, float (&f)[W], int count) {
  if constexpr (W == kVec) {
    if (count == kVec) {
      const Vec16<bf16> v = Vec16<bf16>::load(p);
      for (int k = 0; k < W; ++k) f[k] = to_float(v.v[k]);
      return;
    }
  }
  for (int k = 0; k < W; ++k) f[k] = k < count ? to_float(p[k]) : 0.0f;
}
template <int W>
__device__ __forceinline__ void store_f(bf16* p, const float (&f)[W], int count) {
  if constexpr (W == kVec) {
    if (count == kVec) {
      Vec16<bf16> v;
      for (int k = 0; k < W; ++k) v.v[k] = from_float<bf16>(f[k]);
      v.store(p);
      return;
    }
  }
  for (int k = 0; k < count; ++k) p[k] = from_float<bf16>(f[k]);
}

bool aligned16(const void* p) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// The first element of this thread's group of kVec and how many of them exist (0: none).
__device__ __forceinline__ int64_t group_start(int64_t n, int* count) {
  const int64_t i0 = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) * kVec;
  *count = i0 < n ? static_cast<int>(n - i0 < kVec ? n - i0 : kVec) : 0;
  return i0;
}

dim3 groups_grid(int64_t n) {
  return dim3(static_cast<unsigned>(ceil_div(ceil_div(n, int64_t{kVec}), int64_t{kThreads})));
}

__device__ __forceinline__ float sigmoid(float x) {
  return 1.0f / (1.0f + expf(-x));
}

// ---- SwiGLU: element i of the (N,F) output is row i / F, column i % F
// -------------------------------------------- W = 8: F % 8 == 0, so the thread's 8 columns lie in one row; W
// = 1: one element per thread.
template <int W>
__global__ void __launch_bounds__(kThreads)
    swiglu_forward_kernel(bf16* out, const bf16* inp, int64_t total, int F) {
  const int64_t i = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) * W;
  if (i >= total) return;
  const int64_t n = i / F, j = i % F;
  const bf16* gate = inp + n * 2 * F + j;
  float g[W], u[W], o[W];
  load_f<W>(gate, g, W);
  load_f<W>(gate + F, u, W);
  for (int k = 0; k < W; ++k) o[k] = g[k] * sigmoid(g[k]) * u[k];
  store_f<W>(out + i, o, W);
}

template <int W>
__global__ void __launch_bounds__(kThreads)
    swiglu_backward_kernel(bf16* dinp, const bf16* dout, const bf16* inp, int64_t total, int F) {
  const int64_t i = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) * W;
  if (i >= total) return;
  const int64_t n = i / F, j = i % F;
  const bf16* gate = inp + n * 2 * F + j;
  bf16* dgate = dinp + n * 2 * F + j;
  float g[W], u[W], d[W], dg[W], du[W];
  load_f<W>(gate, g, W);
  load_f<W>(gate + F, u, W);
  load_f<W>(dout + i, d, W);
  for (int k = 0; k < W; ++k) {
    const float s = sigmoid(g[k]);
    dg[k] = d[k] * u[k] * s * (1.0f + g[k] * (1.0f - s));
    du[k] = d[k] * g[k] * s;
  }
  store_f<W>(dgate, dg, W);
  store_f<W>(dgate + F, du, W);
}

// ---- flat elementwise kernels: W = 8 with aligned pointers (a short last group goes scalar), W = 1
// otherwise (still 8 elements per thread, one at a time)
// --------------------------------------------------------------------
template <int W>
__device__ __forceinline__ void load_group(const bf16* p, float (&f)[kVec], int count) {
  if constexpr (W == kVec) {
    load_f<kVec>(p, f, count);
  } else {
    for (int k = 0; k < kVec; ++k) f[k] = k < count ? to_float(p[k]) : 0.0f;
  }
}
template <int W>
__device__ __forceinline__ void store_group(bf16* p, const float (&f)[kVec], int count) {
  if constexpr (W == kVec) {
    store_f<kVec>(p, f, count);
  } else {
    for (int k = 0; k < count; ++k) p[k] = from_float<bf16>(f[k]);
  }
}

template <int W>
__global__ void __launch_bounds__(kThreads) gelu_forward_kernel(bf16* out, const bf16* inp, int64_t n) {
  int count = 0;
  const int64_t i0 = group_start(n, &count);
  if (count == 0) return;
  float x[kVec];
  load_group<W>(inp + i0, x, count);
  for (int k = 0; k < kVec; ++k)
    x[k] = 0.5f * x[k] * (1.0f + tanhf(kGeluScale * (x[k] + kGeluCubic * x[k] * x[k] * x[k])));
  store_group<W>(out + i0, x, count);
}

template <int W>
__global__ void __launch_bounds__(kThreads)
    gelu_backward_kernel(bf16* dinp, const bf16* dout, const bf16* inp, int64_t n) {
  int count = 0;
  const int64_t i0 = group_start(n, &count);
  if (count == 0) return;
  float x[kVec], d[kVec];
  load_group<W>(inp + i0, x, count);
  load_group<W>(dout + i0, d, count);
  for (int k = 0; k < kVec; ++k) {
    const float th = tanhf(kGeluScale * (x[k] + kGeluCubic * x[k] * x[k] * x[k]));
    const float local = 0.5f * (1.0f + th) + 0.5f * x[k] * (1.0f - th * th) * kGeluScale *
                                                 (1.0f + 3.0f * kGeluCubic * x[k] * x[k]);
    d[k] *= local;
  }
  store_group<W>(dinp + i0, d, count);
}

// out may alias a: each element is read and then written by the same thread.
template <int W>
__global__ void __launch_bounds__(kThreads)
    residual_forward_kernel(bf16* out, const bf16* a, const bf16* b, int64_t n) {
  int count = 0;
  const int64_t i0 = group_start(n, &count);
  if (count == 0) return;
  float x[kVec], y[kVec];
  load_group<W>(a + i0, x, count);
  load_group<W>(b + i0, y, count);
  for (int k = 0; k < kVec; ++k) x[k] += y[k];
  store_group<W>(out + i0, x, count);
}

template <int W>
__device__ __forceinline__ void accumulate_group(bf16* g, const float (&d)[kVec], int count) {
  float x[kVec];
  load_group<W>(g, x, count);
  for (int k = 0; k < kVec; ++k) x[k] += d[k];
  store_group<W>(g, x, count);
}

template <int W>
__global__ void __launch_bounds__(kThreads)
    residual_backward_kernel(bf16* da, bf16* db, const bf16* dout, int64_t n) {
  int count = 0;
  const int64_t i0 = group_start(n, &count);
  if (count == 0) return;
  float d[kVec];
  load_group<W>(dout + i0, d, count);
  if (da) accumulate_group<W>(da + i0, d, count);
  if (db) accumulate_group<W>(db + i0, d, count);
}

cudaStream_t stream_of(const ops::Cuda& dev) {
  return static_cast<cudaStream_t>(dev.stream);
}

}  // namespace
}  // namespace strata::cuda

namespace strata::ops {

using cuda::bf16;

template <class Dev, class F>
void swiglu_forward(const Dev& dev, F* out, const F* inp, int N, int Fdim) {
  cuda::NvtxRange range("swiglu fwd", dev.stream);
  using namespace cuda;
  STRATA_CHECK(out && inp, "swiglu_forward: null pointer");
  STRATA_CHECK(N > 0 && Fdim > 0, "swiglu_forward: N=", N, " F=", Fdim);
  const int64_t total = int64_t{N} * Fdim;
  if (Fdim % kVec == 0 && aligned16(out) && aligned16(inp))
    launch(swiglu_forward_kernel<kVec>, groups_grid(total), dim3(kThreads), 0, stream_of(dev), out, inp,
           total, Fdim);
  else
    launch(swiglu_forward_kernel<1>, dim3(static_cast<unsigned>(ceil_div(total, int64_t{kThreads}))),
           dim3(kThreads), 0, stream_of(dev), out, inp, total, Fdim);
}

template <class Dev, class F>
void swiglu_backward(const Dev& dev, F* dinp, const F* dout, const F* inp, int N, int Fdim) {
  cuda::NvtxRange range("swiglu bwd", dev.stream);
  using namespace cuda;
  STRATA_CHECK(dinp && dout && inp, "swiglu_backward: null pointer");
  STRATA_CHECK(N > 0 && Fdim > 0, "swiglu_backward: N=", N, " F=", Fdim);
  const int64_t total = int64_t{N} * Fdim;
  if (Fdim % kVec == 0 && aligned16(dinp) && aligned16(dout) && aligned16(inp))
    launch(swiglu_backward_kernel<kVec>, groups_grid(total), dim3(kThreads), 0, stream_of(dev), dinp, dout,
           inp, total, Fdim);
  else
    launch(swiglu_backward_kernel<1>, dim3(static_cast<unsigned>(ceil_div(total, int64_t{kThreads}))),
           dim3(kThreads), 0, stream_of(dev), dinp, dout, inp, total, Fdim);
}

template <class Dev, class F>
void gelu_forward(const Dev& dev, F* out, const F* inp, int64_t n) {
  cuda::NvtxRange range("gelu fwd", dev.stream);
  using namespace cuda;
  STRATA_CHECK(out && inp, "gelu_forward: null pointer");
  STRATA_CHECK(n > 0, "gelu_forward: n=", n);
  const bool vec = aligned16(out) && aligned16(inp);
  launch(vec ? gelu_forward_kernel<kVec> : gelu_forward_kernel<1>, groups_grid(n), dim3(kThreads), 0,
         stream_of(dev), out, inp, n);
}

template <class Dev, class F>
void gelu_backward(const Dev& dev, F* dinp, const F* dout, const F* inp, int64_t n) {
  cuda::NvtxRange range("gelu bwd", dev.stream);
  using namespace cuda;
  STRATA_CHECK(dinp && dout && inp, "gelu_backward: null pointer");
  STRATA_CHECK(n > 0, "gelu_backward: n=", n);
  const bool vec = aligned16(dinp) && aligned16(dout) && aligned16(inp);
  launch(vec ? gelu_backward_kernel<kVec> : gelu_backward_kernel<1>, groups_grid(n), dim3(kThreads), 0,
         stream_of(dev), dinp, dout, inp, n);
}

template <class Dev, class F>
void residual_forward(const Dev& dev, F* out, const F* a, const F* b, int64_t n) {
  cuda::NvtxRange range("residual fwd", dev.stream);
  using namespace cuda;
  STRATA_CHECK(out && a && b, "residual_forward: null pointer");
  STRATA_CHECK(n > 0, "residual_forward: n=", n);
  const bool vec = aligned16(out) && aligned16(a) && aligned16(b);
  launch(vec ? residual_forward_kernel<kVec> : residual_forward_kernel<1>, groups_grid(n), dim3(kThreads), 0,
         stream_of(dev), out, a, b, n);
}

template <class Dev, class F>
void residual_backward(const Dev& dev, F* da, F* db, const F* dout, int64_t n) {
  cuda::NvtxRange range("residual bwd", dev.stream);
  using namespace cuda;
  STRATA_CHECK(dout, "residual_backward: null pointer");
  STRATA_CHECK(n > 0, "residual_backward: n=", n);
  if (!da && !db) return;
  const bool vec = aligned16(da) && aligned16(db) && aligned16(dout);
  launch(vec ? residual_backward_kernel<kVec> : residual_backward_kernel<1>, groups_grid(n), dim3(kThreads),
         0, stream_of(dev), da, db, dout, n);
}

template void swiglu_forward<Cuda, bf16>(const Cuda&, bf16*, const bf16*, int, int);
template void swiglu_backward<Cuda, bf16>(const Cuda&, bf16*, const bf16*, const bf16*, int, int);
template void gelu_forward<Cuda, bf16>(const Cuda&, bf16*, const bf16*, int64_t);
template void gelu_backward<Cuda, bf16>(const Cuda&, bf16*, const bf16*, const bf16*, int64_t);
template void residual_forward<Cuda, bf16>(const Cuda&, bf16*, const bf16*, const bf16*, int64_t);
template void residual_backward<Cuda, bf16>(const Cuda&, bf16*, bf16*, const bf16*, int64_t);

}  // namespace strata::ops
