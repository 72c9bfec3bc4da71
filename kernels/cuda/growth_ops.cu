// kernels/cuda/growth_ops.cu: a growth plan's rules, G_random's mask and G_learn's depth mixing on device
// buffers (growth_ops.h). Host reference: growth/apply.cpp (run_plan, apply_params' noise,
// GrowthMask::begin/end, LearnedDepth::materialise/dots).
//
// growth_gather / growth_noise / round_to_bf16: one thread per element, grid-stride (at most kGrowBlocks
// blocks). The gather reads its source through the row and column maps (a source row is read by a warp's
// consecutive columns: coalesced where the column map is the identity or a split copy of it) and writes its
// target layer once; the noise reads w and e and writes w; the rounding reads 4 and writes 2 bytes per
// element. Growth runs once per stage, so these are built to be exact (the host's bits: products and sums
// rounded one by one, no FMA), not fast: a few ms for a billion-parameter model at copy bandwidth.
//
// growth_mask_begin / growth_mask_end, per masked element e (k-th overall):
//   begin: saved[k] = w[e]; w[e] = bf16_rn(c w[e])          w (P) bf16, saved (total) bf16 `=`
//   end:   w[e] = saved[k]; g[e] = bf16_rn(c g[e])          (the chain rule through the factor)
// The regions (a device table uploaded once per growth) are found by binary search on their `first`, and
// element k of a region maps to (row, col) in closed form: the masked rows first, whole, then the masked
// columns of the other rows. Each element is independent, so the grid is any size: grid-stride, at most
// kMaskBlocks blocks of 256 threads. 4-6 bytes per masked element; the masked elements are the new layers'
// residual outputs (depth) or the new rows/columns (width), at most about half the model: ~0.1 ms for 124M.
//
// depth_mix_materialise, per entry k (a kind's layers, or a range of each, growth_ops.h), grown layer l it
// covers, element i < n:
//   master[l, i] = sum_{j: D[k,l,j] != 0} D[k,l,j] src[j, i]  (fp32, j ascending, product and sum each
//   rounded,
//                                                              no FMA: the host's LearnedDepth::materialise)
//   weights[l, i] = bf16_rn(master[l, i])                      master (L', n) fp32, weights (L', n) bf16 `=`
// (either may be null: ZeRO-1 writes the whole bf16 weights and only its own pieces' master weights)
// Grid (kMixBlocks, L'): block (b, l) walks the layer l of every entry that covers it grid-stride; D is read
// from a device array (the same L values by every thread: broadcast). Napkin math: per grown layer 4 L bytes
// read (the non-zero D terms) and 6 bytes written per element; at G_stack's start D has one non-zero per row,
// later L: for 124M (7M elements per layer, 12 -> 24 layers) at most 24 x 7M x (48 + 6) B = 9 GB, ~3 ms at
// 3 TB/s, once per G_learn step (which runs a whole forward and backward of the grown model besides). Under
// ZeRO-1 the master weights of a rank's pieces are a second pass over 1/R of the elements.
//
// depth_mix_dots, per entry k, grown layer l, small layer j: dots[(k L' + l) L + j] = sum_i g[l, i] src[j, i]
// (0 for a layer the entry does not cover: block (b, l) writes zero partials for it).
// Grid (kDotBlocks, L'): block (b, l) takes the elements b*256 + t + m*kDotBlocks*256 of every entry's layer
// l; for kJ small layers at a time each thread sums its products in order in fp32 (g widened from bf16), the
// block reduces them in a fixed tree (block_sums) and writes one partial per (k, l, j, b) to the workspace; a
// second kernel, one thread per (k, l, j), sums the kDotBlocks partials in order in fp64. The grid depends
// only on L', never on the device, so the dots are the same bits on every GPU and every run. Reads g L / kJ
// times (L1/L2 hits after the first) and src L' times: ~the materialisation's traffic.
#include "kernels/cuda/growth_ops.h"

#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/nvtx.h"

