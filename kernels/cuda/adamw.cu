// kernels/cuda/adamw.cu: the AdamW update over every parameter tensor in one launch, and the squared global
// gradient norm, for bf16 parameters and gradients. CPU twin: kernels/cpu/adamw.cpp.
//
// adamw_update, per element of every tensor (engine/optim.cpp's formula, in fp32):
//   g = grad_scale * grad                                                   grad (n) bf16, read
//   m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2                        m, v (n) fp32 `=`
//   master = master * decay - step_size * m / (sqrt(v) * inv_bc2_sqrt + eps)  master (n) fp32 `=`
//   param = stochastic_round_bf16(master, hash_u32(seed, index))           param (n) bf16 `=`
// decay = 1 - lr wd (1 where wd = 0), step_size = lr / bias_correction1, inv_bc2_sqrt = 1 /
// sqrt(bias_correction2), folded on the host in double and rounded once, as the twin does. The rounding is
// unbiased (E[param] = master), so updates smaller than half a bf16 ulp still move the bf16 weights on
// average; `index` is the element's position in the launch's concatenated range (each tensor padded to a
// multiple of kVec elements, offset by the earlier launches when there are more than kMaxTensors tensors),
// taken mod 2^32, so a step with a given seed replays bit for bit.
//
// One launch covers all tensors: the host builds a table of up to kMaxTensors descriptors, passed by value as
// a kernel parameter (about 4.2 KB: kernel parameters may be up to 32 KB since CUDA 12.1 on sm_70+), with the
// prefix sums of the tensors' chunk counts. A chunk is kVec = 8 consecutive elements of one tensor (the unit
// of the hash index); a work unit is half a chunk, 4 elements: 8 bytes of bf16 and 16 of each fp32 array, so
// a warp's 32 consecutive units make every access one contiguous 256 B (bf16) or 512 B (fp32) span (whole
// chunks per lane made each fp32 access two 16-byte halves 32 bytes apart). Each thread walks the
// concatenated unit range grid-stride, kUnits = 2 units per step with all their loads issued before any
// compute; its tensor index only moves forward (a linear step from the previous one, usually none, instead
// of a 6-step binary search per chunk). A unit of a tensor whose pointers are all 16-byte aligned, lying
// wholly inside it, uses vector loads and stores; the tail and unaligned tensors go element by element.
//
// Napkin math: 28 bytes per element (read grad 2, m 4, v 4, master 4; write m, v, master 12, param 2): a 124M
// parameter model moves 3.5 GB, ~0.83 ms at the H200's measured 4.2 TB/s copy rate. Memory-bound; the grid is
// one wave, kBlocksPerSm = 4 blocks of 256 threads per SM (ptxas: 64 registers under __launch_bounds__(256,
// 4)), striding over the rest; each thread has 2 x (8 + 3 x 16) = 112 B of loads in flight per step, ~115 KB
// per SM.
// Prediction (written before measuring): adamw at 126M parameters from 76% to ~80-85% of copy bandwidth.
// Measured (H200, bench/KERNELS.md run 2): 93% (0.908 ms, from 1.105).
// Less sure than the others: the gain rests on the fp32 accesses becoming contiguous per instruction (the
// former split 16-byte halves may have doubled the L1/L2 requests of m, v and master) and on the cheaper
// tensor lookup; the bytes in flight are about as before. If the limit is DRAM with 8 interleaved streams,
// the gain will be small.
//
// grad_norm_squared: *out (device fp32) = sum of g^2 over every element of every tensor. Deterministic: a
// fixed grid of kNormBlocks blocks (independent of the device and the tensors) walks the chunks grid-stride,
// each thread summing its chunks in order in fp32; each block reduces in a fixed tree (block_sum) and writes
// its partial to the workspace; a second, single-block kernel sums the kNormBlocks partials in a fixed order
// into *out. Same inputs, same bits, run after run, whatever the GPU's SM count. 2 bytes per element read:
// ~0.1 ms for 124M gradients.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/nvtx.h"
#include "kernels/cuda/workspace.h"
#include "kernels/ops.h"

