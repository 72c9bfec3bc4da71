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
// heads, so its angles are computed once for all of them. The vector path streams the heads through a
// kStages = 5 ring of shared memory filled by cp.async: 4 heads (128 B) per thread in flight without holding
// registers, the first 4 already in flight while the angles are computed (ptxas: 64 registers under
// __launch_bounds__(256, 4), 40 KB of ring per block: 4 blocks = 1024 threads per SM, ~128 KB in flight per
// SM; the former form had one head, 32 B, in flight per thread: ~32 KB per SM). Angles: base^(-2i/HS) is
// computed on the host with the twin's expression (the twin's exp, so the same bits) and passed as a kernel
// parameter; theta = p * inv_freq and its cos/sin are computed in double on the device, as in the twin (fp32
// p * inv_freq loses ~3 digits by p ~ 4096), then rounded to fp32: 2 double transcendentals per i,
// amortised over the heads. 256 threads per block.
// Traffic: q and k read and written once, 4 B per rotated element; v untouched. Napkin: B*T = 32768 tokens
// of 32 + 4 rotated heads of 64 (llama-1.1b): 302 MB, ~72 us at the H200's measured 4.2 TB/s copy rate.
// Measured (H200, bench/KERNELS.md run 2): 73% (0.099 ms, from 0.104), short of the prediction.
// Prediction (written before): rope fwd/bwd at that shape from 69% to ~80-87% of copy bandwidth
// (4x the bytes in flight; a third less double-precision work, overlapped with the first loads). Risk: the
// grid is one wave (512 blocks on 528 slots), so the start (angles) and the end are not hidden by other
// blocks.
// Variant 1 (ops::Cuda::variant = 1; the vector path only; NOT YET MEASURED): the lanes run across the heads
// of one token position t instead of across rows, HV = HS/16 lanes per head, so a warp's two 16-byte loads
// cover 32/HV consecutive heads of one row (1 KB contiguous at HS = 64) where the default's cover 8 rows 5 KB
// apart (64 B + 64 B of each); each thread then loops over the B rows b*T + t of its position, which share
// its angles (computed once, as in the default), loading kUnrollB = 4 rows' vectors before rotating the first
// (128 B in flight per thread, in registers: ptxas sm_90 113 registers, so 2 blocks of 256 per SM, ~64 KB in
// flight per SM; at 3 or 4 blocks it spills). Grid: T * (NH+KVH) * HV threads, 4.4 waves at the llama-1.1b
// bench shape against the default's one. Prediction: 80-88% of copy bandwidth at that shape (the default:
// 71-72% in run 6), from whole DRAM bursts per warp and no single-wave tail; the same bits as the default
// (the same angles and rotation expressions).
#include <cmath>
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/nvtx.h"
#include "kernels/ops.h"

namespace strata::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kBlocksPerSm = 4;  // at most 64 registers: 1024 threads (and 4 x 40 KB of ring) per SM
constexpr int kMaxHalf = 512;    // head dims up to 1024, as the twin
constexpr int kStages = 5;       // vector path: heads per thread in the cp.async ring (4 in flight)

// base^(-2i/HS) for i < HS/2, computed on the host by the twin's expression (so with the twin's exp), passed
// by value as a kernel parameter (4 KB: kernel parameters may be up to 32 KB since CUDA 12.1 on sm_70+).
struct InvFreq {
  double f[kMaxHalf];
};
static_assert(sizeof(InvFreq) <= 32764 - 64, "kernel parameters are limited to 32764 bytes");