namespace strata::cuda {

namespace {

constexpr int kThreads = 256;  // 8 warps per block for every kernel here
constexpr int kJ = 8;          // small layers per pass of depth_mix_dots: 8 fp32 accumulators per thread
// Grids. The CPU emulation runs blocks one after another with a fiber per CUDA thread (~20 ms per block), so
// it uses small grids: the same code, more grid-stride iterations per thread.
#if defined(STRATA_CUDA_EMU)
constexpr int kGrowBlocks = 2;
constexpr int kMaskBlocks = 4;
constexpr int kMixBlocks = 2;
constexpr int kDotBlocks = 2;
#else
constexpr int kGrowBlocks = 1024;  // grid-stride elementwise kernels of the growth itself: one wave
constexpr int kMaskBlocks = 1024;  // ~8 resident blocks x 132 SMs: one wave
constexpr int kMixBlocks = 64;     // per grown layer: 64 L' blocks, over a wave from L' = 16 on
constexpr int kDotBlocks = 64;     // per grown layer; fixed (the reduction order depends on it)
#endif

// ---- growth by a plan's rules
// --------------------------------------------------------------------------------
// Grid-stride over the n elements: at most kGrowBlocks blocks, fewer when there is less work.
int grow_blocks(int64_t n) {
  return static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(kGrowBlocks, ceil_div(n, int64_t{kThreads}))));
}

// a * b and a + b rounded to fp32 / fp64 each (no FMA contraction), as the host computes them.
__device__ __forceinline__ float mul_rn(float a, float b) {
#if defined(STRATA_CUDA_EMU)
  return a * b;  // x86-64 baseline code has no FMA instruction to contract into
#else
  return __fmul_rn(a, b);
#endif
}
__device__ __forceinline__ double mul_rn(double a, double b) {
#if defined(STRATA_CUDA_EMU)
  return a * b;
#else
  return __dmul_rn(a, b);
#endif
}
__device__ __forceinline__ double add_rn(double a, double b) {
#if defined(STRATA_CUDA_EMU)
  return a + b;
#else
  return __dadd_rn(a, b);
#endif
}

__global__ void __launch_bounds__(kThreads) gather_kernel(GrowthGather g) {
  const int64_t n = g.rows * g.cols;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += stride) {
    const int64_t r = k / g.cols, c = k - r * g.cols;
    const int32_t sr = g.row_src[r];
    const int32_t sc = g.col_src ? g.col_src[c] : 0;
    float out;
    if (sr < 0 || sc < 0) {
      out = (g.moments || g.fresh == nullptr) ? 0.0f : g.fresh[k];
    } else {
      out = g.src[static_cast<int64_t>(sr) * g.src_cols + sc];
      if (!g.moments) {
        out = mul_rn(out, g.row_scale ? g.row_scale[r] : 1.0f);
        if (g.col_src) out = mul_rn(out, g.col_scale ? g.col_scale[c] : 1.0f);
      }
    }
    g.dst[k] = out;
  }
}

__global__ void __launch_bounds__(kThreads)
    noise_kernel(float* w, const float* e, int64_t n, double keep, double a) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    w[i] = static_cast<float>(
        add_rn(mul_rn(keep, static_cast<double>(w[i])), mul_rn(a, static_cast<double>(e[i]))));
}

__global__ void __launch_bounds__(kThreads) round_kernel(bf16* out, const float* in, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = __float2bfloat16_rn(in[i]);
}

// ---- mask
// -----------------------------------------------------------------------------------------------------
__host__ __device__ __forceinline__ int64_t region_numel(const MaskRegion& r) {
  const int64_t full_rows = r.row_end - r.row_begin;
  return full_rows * r.cols + (r.rows - full_rows) * (r.col_end - r.col_begin);
}

// The flat index of masked element k (< region_numel) of region r.
__device__ __forceinline__ int64_t region_element(const MaskRegion& r, int64_t k) {
  const int64_t full = (r.row_end - r.row_begin) * r.cols;
  if (k < full) return r.base + (r.row_begin + k / r.cols) * r.cols + k % r.cols;
  k -= full;
  const int64_t w = r.col_end - r.col_begin;
  int64_t row = k / w;  // among the rows outside [row_begin, row_end)
  if (row >= r.row_begin) row += r.row_end - r.row_begin;
  return r.base + row * r.cols + r.col_begin + k % w;
}