namespace strata::cuda {

namespace {

constexpr int kMaxTensors = 64;  // per launch; more tensors take more launches
constexpr int kVec = 8;          // elements per chunk: one 16-byte bf16 vector
constexpr int kHalf = kVec / 2;  // elements per AdamW work unit: 8 bytes of bf16, 16 of each fp32 array
constexpr int kUnits = 2;        // AdamW units per thread and step, all loads in flight together
constexpr int kThreads = 256;    // 8 warps per block
constexpr int kBlocksPerSm = 4;  // resident AdamW blocks per SM: at most 64 registers (__launch_bounds__)
// The grad norm's fixed grid: ~one full wave on 132 SMs (8 blocks of 256 threads each). The CPU emulation
// runs blocks one after another with an OS thread per CUDA thread (~20 ms per block), so it uses a small
// grid: the same code, with more grid-stride iterations per thread.
#if defined(STRATA_CUDA_EMU)
constexpr int kNormBlocks = 16;
#else
constexpr int kNormBlocks = 1024;
#endif
constexpr int kNormFinalThreads = 256;

bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// ---- AdamW -----------------------------------------------------------------------------------------------
struct AdamWDesc {
  bf16* param;
  float* master;
  const bf16* grad;
  float* m;
  float* v;
  int64_t n;
  float decay;
  int aligned;  // every pointer 16-byte aligned: full chunks take the vector path
};
struct AdamWTable {
  int64_t chunk_start[kMaxTensors + 1];  // prefix sums of ceil(n / kVec); chunk_start[count] = total
  AdamWDesc t[kMaxTensors];
  int count;
  uint32_t index_base;  // hash index of this launch's first element
};
static_assert(sizeof(AdamWTable) <= 32764, "kernel parameters are limited to 32764 bytes");

struct AdamWScalars {
  float b1, b2, eps, grad_scale, step_size, inv_bc2_sqrt;
  uint32_t seed;
};

// The tensor holding chunk c: the largest i with chunk_start[i] <= c (empty tensors are not in the table).
__device__ __forceinline__ int find_tensor(const int64_t* chunk_start, int count, int64_t c) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (chunk_start[mid] <= c)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// One element: updates m and v in place and returns the new master value.
__device__ __forceinline__ float adamw_element(float grad, float& m, float& v, float master, float decay,
                                               const AdamWScalars& s) {
  const float g = grad * s.grad_scale;
  m = s.b1 * m + (1.0f - s.b1) * g;
  v = s.b2 * v + (1.0f - s.b2) * g * g;
  return master * decay - s.step_size * m / (sqrtf(v) * s.inv_bc2_sqrt + s.eps);
}

// Four consecutive bf16 in one aligned 8-byte access.
struct alignas(8) Bf16x4 {
  bf16 v[4];
};
__device__ __forceinline__ Bf16x4 load_bf16x4(const bf16* p) {
  Bf16x4 out;
#if defined(STRATA_CUDA_EMU)
  std::memcpy(static_cast<void*>(&out), p, 8);
#else
  *reinterpret_cast<uint2*>(&out) = *reinterpret_cast<const uint2*>(p);
#endif
  return out;
}
__device__ __forceinline__ void store_bf16x4(bf16* p, const Bf16x4& x) {
#if defined(STRATA_CUDA_EMU)
  std::memcpy(static_cast<void*>(p), &x, 8);
#else
  *reinterpret_cast<uint2*>(p) = *reinterpret_cast<const uint2*>(&x);
#endif
}

// Work unit u = half chunk u / 2 (elements kHalf * (u % 2) .. + kHalf of chunk u / 2): consecutive lanes take
// consecutive units, so every warp-wide access is contiguous (256 B of bf16, 512 B of fp32). A thread takes
// kUnits units kThreads * gridDim.x apart per step and issues all their loads before it computes.
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) adamw_kernel(AdamWTable table, AdamWScalars s) {
  const int64_t total = 2 * table.chunk_start[table.count];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int ti = 0;  // the tensor of the thread's latest unit: units only grow, so the search only moves forward
  for (int64_t u0 = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; u0 < total;
       u0 += kUnits * stride) {
    int tu[kUnits];
    int64_t i0[kUnits];  // first element of the unit in its tensor
    bool vec[kUnits];
    Bf16x4 g[kUnits];
    Vec16<float> m[kUnits], v[kUnits], w[kUnits];
#pragma unroll
    for (int q = 0; q < kUnits; ++q) {
      const int64_t u = u0 + q * stride;
      vec[q] = false, tu[q] = ti, i0[q] = 0;
      if (u >= total) continue;
      const int64_t c = u / 2;
      while (table.chunk_start[ti + 1] <= c) ++ti;
      const AdamWDesc& d = table.t[ti];
      tu[q] = ti;
      i0[q] = (c - table.chunk_start[ti]) * kVec + (u % 2) * kHalf;
      vec[q] = d.aligned && i0[q] + kHalf <= d.n;
      if (vec[q]) {
        g[q] = load_bf16x4(d.grad + i0[q]);
        m[q] = Vec16<float>::load(d.m + i0[q]);
        v[q] = Vec16<float>::load(d.v + i0[q]);
        w[q] = Vec16<float>::load(d.master + i0[q]);
      }
    }
#pragma unroll
    for (int q = 0; q < kUnits; ++q) {
      const int64_t u = u0 + q * stride;
      if (u >= total) continue;
      const AdamWDesc& d = table.t[tu[q]];
      const uint32_t h0 =
          table.index_base + static_cast<uint32_t>(u * kHalf);  // = chunk * kVec + half offset
      if (vec[q]) {
        Bf16x4 p;
        for (int j = 0; j < kHalf; ++j) {
          w[q].v[j] = adamw_element(to_float(g[q].v[j]), m[q].v[j], v[q].v[j], w[q].v[j], d.decay, s);
          p.v[j] = bf16_stochastic(w[q].v[j], hash_u32(s.seed, h0 + static_cast<uint32_t>(j)));
        }
        m[q].store(d.m + i0[q]);
        v[q].store(d.v + i0[q]);
        w[q].store(d.master + i0[q]);
        store_bf16x4(d.param + i0[q], p);
      } else {
        const int64_t end = i0[q] + kHalf < d.n ? i0[q] + kHalf : d.n;
        for (int64_t i = i0[q]; i < end; ++i) {
          float mi = d.m[i], vi = d.v[i];
          const float wi = adamw_element(to_float(d.grad[i]), mi, vi, d.master[i], d.decay, s);
          d.m[i] = mi;
          d.v[i] = vi;
          d.master[i] = wi;
          d.param[i] = bf16_stochastic(wi, hash_u32(s.seed, h0 + static_cast<uint32_t>(i - i0[q])));
        }
      }
    }
  }
}

int device_sm_count() {
  int device = 0, sms = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return std::max(sms, 1);
}

// One launch over table (already filled); grid sized to the work, at most one full wave.
void launch_adamw(const AdamWTable& table, const AdamWScalars& s, cudaStream_t stream) {
  const int64_t chunks = table.chunk_start[table.count];
  if (chunks == 0) return;
  const int64_t wave = int64_t{device_sm_count()} * kBlocksPerSm;
  const int blocks = static_cast<int>(std::min(wave, ceil_div(2 * chunks, int64_t{kThreads})));
  launch(adamw_kernel, dim3(blocks), dim3(kThreads), 0, stream, table, s);
}

// ---- grad norm -------------------------------------------------------------------------------------------
struct NormDesc {
  const bf16* x;
  int64_t n;
  int aligned;
};
struct NormTable {
  int64_t chunk_start[kMaxTensors + 1];
  NormDesc t[kMaxTensors];
  int count;
};
static_assert(sizeof(NormTable) <= 32764, "kernel parameters are limited to 32764 bytes");

// partials (kNormBlocks) `=` this launch's block sums, or `+=` them when accumulate (the launches after the
// first, when there are more than kMaxTensors tensors): each block owns its partial, so the order is fixed.
__global__ void __launch_bounds__(kThreads)
    norm_partials_kernel(NormTable table, float* partials, int accumulate) {
  __shared__ float scratch[kWarpSize];
  const int64_t total = table.chunk_start[table.count];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  float acc = 0.0f;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < total; c += stride) {
    const int ti = find_tensor(table.chunk_start, table.count, c);
    const NormDesc& d = table.t[ti];
    const int64_t i0 = (c - table.chunk_start[ti]) * kVec;
    if (d.aligned && i0 + kVec <= d.n) {
      const Vec16<bf16> x = Vec16<bf16>::load(d.x + i0);
      for (int j = 0; j < kVec; ++j) {
        const float xj = to_float(x.v[j]);
        acc += xj * xj;
      }
    } else {
      const int64_t end = i0 + kVec < d.n ? i0 + kVec : d.n;
      for (int64_t i = i0; i < end; ++i) {
        const float xi = to_float(d.x[i]);
        acc += xi * xi;
      }
    }
  }
  const float block_total = block_sum(acc, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = accumulate ? partials[blockIdx.x] + block_total : block_total;
}

// *out = the kNormBlocks partials summed: each thread its strided share in order, then one block_sum.
__global__ void __launch_bounds__(kNormFinalThreads) norm_final_kernel(float* out, const float* partials) {
  __shared__ float scratch[kWarpSize];
  float acc = 0.0f;
  for (int i = threadIdx.x; i < kNormBlocks; i += kNormFinalThreads) acc += partials[i];
  const float total = block_sum(acc, scratch);
  if (threadIdx.x == 0) *out = total;
}

}  // namespace