// sign = +1: the forward rotation; -1: its transpose.
template <int W>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
    rope_kernel(bf16* qkv, int N, int T, int heads, int HS, int64_t row_stride, InvFreq inv_freq, int pos0,
                double sign) {
  const int half = HS / 2, HV = half / W;
  const int64_t idx = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (idx >= int64_t{N} * HV) return;
  const int n = static_cast<int>(idx / HV), j = static_cast<int>(idx % HV);
  bf16* row = qkv + n * row_stride + j * W;
  const int nt = static_cast<int>(blockDim.x), tid = static_cast<int>(threadIdx.x);
  STRATA_DYNAMIC_SMEM(Vec16<bf16>, ring);  // vector path: [kStages][2 (x[i..), x[i+HS/2..))][blockDim.x]
  // Vector path: queues head h's two vectors into its stage of the ring, as one cp.async group (an empty one
  // past the last head keeps the count uniform). Each thread copies and reads back only its own slots.
  auto fetch = [&](int h) {
    if constexpr (W == 8) {
      if (h < heads) {
        const bf16* x0 = row + int64_t{h} * HS;
        cp_async_16(ring + (h % kStages) * 2 * nt + tid, x0);
        cp_async_16(ring + ((h % kStages) * 2 + 1) * nt + tid, x0 + half);
      }
      cp_async_commit();
    }
  };
  for (int h = 0; h < kStages - 1; ++h) fetch(h);  // in flight while the angles are computed

  float cs[W], sn[W];
  const double p = static_cast<double>(pos0 + n % T);
  for (int k = 0; k < W; ++k) {
    const double theta = p * inv_freq.f[j * W + k];  // the twin's theta, bit for bit
    cs[k] = static_cast<float>(cos(theta));
    sn[k] = static_cast<float>(sign * sin(theta));
  }
  for (int h = 0; h < heads; ++h) {
    bf16* x0 = row + int64_t{h} * HS;
    bf16* x1 = x0 + half;
    float a[W], c[W], o0[W], o1[W];
    if constexpr (W == 8) {
      fetch(h + kStages - 1);        // into the stage this thread read last step
      cp_async_wait<kStages - 1>();  // head h has landed
      load_floats<W>(ring[(h % kStages) * 2 * nt + tid].v, a);
      load_floats<W>(ring[((h % kStages) * 2 + 1) * nt + tid].v, c);
    } else {
      load_floats<W>(x0, a);
      load_floats<W>(x1, c);
    }
    for (int k = 0; k < W; ++k) {
      o0[k] = a[k] * cs[k] - c[k] * sn[k];
      o1[k] = c[k] * cs[k] + a[k] * sn[k];
    }
    store_floats<W>(x0, o0);
    store_floats<W>(x1, o1);
  }
  if constexpr (W == 8) cp_async_wait<0>();  // no copy outlives the thread
}

constexpr int kUnrollB = 4;           // variant 1: batch rows loaded before the first is rotated
constexpr int kHeadsBlocksPerSm = 2;  // variant 1: up to 128 registers (at 4 or 3 blocks it spills)

__global__ void __launch_bounds__(kThreads, kHeadsBlocksPerSm)
    rope_heads_kernel(bf16* qkv, int B, int T, int heads, int HS, int64_t row_stride, InvFreq inv_freq,
                      int pos0, double sign) {
  constexpr int W = 8;
  const int half = HS / 2, HV = half / W;
  const int64_t idx = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (idx >= int64_t{T} * heads * HV) return;
  const int j = static_cast<int>(idx % HV);
  const int h = static_cast<int>(idx / HV % heads);
  const int t = static_cast<int>(idx / (int64_t{HV} * heads));
  float cs[W], sn[W];
  const double p = static_cast<double>(pos0 + t);
  for (int k = 0; k < W; ++k) {
    const double theta = p * inv_freq.f[j * W + k];  // the twin's theta, bit for bit
    cs[k] = static_cast<float>(cos(theta));
    sn[k] = static_cast<float>(sign * sin(theta));
  }
  bf16* x = qkv + int64_t{t} * row_stride + int64_t{h} * HS + j * W;  // batch row 0
  const int64_t batch_stride = int64_t{T} * row_stride;
  for (int b0 = 0; b0 < B; b0 += kUnrollB) {
    Vec16<bf16> v0[kUnrollB], v1[kUnrollB];
#pragma unroll
    for (int u = 0; u < kUnrollB; ++u)
      if (b0 + u < B) {
        const bf16* r = x + (b0 + u) * batch_stride;
        v0[u] = Vec16<bf16>::load(r);
        v1[u] = Vec16<bf16>::load(r + half);
      }
#pragma unroll
    for (int u = 0; u < kUnrollB; ++u) {
      if (b0 + u >= B) break;
      float o0[W], o1[W];
      for (int k = 0; k < W; ++k) {
        const float a = to_float(v0[u].v[k]), c = to_float(v1[u].v[k]);
        o0[k] = a * cs[k] - c * sn[k];
        o1[k] = c * cs[k] + a * sn[k];
      }
      bf16* r = x + (b0 + u) * batch_stride;
      store_floats<W>(r, o0);
      store_floats<W>(r + half, o1);
    }
  }
}