// The region holding masked element k: the largest i with regions[i].first <= k.
__device__ __forceinline__ int find_region(const MaskRegion* regions, int count, int64_t k) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (regions[mid].first <= k)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

__global__ void __launch_bounds__(kThreads)
    mask_begin_kernel(bf16* weights, bf16* saved, const MaskRegion* regions, int count, int64_t total,
                      float c) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < total; k += stride) {
    const MaskRegion& r = regions[find_region(regions, count, k)];
    const int64_t e = region_element(r, k - r.first);
    const bf16 w = weights[e];
    saved[k] = w;
    weights[e] = __float2bfloat16_rn(c * to_float(w));
  }
}

__global__ void __launch_bounds__(kThreads)
    mask_end_kernel(bf16* weights, bf16* grads, const bf16* saved, const MaskRegion* regions, int count,
                    int64_t total, float c) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < total; k += stride) {
    const MaskRegion& r = regions[find_region(regions, count, k)];
    const int64_t e = region_element(r, k - r.first);
    weights[e] = saved[k];
    if (grads) grads[e] = __float2bfloat16_rn(c * to_float(grads[e]));
  }
}

// Grid-stride over the masked elements: at most kMaskBlocks blocks, fewer when there is less work.
int mask_blocks(const void* weights, const void* saved, const MaskRegion* regions, int count, int64_t total,
                const char* op) {
  STRATA_CHECK(total >= 0 && count >= 0 && (total == 0 || (count > 0 && regions && weights && saved)), op,
               ": ", count, " regions of ", total, " elements (or a null pointer)");
  return static_cast<int>(std::min<int64_t>(kMaskBlocks, ceil_div(total, int64_t{kThreads})));
}

// ---- depth mixing
// ---------------------------------------------------------------------------------------------
struct MixTable {
  DepthMixKind k[kDepthMixMaxKinds];
  int count;
};
static_assert(sizeof(MixTable) <= 4096, "a small kernel parameter");

// o + d w with the product and the sum each rounded to fp32 (no FMA), as the host computes it.
__device__ __forceinline__ float add_product(float o, float d, float w) {
#if defined(STRATA_CUDA_EMU)
  return o + d * w;  // x86-64 baseline code has no FMA instruction to contract into
#else
  return __fadd_rn(o, __fmul_rn(d, w));
#endif
}

__global__ void __launch_bounds__(kThreads)
    materialise_kernel(MixTable table, const float* D, int L2, int L) {
  const int l = blockIdx.y;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int k = 0; k < table.count; ++k) {
    const DepthMixKind& t = table.k[k];  // strides and layer range resolved by make_table
    if (l < t.layer_begin || l >= t.layer_end) continue;
    const float* d = D + (static_cast<int64_t>(k) * L2 + l) * L;  // row l of entry k's D
    const int64_t at = (l - t.layer_begin) * t.stride;
    float* master = t.master ? t.master + at : nullptr;
    bf16* weights = t.weights ? t.weights + at : nullptr;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < t.n; i += stride) {
      float o = 0.0f;
      for (int j = 0; j < L; ++j) {
        const float dj = d[j];
        if (dj != 0.0f) o = add_product(o, dj, t.src[j * t.src_stride + i]);
      }
      if (master) master[i] = o;
      if (weights) weights[i] = __float2bfloat16_rn(o);
    }
  }
}

// Sums each of v[0..nj) over the block (blockDim.x a multiple of 32) in a fixed order: warp sums, then warp 0
// adds the warps' sums; the results are valid in warp 0. One pair of barriers for all nj values.
__device__ __forceinline__ void block_sums(float (&v)[kJ], int nj, float (*scratch)[kWarpSize]) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int nwarps = blockDim.x / kWarpSize;
  for (int q = 0; q < nj; ++q) v[q] = warp_sum(v[q]);
  __syncthreads();  // the previous call's reads of scratch are done
  if (lane == 0)
    for (int q = 0; q < nj; ++q) scratch[q][warp] = v[q];
  __syncthreads();
  if (warp == 0)
    for (int q = 0; q < nj; ++q) v[q] = warp_sum(lane < nwarps ? scratch[q][lane] : 0.0f);
}

