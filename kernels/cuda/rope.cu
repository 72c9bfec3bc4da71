// kernels/cuda/rope.cu: rotary position embedding, GPT-NeoX "rotate half" layout over the full head, CUDA,
// bf16 storage, fp32 rotation. CPU twin: kernels/cpu/rope.cpp (the same convention).
//
// In place on the NH query heads and KVH key heads of every token row of qkv (B,T,(NH+2*KVH)*HS); the KVH
// value heads are untouched. For i in [0, HS/2), position p = pos0 + t, theta_i = p * base^(-2i/HS):
// forward:  x'[i] = x[i] cos - x[i+HS/2] sin;  x'[i+HS/2] = x[i+HS/2] cos + x[i] sin          qkv in place
// backward: the transpose (inverse) rotation, angle -theta, on dqkv (B,T,(NH+2*KVH)*HS)       dqkv in place
//
// One thread per (token row, 8 consecutive i) when HS/2 % 8 == 0 and qkv is 16-byte aligned (16-byte loads
// of x[i..i+8) and x[i+HS/2..)), else per (row, one i); the thread loops over the row's NH+KVH rotated
// heads, so its angles are computed once for all of them. Angles and their cos/sin are computed in double,
// as in the twin (fp32 p * inv_freq loses ~3 digits by p ~ 4096), then rounded to fp32: ~3 double
// transcendentals per i, amortised over the heads, a few percent of the memory time on sm_80/sm_90
// (full-rate FP64). 256 threads per block (streaming, no shared memory).
// Traffic: q and k read and written once, 4 B per rotated element; v untouched. Napkin: B*T = 32768 tokens
// of 32 + 4 rotated heads of 64 (llama-1.1b): 302 MB, ~90 us at ~3.3 TB/s.
#include <cmath>
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/nvtx.h"
#include "kernels/ops.h"

namespace strata::cuda {
namespace {

constexpr int kThreads = 256;


// sign = +1: the forward rotation; -1: its transpose.
template <int W>
__global__ void __launch_bounds__(kThreads)
    rope_kernel(bf16* qkv, int N, int T, int heads, int HS, int64_t row_stride, double log_base, int pos0,
                double sign) {
  const int half = HS / 2, HV = half / W;
  const int64_t idx = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (idx >= int64_t{N} * HV) return;
  const int n = static_cast<int>(idx / HV), j = static_cast<int>(idx % HV);
  const double p = static_cast<double>(pos0 + n % T);
  float cs[W], sn[W];
  for (int k = 0; k < W; ++k) {
    const int i = j * W + k;
    const double theta = p * exp(-2.0 * i / HS * log_base);  // the twin's expression, term for term
    cs[k] = static_cast<float>(cos(theta));
    sn[k] = static_cast<float>(sign * sin(theta));
  }
  bf16* row = qkv + n * row_stride + j * W;
  for (int h = 0; h < heads; ++h) {
    bf16* x0 = row + int64_t{h} * HS;
    bf16* x1 = x0 + half;
    float a[W], c[W], o0[W], o1[W];
    load_floats<W>(x0, a);
    load_floats<W>(x1, c);
    for (int k = 0; k < W; ++k) {
      o0[k] = a[k] * cs[k] - c[k] * sn[k];
      o1[k] = c[k] * cs[k] + a[k] * sn[k];
    }
    store_floats<W>(x0, o0);
    store_floats<W>(x1, o1);
  }
}

void rope(const ops::Cuda& dev, bf16* qkv, int B, int T, int NH, int KVH, int HS, float base, int pos0,
          double sign) {
  STRATA_CHECK(qkv, "rope: null pointer");
  STRATA_CHECK(B > 0 && T > 0 && NH > 0 && KVH > 0 && HS > 0, "rope: B=", B, " T=", T, " NH=", NH,
               " KVH=", KVH, " HS=", HS);
  STRATA_CHECK(HS % 2 == 0, "rope: head size ", HS, " is odd");
  STRATA_CHECK(base > 1.0f && pos0 >= 0, "rope: base=", base, " pos0=", pos0);
  const int N = B * T, half = HS / 2;
  const bool vec = half % 8 == 0 && reinterpret_cast<uintptr_t>(qkv) % 16 == 0;
  const int W = vec ? 8 : 1;
  const int64_t threads = int64_t{N} * (half / W);
  const dim3 grid(static_cast<unsigned>(ceil_div(threads, int64_t{kThreads})));
  const int64_t row_stride = int64_t{NH + 2 * KVH} * HS;
  const double log_base = std::log(static_cast<double>(base));
  launch(vec ? rope_kernel<8> : rope_kernel<1>, grid, dim3(kThreads), 0,
         static_cast<cudaStream_t>(dev.stream), qkv, N, T, NH + KVH, HS, row_stride, log_base, pos0, sign);
}

}  // namespace
}  // namespace strata::cuda

namespace strata::ops {

using cuda::bf16;

template <class Dev, class F>
void rope_forward(const Dev& dev, F* qkv, int B, int T, int NH, int KVH, int HS, float base, int pos0) {
  cuda::NvtxRange range("rope fwd");
  cuda::rope(dev, qkv, B, T, NH, KVH, HS, base, pos0, 1.0);
}

template <class Dev, class F>
void rope_backward(const Dev& dev, F* dqkv, int B, int T, int NH, int KVH, int HS, float base, int pos0) {
  cuda::NvtxRange range("rope bwd");
  cuda::rope(dev, dqkv, B, T, NH, KVH, HS, base, pos0, -1.0);
}

template void rope_forward<Cuda, bf16>(const Cuda&, bf16*, int, int, int, int, int, float, int);
template void rope_backward<Cuda, bf16>(const Cuda&, bf16*, int, int, int, int, int, float, int);

}  // namespace strata::ops