void rope(const ops::Cuda& dev, bf16* qkv, int B, int T, int NH, int KVH, int HS, float base, int pos0,
          double sign) {
  STRATA_CHECK(qkv, "rope: null pointer");
  STRATA_CHECK(B > 0 && T > 0 && NH > 0 && KVH > 0 && HS > 0, "rope: B=", B, " T=", T, " NH=", NH,
               " KVH=", KVH, " HS=", HS);
  STRATA_CHECK(HS % 2 == 0 && HS / 2 <= kMaxHalf, "rope: head size ", HS, " is odd or above ", 2 * kMaxHalf);
  STRATA_CHECK(base > 1.0f && pos0 >= 0, "rope: base=", base, " pos0=", pos0);
  const int N = B * T, half = HS / 2;
  const bool vec = half % 8 == 0 && reinterpret_cast<uintptr_t>(qkv) % 16 == 0;
  const int W = vec ? 8 : 1;
  const int64_t threads = int64_t{N} * (half / W);
  const dim3 grid(static_cast<unsigned>(ceil_div(threads, int64_t{kThreads})));
  const int64_t row_stride = int64_t{NH + 2 * KVH} * HS;
  const double log_base = std::log(static_cast<double>(base));
  InvFreq inv_freq{};
  for (int i = 0; i < half; ++i) inv_freq.f[i] = std::exp(-2.0 * i / HS * log_base);
  if (vec && dev.variant == 1) {
    const int64_t heads_threads = int64_t{T} * (NH + KVH) * (half / 8);
    launch(rope_heads_kernel, dim3(static_cast<unsigned>(ceil_div(heads_threads, int64_t{kThreads}))),
           dim3(kThreads), 0, static_cast<cudaStream_t>(dev.stream), qkv, B, T, NH + KVH, HS, row_stride,
           inv_freq, pos0, sign);
    return;
  }
  const size_t smem = vec ? size_t{kStages} * 2 * kThreads * 16 : 0;  // 40 KB: 4 blocks per SM fit
  launch(vec ? rope_kernel<8> : rope_kernel<1>, grid, dim3(kThreads), smem,
         static_cast<cudaStream_t>(dev.stream), qkv, N, T, NH + KVH, HS, row_stride, inv_freq, pos0, sign);
}

}  // namespace
}  // namespace strata::cuda

namespace strata::ops {

using cuda::bf16;

template <class Dev, class F>
void rope_forward(const Dev& dev, F* qkv, int B, int T, int NH, int KVH, int HS, float base, int pos0) {
  cuda::NvtxRange range("rope fwd", dev.stream);
  cuda::rope(dev, qkv, B, T, NH, KVH, HS, base, pos0, 1.0);
}

template <class Dev, class F>
void rope_backward(const Dev& dev, F* dqkv, int B, int T, int NH, int KVH, int HS, float base, int pos0) {
  cuda::NvtxRange range("rope bwd", dev.stream);
  cuda::rope(dev, dqkv, B, T, NH, KVH, HS, base, pos0, -1.0);
}

template void rope_forward<Cuda, bf16>(const Cuda&, bf16*, int, int, int, int, int, float, int);
template void rope_backward<Cuda, bf16>(const Cuda&, bf16*, int, int, int, int, int, float, int);

}  // namespace strata::ops