// partials[((k L' + l) L + j) kDotBlocks + b] = block b's share of <g_l, src_j> of entry k (0 when the
// entry does not cover layer l).
__global__ void __launch_bounds__(kThreads)
    dots_partials_kernel(MixTable table, int L2, int L, float* partials) {
  __shared__ float scratch[kJ][kWarpSize];
  const int l = blockIdx.y;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int k = 0; k < table.count; ++k) {
    const DepthMixKind& t = table.k[k];  // strides and layer range resolved by make_table
    float* out = partials + (static_cast<int64_t>(k) * L2 + l) * L * gridDim.x + blockIdx.x;
    if (l < t.layer_begin || l >= t.layer_end) {  // uniform over the block: no barrier skipped by some
      if (threadIdx.x == 0)
        for (int j = 0; j < L; ++j) out[static_cast<int64_t>(j) * gridDim.x] = 0.0f;
      continue;
    }
    const bf16* g = t.grads + (l - t.layer_begin) * t.stride;
    for (int j0 = 0; j0 < L; j0 += kJ) {
      const int nj = L - j0 < kJ ? L - j0 : kJ;  // the same for every thread: block_sums below is uniform
      float acc[kJ];
#pragma unroll
      for (int q = 0; q < kJ; ++q) acc[q] = 0.0f;
      for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < t.n; i += stride) {
        const float gi = to_float(g[i]);
        const float* w = t.src + j0 * t.src_stride + i;
#pragma unroll
        for (int q = 0; q < kJ; ++q)
          if (q < nj) acc[q] += gi * w[q * t.src_stride];
      }
      block_sums(acc, nj, scratch);
      if (threadIdx.x == 0)
        for (int q = 0; q < nj; ++q) out[static_cast<int64_t>(j0 + q) * gridDim.x] = acc[q];
    }
  }
}

// dots[p] = the kDotBlocks partials of pair p summed in order, in fp64.
__global__ void __launch_bounds__(kThreads)
    dots_final_kernel(const float* partials, int64_t pairs, double* dots) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= pairs) return;
  double s = 0.0;
  for (int b = 0; b < kDotBlocks; ++b) s += static_cast<double>(partials[p * kDotBlocks + b]);
  dots[p] = s;
}

// The entries with their defaults resolved: strides n, layer_end L'.
MixTable make_table(const DepthMixKind* kinds, int count, int L2, int L, bool need_grads, const char* op) {
  STRATA_CHECK(count >= 1 && count <= kDepthMixMaxKinds && kinds, op, ": ", count, " entries (1 to ",
               kDepthMixMaxKinds, ")");
  STRATA_CHECK(L >= 1 && L2 >= 1 && L2 <= 65535, op, ": L=", L, " L'=", L2);
  MixTable t{};
  t.count = count;
  for (int k = 0; k < count; ++k) {
    DepthMixKind d = kinds[k];
    if (d.src_stride == 0) d.src_stride = d.n;
    if (d.stride == 0) d.stride = d.n;
    if (d.layer_end == -1) d.layer_end = L2;
    STRATA_CHECK(d.n >= 0 && d.src && (need_grads ? d.grads != nullptr : (d.master || d.weights)), op,
                 ": entry ", k, " has n=", d.n, " or a null pointer");
    // Strides below n would make the layers' ranges overlap (racing writes).
    STRATA_CHECK(d.src_stride >= d.n && d.stride >= d.n, op, ": entry ", k, " has strides ", d.src_stride,
                 " (src) and ", d.stride, " below n=", d.n);
    STRATA_CHECK(d.layer_begin >= 0 && d.layer_begin <= d.layer_end && d.layer_end <= L2, op, ": entry ", k,
                 " covers grown layers [", d.layer_begin, ", ", d.layer_end, ") of L'=", L2);
    t.k[k] = d;
  }
  return t;
}

}  // namespace

int64_t mask_region_numel(const MaskRegion& r) {
  return region_numel(r);
}

