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
// prefix sums of the tensors' chunk counts. A chunk is kVec = 8 consecutive elements of one tensor (16 bytes
// of bf16, two 16-byte vectors of fp32); each thread walks the concatenated chunk range grid-stride and finds
// its tensor by binary search over the prefix sums (6 steps over the parameter bank; the lanes of a warp
// mostly agree, so the reads broadcast). A full chunk of a tensor whose pointers are all 16-byte aligned uses
// vector loads and stores; the tail chunk and unaligned tensors go element by element.
//
// Napkin math: 28 bytes per element (read grad 2, m 4, v 4, master 4; write m, v, master 12, param 2): a 124M
// parameter model moves 3.5 GB, ~1.2 ms at H100's ~3 TB/s. Memory-bound; the grid is at most kBlocksPerSm
// blocks of 256 threads per SM and strides over the rest (ptxas: 59 registers, so 4 blocks are resident per
// SM, each thread with seven independent 16-byte loads in flight per chunk: ~110 KB in flight per SM).
//
// grad_norm_squared: *out (device fp32) = sum of g^2 over every element of every tensor. Deterministic: a
// fixed grid of kNormBlocks blocks (independent of the device and the tensors) walks the chunks grid-stride,
// each thread summing its chunks in order in fp32; each block reduces in a fixed tree (block_sum) and writes
// its partial to the workspace; a second, single-block kernel sums the kNormBlocks partials in a fixed order
// into *out. Same inputs, same bits, run after run, whatever the GPU's SM count. 2 bytes per element read:
// ~0.1 ms for 124M gradients.
#include <algorithm>
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/nvtx.h"
#include "kernels/cuda/workspace.h"
#include "kernels/ops.h"

namespace strata::cuda {

namespace {

constexpr int kMaxTensors = 64;  // per launch; more tensors take more launches
constexpr int kVec = 8;          // elements per chunk: one 16-byte bf16 vector
constexpr int kThreads = 256;    // 8 warps: 8 blocks fill an SM's 2048 threads
constexpr int kBlocksPerSm = 8;
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

__global__ void __launch_bounds__(kThreads) adamw_kernel(AdamWTable table, AdamWScalars s) {
  const int64_t total = table.chunk_start[table.count];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < total; c += stride) {
    const int ti = find_tensor(table.chunk_start, table.count, c);
    const AdamWDesc& d = table.t[ti];
    const int64_t i0 = (c - table.chunk_start[ti]) * kVec;  // first element of the chunk in the tensor
    const uint32_t h0 = table.index_base + static_cast<uint32_t>(c * kVec);
    if (d.aligned && i0 + kVec <= d.n) {
      const Vec16<bf16> g = Vec16<bf16>::load(d.grad + i0);
      Vec16<float> m[2] = {Vec16<float>::load(d.m + i0), Vec16<float>::load(d.m + i0 + 4)};
      Vec16<float> v[2] = {Vec16<float>::load(d.v + i0), Vec16<float>::load(d.v + i0 + 4)};
      Vec16<float> w[2] = {Vec16<float>::load(d.master + i0), Vec16<float>::load(d.master + i0 + 4)};
      Vec16<bf16> p;
      for (int j = 0; j < kVec; ++j) {
        float& mj = m[j / 4].v[j % 4];
        float& vj = v[j / 4].v[j % 4];
        float& wj = w[j / 4].v[j % 4];
        wj = adamw_element(to_float(g.v[j]), mj, vj, wj, d.decay, s);
        p.v[j] = bf16_stochastic(wj, hash_u32(s.seed, h0 + static_cast<uint32_t>(j)));
      }
      for (int k = 0; k < 2; ++k) {
        m[k].store(d.m + i0 + 4 * k);
        v[k].store(d.v + i0 + 4 * k);
        w[k].store(d.master + i0 + 4 * k);
      }
      p.store(d.param + i0);
    } else {
      const int64_t end = i0 + kVec < d.n ? i0 + kVec : d.n;
      for (int64_t i = i0; i < end; ++i) {
        float mi = d.m[i], vi = d.v[i];
        const float w = adamw_element(to_float(d.grad[i]), mi, vi, d.master[i], d.decay, s);
        d.m[i] = mi;
        d.v[i] = vi;
        d.master[i] = w;
        d.param[i] = bf16_stochastic(w, hash_u32(s.seed, h0 + static_cast<uint32_t>(i - i0)));
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
  const int blocks = static_cast<int>(std::min(wave, ceil_div(chunks, int64_t{kThreads})));
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
  NvtxRange range("adamw");
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
  NvtxRange range("grad norm");
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
