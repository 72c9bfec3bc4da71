// kernels/cuda/classifier.cu: the fused classifier (softmax + cross-entropy, loss and logit gradient in one
// kernel), CUDA, bf16 logits, fp32 math and losses. CPU twin: kernels/cpu/softmax_cross_entropy.cpp.
//
// Per row n with target y = targets[n]:
//   losses[n] = logsumexp(logits[n,:]) - logits[n,y], or 0 when y == ignore_index             losses `=`
//   when dloss != 0, logits[n,:] is overwritten in place by dloss * (softmax(logits[n,:]) - onehot(y)),
//   a zero row when y == ignore_index                                                          logits `=`
// Shapes: logits (N,V) bf16; losses (N) fp32; targets (N) int32.
// A target outside [0,V) that is not ignore_index (a checked error in the twin, which reads the targets on
// the host) cannot stop the GPU without a trap that would kill the context; instead that row's loss is NaN
// and, with a gradient, its dlogits row is NaN too, so the mean loss and the gradient norm both show it.
//
// One block per row. Pass 1 reads the row once and keeps an online (max, sum of e^(x - max)) per thread
// over 16-byte vectors of 8 logits (the row's unaligned head and tail, up to 7 elements each when
// V % 8 != 0, go one element per thread), then merges the pairs over the warp (shuffles) and the block
// (shared memory) in a fixed order: loss = max + log(sum) - x[y] (x[y] is read before any thread can
// overwrite it). Pass 2, only with a gradient, reads the row again (mostly from L2: a 100 KB row of
// V = 50304 was just read by the same block) and writes dlogits in bf16; probabilities are never stored.
// Ignored rows skip pass 1 and write zeros. Threads per block: V/16 rounded up to a warp, between 32 and
// 512 (~12 vectors per thread at V = 50304; a small V keeps a small block).
// DRAM traffic per logit: 2 B read + 2 B written with a gradient (+2 B from L2, or DRAM, for the second
// read). Napkin: N = 8192, V = 50304: 1.65 GB, ~0.5 ms at ~3.3 TB/s.
// Measured on an H200 (bench/KERNELS.md): 0.608 ms, 64% of copy bandwidth, with one 16-byte vector per thread
// in flight (then the default). A variant that cached the row in shared memory for pass 2 (cp.async, 100 KB
// per block, 2 blocks per SM) measured 0.746 ms on the same card: the occupancy it cost outweighed the second
// read it saved, so the two passes stay. Bytes in flight: with one 16-byte load in flight per thread and 4
// blocks of 512 threads per SM, ~32 KB per SM are in flight, near what Little's law asks of an H200 (~4.8
// TB/s x ~0.7 us / 132 SMs = ~25 KB) with no slack for the block-wide merge between the passes. Loading 4
// vectors before using the first (64 registers: 2 blocks per SM, ~64 KB in flight) measured 0.545 ms (73%) on
// an H200 (run 6, N = 8192, V = 50304; prediction was 70-80%), 2 vectors (40 registers, 3 blocks) 0.555 ms
// (72%), 1 vector 0.609 ms (66%). The default is the 4-vector form; ops::Cuda::variant 1 and 2 select the 2-
// and 1-vector forms for kernel_bench's side-by-side rows.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/nvtx.h"
#include "kernels/ops.h"