void growth_mask_begin(bf16* weights, bf16* saved, const MaskRegion* regions, int count, int64_t total,
                       float c, cudaStream_t stream) {
  const int blocks = mask_blocks(weights, saved, regions, count, total, "growth_mask_begin");
  if (total == 0) return;
  NvtxRange range("growth mask begin", stream);
  launch(mask_begin_kernel, dim3(blocks), dim3(kThreads), 0, stream, weights, saved, regions, count, total,
         c);
}

void growth_mask_end(bf16* weights, bf16* grads, const bf16* saved, const MaskRegion* regions, int count,
                     int64_t total, float c, cudaStream_t stream) {
  const int blocks = mask_blocks(weights, saved, regions, count, total, "growth_mask_end");
  if (total == 0) return;
  NvtxRange range("growth mask end", stream);
  launch(mask_end_kernel, dim3(blocks), dim3(kThreads), 0, stream, weights, grads, saved, regions, count,
         total, c);
}

void depth_mix_materialise(const DepthMixKind* kinds, int count, const float* D, int L2, int L,
                           cudaStream_t stream) {
  const MixTable table = make_table(kinds, count, L2, L, false, "depth_mix_materialise");
  STRATA_CHECK(D != nullptr, "depth_mix_materialise: null D");
  NvtxRange range("depth mix materialise", stream);
  launch(materialise_kernel, dim3(kMixBlocks, L2), dim3(kThreads), 0, stream, table, D, L2, L);
}

void growth_gather(const GrowthGather& g, cudaStream_t stream) {
  STRATA_CHECK(g.rows >= 0 && g.cols >= 1 && g.src_cols >= 1 && (g.col_src != nullptr || g.cols == 1),
               "growth_gather: ", g.rows, " x ", g.cols, " from rows of ", g.src_cols);
  if (g.rows == 0) return;
  STRATA_CHECK(g.dst && g.src && g.row_src, "growth_gather: null dst, src or row map");
  NvtxRange range("growth gather", stream);
  const int64_t n = g.rows * g.cols;
  launch(gather_kernel, dim3(grow_blocks(n)), dim3(kThreads), 0, stream, g);
}

void growth_noise(float* w, const float* e, int64_t n, double keep, double a, cudaStream_t stream) {
  STRATA_CHECK(n >= 0 && (n == 0 || (w && e)), "growth_noise: ", n, " elements (or a null pointer)");
  if (n == 0) return;
  NvtxRange range("growth noise", stream);
  launch(noise_kernel, dim3(grow_blocks(n)), dim3(kThreads), 0, stream, w, e, n, keep, a);
}

void round_to_bf16(bf16* out, const float* in, int64_t n, cudaStream_t stream) {
  STRATA_CHECK(n >= 0 && (n == 0 || (out && in)), "round_to_bf16: ", n, " elements (or a null pointer)");
  if (n == 0) return;
  launch(round_kernel, dim3(grow_blocks(n)), dim3(kThreads), 0, stream, out, in, n);
}

size_t depth_mix_dots_workspace_bytes(int count, int L2, int L) {
  return static_cast<size_t>(count) * L2 * L * kDotBlocks * sizeof(float);
}

void depth_mix_dots(const DepthMixKind* kinds, int count, int L2, int L, float* workspace,
                    size_t workspace_bytes, double* dots, cudaStream_t stream) {
  const MixTable table = make_table(kinds, count, L2, L, true, "depth_mix_dots");
  STRATA_CHECK(dots && workspace && workspace_bytes >= depth_mix_dots_workspace_bytes(count, L2, L),
               "depth_mix_dots: workspace of ", workspace_bytes, " bytes, needs ",
               depth_mix_dots_workspace_bytes(count, L2, L));
  NvtxRange range("depth mix dots", stream);
  launch(dots_partials_kernel, dim3(kDotBlocks, L2), dim3(kThreads), 0, stream, table, L2, L, workspace);
  const int64_t pairs = int64_t{count} * L2 * L;
  launch(dots_final_kernel, dim3(static_cast<unsigned>(ceil_div(pairs, int64_t{kThreads}))), dim3(kThreads),
         0, stream, workspace, pairs, dots);
}

}  // namespace strata::cuda