size_t grad_norm_workspace_bytes() {
  return size_t{kNormBlocks} * sizeof(float);
}

}  // namespace strata::cuda

namespace strata::ops {

using cuda::bf16;

template <>
void adamw_update<Cuda, bf16>(const Cuda& dev, const AdamWTensor<bf16>* tensors, int count,
                              const AdamWStep& step) {
  using namespace cuda;
  STRATA_CHECK(count >= 0 && (tensors || count == 0), "adamw_update: count=", count);
  STRATA_CHECK(step.bias_correction1 > 0 && step.bias_correction2 > 0 && step.eps > 0,
               "adamw_update: bias corrections ", step.bias_correction1, ", ", step.bias_correction2,
               ", eps ", step.eps);
  NvtxRange range("adamw", dev.stream);
  const cudaStream_t stream = static_cast<cudaStream_t>(dev.stream);
  const double lr = step.lr;
  AdamWScalars s;
  s.b1 = step.beta1;
  s.b2 = step.beta2;
  s.eps = step.eps;
  s.grad_scale = step.grad_scale;
  s.step_size = static_cast<float>(lr / static_cast<double>(step.bias_correction1));
  s.inv_bc2_sqrt = static_cast<float>(1.0 / std::sqrt(static_cast<double>(step.bias_correction2)));
  s.seed = step.seed;
  AdamWTable table{};
  int64_t index_base = 0;  // padded elements of the earlier launches
  for (int i = 0; i <= count; ++i) {
    // Flush a full table, and the last one.
    if (i == count || table.count == kMaxTensors) {
      table.index_base = static_cast<uint32_t>(index_base);
      launch_adamw(table, s, stream);
      index_base += table.chunk_start[table.count] * kVec;
      table = AdamWTable{};
      if (i == count) break;
    }
    const AdamWTensor<bf16>& t = tensors[i];
    STRATA_CHECK(t.n >= 0, "adamw_update: tensor ", i, " n=", t.n);
    if (t.n == 0) continue;
    STRATA_CHECK(t.param && t.master && t.grad && t.m && t.v, "adamw_update: tensor ", i,
                 " has a null pointer (bf16 parameters need fp32 master weights)");
    AdamWDesc& d = table.t[table.count];
    d.param = t.param;
    d.master = t.master;
    d.grad = t.grad;
    d.m = t.m;
    d.v = t.v;
    d.n = t.n;
    d.decay =
        t.weight_decay != 0.0f ? static_cast<float>(1.0 - lr * static_cast<double>(t.weight_decay)) : 1.0f;
    d.aligned =
        aligned16(t.param) && aligned16(t.master) && aligned16(t.grad) && aligned16(t.m) && aligned16(t.v);
    table.chunk_start[table.count + 1] = table.chunk_start[table.count] + ceil_div(t.n, int64_t{kVec});
    ++table.count;
  }
}

template <>
void grad_norm_squared<Cuda, bf16>(const Cuda& dev, float* out, const ConstSpan<bf16>* tensors, int count) {
  using namespace cuda;
  STRATA_CHECK(out, "grad_norm_squared: null output");
  STRATA_CHECK(count >= 0 && (tensors || count == 0), "grad_norm_squared: count=", count);
  STRATA_CHECK(dev.workspace && dev.workspace_bytes >= grad_norm_workspace_bytes(),
               "grad_norm_squared: workspace of ", dev.workspace_bytes, " bytes, needs ",
               grad_norm_workspace_bytes());
  NvtxRange range("grad norm", dev.stream);
  const cudaStream_t stream = static_cast<cudaStream_t>(dev.stream);
  float* partials = static_cast<float*>(dev.workspace);
  NormTable table{};
  int launches = 0;
  for (int i = 0; i <= count; ++i) {
    if (i == count || table.count == kMaxTensors) {
      // Every launch writes all kNormBlocks partials (zeros when it has no work), so even count = 0 is
      // defined.
      launch(norm_partials_kernel, dim3(kNormBlocks), dim3(kThreads), 0, stream, table, partials,
             launches > 0 ? 1 : 0);
      ++launches;
      table = NormTable{};
      if (i == count) break;
    }
    const ConstSpan<bf16>& t = tensors[i];
    STRATA_CHECK(t.n >= 0 && (t.ptr || t.n == 0), "grad_norm_squared: tensor ", i, " n=", t.n);
    if (t.n == 0) continue;
    NormDesc& d = table.t[table.count];
    d.x = t.ptr;
    d.n = t.n;
    d.aligned = aligned16(t.ptr);
    table.chunk_start[table.count + 1] = table.chunk_start[table.count] + ceil_div(t.n, int64_t{kVec});
    ++table.count;
  }
  launch(norm_final_kernel, dim3(1), dim3(kNormFinalThreads), 0, stream, out, partials);
}

}  // namespace strata::ops