namespace strata::cuda {
namespace {

constexpr int kVec = 8;           // bf16 per 16-byte vector
constexpr int kMaxThreads = 512;  // per row block
// The running maximum starts at -FLT_MAX, not -inf: e^(x - max) is then 0 for x = -inf (a masked logit) and
// never e^(-inf + inf) = NaN, and an empty (max, sum) = (-FLT_MAX, 0) merges as the identity.
constexpr float kLowest = -FLT_MAX;

struct MaxSum {
  float m, s;
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  return {m, a.s * __expf(a.m - m) + b.s * __expf(b.m - m)};
}

// Adds the logits f[0..count) to the running pair: rescales once by the new maximum, then one exp per logit.
template <int K>
__device__ __forceinline__ void accumulate(MaxSum& acc, const float (&f)[K]) {
  float m = acc.m;
  for (int k = 0; k < K; ++k) m = fmaxf(m, f[k]);
  float s = acc.s * __expf(acc.m - m);
  for (int k = 0; k < K; ++k) s += __expf(f[k] - m);
  acc = {m, s};
}

// The pair over the whole block, the same on every thread. scratch: 2 * 32 floats of shared memory.
__device__ __forceinline__ MaxSum block_merge(MaxSum v, float* scratch) {
  for (int o = kWarpSize / 2; o > 0; o >>= 1)
    v = merge(v, {__shfl_xor_sync(kFullMask, v.m, o), __shfl_xor_sync(kFullMask, v.s, o)});
  if (blockDim.x == kWarpSize) return v;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int nwarps = blockDim.x / kWarpSize;
  if (lane == 0) scratch[warp] = v.m, scratch[kWarpSize + warp] = v.s;
  __syncthreads();
  v = lane < nwarps ? MaxSum{scratch[lane], scratch[kWarpSize + lane]} : MaxSum{kLowest, 0.0f};
  for (int o = kWarpSize / 2; o > 0; o >>= 1)
    v = merge(v, {__shfl_xor_sync(kFullMask, v.m, o), __shfl_xor_sync(kFullMask, v.s, o)});
  return v;
}

// The row split: `head` unaligned logits before the first 16-byte boundary, `nv` vectors, then the tail. The
// scalar logits (head and tail, at most 14) go one per thread: scalar s of this thread is element
// scalar_at(s).
struct RowSplit {
  int head, nv, tail_start, scalars;
  __device__ RowSplit(const bf16* x, int V) {
    const int off = static_cast<int>((reinterpret_cast<uintptr_t>(x) / sizeof(bf16)) % kVec);
    head = off == 0 ? 0 : (kVec - off < V ? kVec - off : V);
    nv = (V - head) / kVec;
    tail_start = head + nv * kVec;
    scalars = head + (V - tail_start);
  }
  __device__ int scalar_at(int s) const { return s < head ? s : tail_start + (s - head); }
};

// This thread's vectors v0, v0 + nt, ... (kUnroll of them, those below split.nv) of row x, all loads issued
// before any is used.
template <int kUnroll>
__device__ __forceinline__ void load_vectors(Vec16<bf16> (&in)[kUnroll], const bf16* x, const RowSplit& split,
                                             int v0, int nt) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int v = v0 + u * nt;
    if (v < split.nv) in[u] = Vec16<bf16>::load(x + split.head + v * kVec);
  }
}

// kUnroll: the vectors each thread loads before it uses the first (bytes in flight per thread); kMinBlocks: the
// blocks per SM its registers must allow (ptxas, sm_90: 1 / 4 -> 32 registers, 2 / 3 -> 40, 4 / 2 -> 64,
// no spills; 4 / 3 spills).
template <int kUnroll, int kMinBlocks>
__global__ void __launch_bounds__(kMaxThreads, kMinBlocks)
    softmax_cross_entropy_kernel(bf16* logits, float* losses, const int32_t* targets, int V,
                                 int32_t ignore_index, float dloss) {
  __shared__ float scratch[2 * kWarpSize];
  const int row = static_cast<int>(blockIdx.x);
  bf16* x = logits + int64_t{row} * V;
  const int32_t y = targets[row];
  const bool grad = dloss != 0.0f;
  const int tid = static_cast<int>(threadIdx.x), nt = static_cast<int>(blockDim.x);
  const RowSplit split(x, V);
  if (y == ignore_index) {  // block-uniform
    if (tid == 0) losses[row] = 0.0f;
    if (!grad) return;
    for (int v = tid; v < split.nv; v += nt) {
      Vec16<bf16> z;
      for (int k = 0; k < kVec; ++k) z.v[k] = from_float<bf16>(0.0f);
      z.store(x + split.head + v * kVec);
    }
    if (tid < split.scalars) x[split.scalar_at(tid)] = from_float<bf16>(0.0f);
    return;
  }
  const bool valid = y >= 0 && y < V;
  const float xy = valid ? to_float(x[y]) : 0.0f;  // before the barrier below: pass 2 overwrites the row

  // Pass 1: online max and sum of exponentials, kUnroll vectors loaded before the first is used.
  MaxSum acc{kLowest, 0.0f};
  for (int v0 = tid; v0 < split.nv; v0 += kUnroll * nt) {
    Vec16<bf16> in[kUnroll];
    load_vectors(in, x, split, v0, nt);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (v0 + u * nt >= split.nv) break;
      float f[kVec];
      for (int k = 0; k < kVec; ++k) f[k] = to_float(in[u].v[k]);
      accumulate(acc, f);
    }
  }
  if (tid < split.scalars) {
    const float f[1] = {to_float(x[split.scalar_at(tid)])};
    accumulate(acc, f);
  }
  const MaxSum total = block_merge(acc, scratch);
  if (tid == 0) losses[row] = valid ? total.m + logf(total.s) - xy : NAN;
  if (!grad) return;

  // Pass 2: dlogits = dloss * softmax - dloss * onehot(y), in place.
  const float scale = dloss / total.s, poison = valid ? 0.0f : NAN;
  for (int v0 = tid; v0 < split.nv; v0 += kUnroll * nt) {
    Vec16<bf16> in[kUnroll];
    load_vectors(in, x, split, v0, nt);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int v = v0 + u * nt;
      if (v >= split.nv) break;
      Vec16<bf16> out;
      const int c0 = split.head + v * kVec;
      for (int k = 0; k < kVec; ++k) {
        const float d = scale * __expf(to_float(in[u].v[k]) - total.m) - (c0 + k == y ? dloss : 0.0f);
        out.v[k] = from_float<bf16>(d + poison);
      }
      out.store(x + c0);
    }
  }
  if (tid < split.scalars) {
    const int c = split.scalar_at(tid);
    const float d = scale * __expf(to_float(x[c]) - total.m) - (c == y ? dloss : 0.0f);
    x[c] = from_float<bf16>(d + poison);
  }
}

}  // namespace
}  // namespace strata::cuda

namespace strata::ops {

using cuda::bf16;

template <class Dev, class F>
void softmax_cross_entropy(const Dev& dev, F* logits, Stat<F>* losses, const int32_t* targets, int N, int V,
                           int32_t ignore_index, float dloss) {
  cuda::NvtxRange range("classifier", dev.stream);
  using namespace cuda;
  STRATA_CHECK(logits && losses && targets, "softmax_cross_entropy: null pointer");
  STRATA_CHECK(N > 0 && V > 0, "softmax_cross_entropy: N=", N, " V=", V);
  STRATA_CHECK(reinterpret_cast<uintptr_t>(logits) % sizeof(bf16) == 0,
               "softmax_cross_entropy: misaligned logits");
  STRATA_CHECK(dev.variant >= 0 && dev.variant <= 2, "softmax_cross_entropy: variant ", dev.variant,
               " (0, 1 or 2)");
  const int threads =
      std::clamp(ceil_div(ceil_div(V, 2 * kVec), kWarpSize) * kWarpSize, kWarpSize, kMaxThreads);
  const dim3 grid(static_cast<unsigned>(N)), block(static_cast<unsigned>(threads));
  const auto stream = static_cast<cudaStream_t>(dev.stream);
  // Variant 0 (the default) keeps 4 vectors per thread in flight at 2 blocks per SM; 1 and 2 keep 2 and 1 (at
  // 3 and 4 blocks per SM), the forms measured beside it (bench/KERNELS.md, run 6).
  if (dev.variant == 1)
    launch(softmax_cross_entropy_kernel<2, 3>, grid, block, 0, stream, logits, losses, targets, V, ignore_index,
           dloss);
  else if (dev.variant == 2)
    launch(softmax_cross_entropy_kernel<1, 4>, grid, block, 0, stream, logits, losses, targets, V,
           ignore_index, dloss);
  else
    launch(softmax_cross_entropy_kernel<4, 2>, grid, block, 0, stream, logits, losses, targets, V,
           ignore_index, dloss);
}

template void softmax_cross_entropy<Cuda, bf16>(const Cuda&, bf16*, float*, const int32_t*, int, int, int32_t,
                                                float);

}  // namespace strata::ops
