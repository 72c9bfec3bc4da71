// kernels/cuda/norms.cu: RMSNorm and LayerNorm, alone and fused with the residual add before them, CUDA.
// bf16 storage, fp32 arithmetic and statistics (Stat<bf16> = float). CPU twins: kernels/cpu/rmsnorm.cpp,
// layernorm.cpp, residual_norm.cpp.
//
// rmsnorm_forward:   rstd[n] = 1 / sqrt(mean_c x[n,c]^2 + eps);  out = x * rstd * weight       out, rstd `=`
// layernorm_forward: mean[n] = mean_c x;  rstd[n] = 1 / sqrt(mean_c (x - mean)^2 + eps) (two passes: no
//                    cancellation);  out = (x - mean) * rstd * weight + bias              out, mean, rstd `=`
// residual_*norm_forward: x = resid_out = bf16(resid_in + branch), then the norm of x: the statistics are
//                    those of the stored bf16 stream, which the backward reads. resid_out may alias resid_in.
// backward, with xhat = (x - mean) * rstd (mean = 0 for RMSNorm) and g = dout * weight:
//   dinp[n,c]  += rstd * (g - mean_c(g) - xhat * mean_c(g * xhat))  (no mean_c(g) for RMSNorm)   dinp `+=`
//   dweight[c] += sum_n dout * xhat;  dbias[c] += sum_n dout                           dweight, dbias `+=`
// Shapes: x, inp, resid_*, branch, out, dout, dinp (N,C); mean, rstd (N) fp32; weight, bias, dweight,
// dbias (C).
//
// Forward: one warp per row, kFwdWarps = 4 rows per block (128 threads: a fine-grained tail, and 16 blocks
// per SM reach full occupancy). Lanes stride over the row in 16-byte vectors of 8 bf16 when C % 8 == 0 and
// every pointer is 16-byte aligned, else element by element. The statistics pass reads the row from DRAM;
// the later passes re-read it from L1/L2 (a block's 4 rows are 8C bytes). DRAM traffic per element: the
// plain norms read 2 B and write 2 B; the fused forms read 4 B (resid_in, branch) and write 4 B (resid_out,
// out). Napkin: N = 32768, C = 2048 fused: 537 MB, ~160 us at an H100's ~3.3 TB/s.
//
// Backward, deterministic (no float atomics), two kernels:
//   1. row blocks: P = min(ceil(N / 16), 1024) blocks, each owning a contiguous run of >= 16 rows, one row
//      at a time with the whole block (threads = C/8 vectors rounded up to a warp, at most 256; each thread
//      owns the same columns on every row). Per row: one pass reads dout, x (DRAM) to form the row sums
//      (one block reduction, a fixed order) and to add dout * xhat (and dout) into the thread's own fp32
//      column accumulators in shared memory; a second pass re-reads dout, x (L1) and reads/writes dinp.
//      At the end each block writes its column sums to workspace row `block` (fp32 P x C; dbias's P x C
//      after it).
//   2. column reduce: 32 columns x 8 row-lanes per block; each lane sums every 8th partial row in order,
//      then one lane sums the 8 in order and adds into dweight/dbias (bf16 +=). Same order on every run.
//   DRAM traffic per element: dout 2 B + x 2 B + dinp 4 B = 8 B; the partials add 2 x 4 B x P x C per
//   accumulated tensor, P/N of the row traffic (at most 1/16; 3% per tensor at N = 32768). Workspace:
//   norm_backward_workspace_bytes(N, C) (kernels/cuda/workspace.h).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/nvtx.h"
#include "kernels/cuda/workspace.h"
#include "kernels/ops.h"

namespace strata::cuda {
namespace {

constexpr int kFwdWarps = 4;         // rows (warps) per forward block
constexpr int kBwdMaxThreads = 256;  // threads per backward row block
constexpr int kBwdMinRows = 16;      // rows per backward block at least: partial traffic <= 1/16 of the rows'
constexpr int kBwdMaxPartials = 1024;       // row blocks at most: ~8 per SM on an H100
constexpr int kReduceCols = kWarpSize;      // column-reduce block: 32 columns (coalesced) x
constexpr int kReduceLanes = 8;             // 8 partial-row lanes
constexpr size_t kDefaultSmem = 48 * 1024;  // dynamic shared memory without the opt-in attribute
constexpr size_t kRowsStaticSmem = 2 * kWarpSize * sizeof(float);  // the row kernel's reduction scratch

__device__ __forceinline__ float round_bf16(float x) {
  return to_float(from_float<bf16>(x));
}

bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// Sums each of the K values over the block (blockDim.x a multiple of 32); every thread gets the sums, in a
// fixed order. One barrier pair for all K, none for a one-warp block. scratch: K * 32 floats of shared
// memory.
template <int K>
__device__ __forceinline__ void block_sums(float (&v)[K], float* scratch) {
  for (int i = 0; i < K; ++i) v[i] = warp_sum(v[i]);
  if (blockDim.x == kWarpSize) return;  // block-uniform
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int nwarps = blockDim.x / kWarpSize;
  __syncthreads();  // every thread has read the previous call's scratch
  if (lane == 0)
    for (int i = 0; i < K; ++i) scratch[i * kWarpSize + warp] = v[i];
  __syncthreads();
  for (int i = 0; i < K; ++i) v[i] = warp_sum(lane < nwarps ? scratch[i * kWarpSize + lane] : 0.0f);
}

// ---- forward
// -------------------------------------------------------------------------------------------------------
// kLayer: LayerNorm (mean, bias) else RMSNorm. kResidual: x = resid_out = bf16(inp + branch) first.
template <int W, bool kLayer, bool kResidual>
__global__ void __launch_bounds__(kFwdWarps* kWarpSize)
    norm_forward_kernel(bf16* resid_out, bf16* out, float* mean, float* rstd, const bf16* inp,
                        const bf16* branch, const bf16* weight, const bf16* bias, int N, int C, float eps) {
  const int lane = threadIdx.x % kWarpSize;
  const int row = blockIdx.x * kFwdWarps + threadIdx.x / kWarpSize;
  if (row >= N) return;  // the whole warp
  const int CV = C / W;
  const int64_t base = int64_t{row} * C;
  const bf16* x = (kResidual ? resid_out : inp) + base;  // the row being normalised (after the add, if any)

  // Pass 1 (DRAM): the add, and sum (LayerNorm) or sum of squares (RMSNorm).
  float s = 0.0f;
  for (int v = lane; v < CV; v += kWarpSize) {
    float f[W];
    if constexpr (kResidual) {
      float b[W];
      load_floats<W>(inp + base + v * W, f);
      load_floats<W>(branch + base + v * W, b);
      for (int k = 0; k < W; ++k) f[k] = round_bf16(f[k] + b[k]);  // the stream as stored
      store_floats<W>(resid_out + base + v * W, f);
    } else {
      load_floats<W>(x + v * W, f);
    }
    for (int k = 0; k < W; ++k) s += kLayer ? f[k] : f[k] * f[k];
  }
  s = warp_sum(s);
  float m = 0.0f;
  if constexpr (kLayer) {
    m = s / static_cast<float>(C);
    float ss = 0.0f;  // pass 2 (L1): centred sum of squares
    for (int v = lane; v < CV; v += kWarpSize) {
      float f[W];
      load_floats<W>(x + v * W, f);
      for (int k = 0; k < W; ++k) ss += (f[k] - m) * (f[k] - m);
    }
    s = warp_sum(ss);
  }
  const float r = 1.0f / sqrtf(s / static_cast<float>(C) + eps);

  // Last pass (L1): normalise, scale, shift, write.
  for (int v = lane; v < CV; v += kWarpSize) {
    float f[W], w[W], o[W];
    load_floats<W>(x + v * W, f);
    load_floats<W>(weight + v * W, w);
    for (int k = 0; k < W; ++k) o[k] = (f[k] - m) * r * w[k];
    if constexpr (kLayer) {
      float b[W];
      load_floats<W>(bias + v * W, b);
      for (int k = 0; k < W; ++k) o[k] += b[k];
    }
    store_floats<W>(out + base + v * W, o);
  }
  if (lane == 0) {
    rstd[row] = r;
    if constexpr (kLayer) mean[row] = m;
  }
}

template <bool kLayer, bool kResidual>
void norm_forward(const ops::Cuda& dev, bf16* resid_out, bf16* out, float* mean, float* rstd, const bf16* inp,
                  const bf16* branch, const bf16* weight, const bf16* bias, int N, int C, float eps) {
  const bool vec = C % 8 == 0 && aligned16(out) && aligned16(inp) && aligned16(weight) &&
                   (!kLayer || aligned16(bias)) &&
                   (!kResidual || (aligned16(resid_out) && aligned16(branch)));
  const dim3 grid(static_cast<unsigned>(ceil_div(N, kFwdWarps))), block(kFwdWarps * kWarpSize);
  const auto stream = static_cast<cudaStream_t>(dev.stream);
  if (vec)
    launch(norm_forward_kernel<8, kLayer, kResidual>, grid, block, 0, stream, resid_out, out, mean, rstd, inp,
           branch, weight, bias, N, C, eps);
  else
    launch(norm_forward_kernel<1, kLayer, kResidual>, grid, block, 0, stream, resid_out, out, mean, rstd, inp,
           branch, weight, bias, N, C, eps);
}

// ---- backward
// ------------------------------------------------------------------------------------------------------
int backward_partials(int N) {
  return std::min(ceil_div(N, kBwdMinRows), kBwdMaxPartials);
}

// Kernel 1: dinp += ..., and this block's column sums of dout * xhat (and dout) into partial[blockIdx.x, :]
// (and partial[gridDim.x + blockIdx.x, :]). Shared memory: C floats per accumulated tensor, stored [k][v]
// (element k of vector v at k * CV + v) so that a warp's accesses for one k fall in distinct banks.
template <int W, bool kLayer>
__global__ void norm_backward_rows_kernel(bf16* dinp, float* partial, const bf16* dout, const bf16* x,
                                          const bf16* weight, const float* mean, const float* rstd, int N,
                                          int C) {
  STRATA_DYNAMIC_SMEM(float, acc_w);  // (W, CV) fp32 sums of dout * xhat, then (W, CV) of dout for LayerNorm
  __shared__ float scratch[kRowsStaticSmem / sizeof(float)];
  float* acc_b = acc_w + C;
  const int CV = C / W;
  for (int v = threadIdx.x; v < CV; v += blockDim.x)
    for (int k = 0; k < W; ++k) {
      acc_w[k * CV + v] = 0.0f;
      if constexpr (kLayer) acc_b[k * CV + v] = 0.0f;
    }
  const int rows_per_block = ceil_div(N, static_cast<int>(gridDim.x));
  const int r0 = static_cast<int>(blockIdx.x) * rows_per_block;
  const int r1 = std::min(N, r0 + rows_per_block);
  const float inv_c = 1.0f / static_cast<float>(C);
  for (int row = r0; row < r1; ++row) {  // block-uniform: every thread reaches the block_sums
    const int64_t base = int64_t{row} * C;
    const float m = kLayer ? mean[row] : 0.0f, r = rstd[row];
    float sg = 0.0f, sgx = 0.0f;
    for (int v = threadIdx.x; v < CV; v += blockDim.x) {
      float dy[W], xv[W], w[W];
      load_floats<W>(dout + base + v * W, dy);
      load_floats<W>(x + base + v * W, xv);
      load_floats<W>(weight + v * W, w);
      for (int k = 0; k < W; ++k) {
        const float xhat = (xv[k] - m) * r, g = dy[k] * w[k];
        sg += g;
        sgx += g * xhat;
        acc_w[k * CV + v] += dy[k] * xhat;
        if constexpr (kLayer) acc_b[k * CV + v] += dy[k];
      }
    }
    if constexpr (kLayer) {
      float sums[2] = {sgx, sg};
      block_sums(sums, scratch);
      sgx = sums[0] * inv_c, sg = sums[1] * inv_c;
    } else {
      float sums[1] = {sgx};
      block_sums(sums, scratch);
      sgx = sums[0] * inv_c;
    }
    for (int v = threadIdx.x; v < CV; v += blockDim.x) {
      float dy[W], xv[W], w[W], dx[W];
      load_floats<W>(dout + base + v * W, dy);
      load_floats<W>(x + base + v * W, xv);
      load_floats<W>(weight + v * W, w);
      load_floats<W>(dinp + base + v * W, dx);
      for (int k = 0; k < W; ++k) {
        const float xhat = (xv[k] - m) * r, g = dy[k] * w[k];
        dx[k] += r * (g - (kLayer ? sg : 0.0f) - xhat * sgx);
      }
      store_floats<W>(dinp + base + v * W, dx);
    }
  }
  float* pw = partial + int64_t{blockIdx.x} * C;
  float* pb = partial + (int64_t{gridDim.x} + blockIdx.x) * C;
  for (int v = threadIdx.x; v < CV; v += blockDim.x)
    for (int k = 0; k < W; ++k) {
      pw[v * W + k] = acc_w[k * CV + v];
      if constexpr (kLayer) pb[v * W + k] = acc_b[k * CV + v];
    }
}

// Kernel 2: dweight[c] += sum_p partial[p, c] (and dbias[c] += sum_p partial[P + p, c]), in a fixed order.
__global__ void __launch_bounds__(kReduceCols* kReduceLanes)
    norm_backward_columns_kernel(bf16* dweight, bf16* dbias, const float* partial, int P, int C) {
  __shared__ float part[2][kReduceLanes][kReduceCols];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int c = static_cast<int>(blockIdx.x) * kReduceCols + tx;
  float sw = 0.0f, sb = 0.0f;
  if (c < C) {
    for (int p = ty; p < P; p += kReduceLanes) {
      sw += partial[int64_t{p} * C + c];
      if (dbias) sb += partial[(int64_t{P} + p) * C + c];
    }
  }
  part[0][ty][tx] = sw;
  part[1][ty][tx] = sb;
  __syncthreads();
  if (ty == 0 && c < C) {
    float tw = 0.0f, tb = 0.0f;
    for (int l = 0; l < kReduceLanes; ++l) tw += part[0][l][tx], tb += part[1][l][tx];
    dweight[c] = from_float<bf16>(to_float(dweight[c]) + tw);
    if (dbias) dbias[c] = from_float<bf16>(to_float(dbias[c]) + tb);
  }
}

template <bool kLayer>
void norm_backward(const ops::Cuda& dev, bf16* dinp, bf16* dweight, bf16* dbias, const bf16* dout,
                   const bf16* x, const bf16* weight, const float* mean, const float* rstd, int N, int C) {
  const size_t need = norm_backward_workspace_bytes(N, C);
  STRATA_CHECK(dev.workspace && dev.workspace_bytes >= need, "norm backward: workspace of ",
               dev.workspace_bytes, " bytes, needs ", need, " (norm_backward_workspace_bytes)");
  STRATA_CHECK(aligned16(dev.workspace), "norm backward: workspace not 16-byte aligned");
  const auto stream = static_cast<cudaStream_t>(dev.stream);
  auto* partial = static_cast<float*>(dev.workspace);
  const int P = backward_partials(N);
  const bool vec = C % 8 == 0 && aligned16(dinp) && aligned16(dout) && aligned16(x) && aligned16(weight);
  const int W = vec ? 8 : 1;
  const int threads = std::clamp(ceil_div(C / W, kWarpSize) * kWarpSize, kWarpSize, kBwdMaxThreads);
  const size_t smem = static_cast<size_t>(C) * sizeof(float) * (kLayer ? 2 : 1);
  auto kernel = vec ? norm_backward_rows_kernel<8, kLayer> : norm_backward_rows_kernel<1, kLayer>;
  if (smem + kRowsStaticSmem > kDefaultSmem) {
    int device = 0, optin = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    STRATA_CHECK(smem + kRowsStaticSmem <= static_cast<size_t>(optin), "norm backward: C=", C, " needs ",
                 smem, " bytes of shared memory, the device has ", optin);
    CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  launch(kernel, dim3(static_cast<unsigned>(P)), dim3(static_cast<unsigned>(threads)), smem, stream, dinp,
         partial, dout, x, weight, mean, rstd, N, C);
  launch(norm_backward_columns_kernel, dim3(static_cast<unsigned>(ceil_div(C, kReduceCols))),
         dim3(kReduceCols, kReduceLanes), 0, stream, dweight, kLayer ? dbias : nullptr, partial, P, C);
}

}  // namespace

size_t norm_backward_workspace_bytes(int N, int C) {
  STRATA_CHECK(N > 0 && C > 0, "norm_backward_workspace_bytes: N=", N, " C=", C);
  return 2 * static_cast<size_t>(backward_partials(N)) * static_cast<size_t>(C) * sizeof(float);
}

}  // namespace strata::cuda

namespace strata::ops {

using cuda::bf16;

template <class Dev, class F>
void rmsnorm_forward(const Dev& dev, F* out, Stat<F>* rstd, const F* inp, const F* weight, int N, int C,
                     float eps) {
  cuda::NvtxRange range("rmsnorm fwd");
  STRATA_CHECK(out && rstd && inp && weight, "rmsnorm_forward: null pointer");
  STRATA_CHECK(N > 0 && C > 0 && eps >= 0.0f, "rmsnorm_forward: N=", N, " C=", C, " eps=", eps);
  cuda::norm_forward<false, false>(dev, nullptr, out, nullptr, rstd, inp, nullptr, weight, nullptr, N, C,
                                   eps);
}

template <class Dev, class F>
void rmsnorm_backward(const Dev& dev, F* dinp, F* dweight, const F* dout, const F* inp, const F* weight,
                      const Stat<F>* rstd, int N, int C) {
  cuda::NvtxRange range("rmsnorm bwd");
  STRATA_CHECK(dinp && dweight && dout && inp && weight && rstd, "rmsnorm_backward: null pointer");
  STRATA_CHECK(N > 0 && C > 0, "rmsnorm_backward: N=", N, " C=", C);
  cuda::norm_backward<false>(dev, dinp, dweight, nullptr, dout, inp, weight, nullptr, rstd, N, C);
}

template <class Dev, class F>
void layernorm_forward(const Dev& dev, F* out, Stat<F>* mean, Stat<F>* rstd, const F* inp, const F* weight,
                       const F* bias, int N, int C, float eps) {
  cuda::NvtxRange range("layernorm fwd");
  STRATA_CHECK(out && mean && rstd && inp && weight && bias, "layernorm_forward: null pointer");
  STRATA_CHECK(N > 0 && C > 0 && eps >= 0.0f, "layernorm_forward: N=", N, " C=", C, " eps=", eps);
  cuda::norm_forward<true, false>(dev, nullptr, out, mean, rstd, inp, nullptr, weight, bias, N, C, eps);
}

template <class Dev, class F>
void layernorm_backward(const Dev& dev, F* dinp, F* dweight, F* dbias, const F* dout, const F* inp,
                        const F* weight, const Stat<F>* mean, const Stat<F>* rstd, int N, int C) {
  cuda::NvtxRange range("layernorm bwd");
  STRATA_CHECK(dinp && dweight && dbias && dout && inp && weight && mean && rstd,
               "layernorm_backward: null pointer");
  STRATA_CHECK(N > 0 && C > 0, "layernorm_backward: N=", N, " C=", C);
  cuda::norm_backward<true>(dev, dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
}

template <class Dev, class F>
void residual_rmsnorm_forward(const Dev& dev, F* resid_out, F* out, Stat<F>* rstd, const F* resid_in,
                              const F* branch, const F* weight, int N, int C, float eps) {
  cuda::NvtxRange range("residual+rmsnorm fwd");
  STRATA_CHECK(resid_out && out && rstd && resid_in && branch && weight,
               "residual_rmsnorm_forward: null pointer");
  STRATA_CHECK(N > 0 && C > 0 && eps >= 0.0f, "residual_rmsnorm_forward: N=", N, " C=", C, " eps=", eps);
  cuda::norm_forward<false, true>(dev, resid_out, out, nullptr, rstd, resid_in, branch, weight, nullptr, N, C,
                                  eps);
}

template <class Dev, class F>
void residual_layernorm_forward(const Dev& dev, F* resid_out, F* out, Stat<F>* mean, Stat<F>* rstd,
                                const F* resid_in, const F* branch, const F* weight, const F* bias, int N,
                                int C, float eps) {
  cuda::NvtxRange range("residual+layernorm fwd");
  STRATA_CHECK(resid_out && out && mean && rstd && resid_in && branch && weight && bias,
               "residual_layernorm_forward: null pointer");
  STRATA_CHECK(N > 0 && C > 0 && eps >= 0.0f, "residual_layernorm_forward: N=", N, " C=", C, " eps=", eps);
  cuda::norm_forward<true, true>(dev, resid_out, out, mean, rstd, resid_in, branch, weight, bias, N, C, eps);
}

template void rmsnorm_forward<Cuda, bf16>(const Cuda&, bf16*, float*, const bf16*, const bf16*, int, int,
                                          float);
template void rmsnorm_backward<Cuda, bf16>(const Cuda&, bf16*, bf16*, const bf16*, const bf16*, const bf16*,
                                           const float*, int, int);
template void layernorm_forward<Cuda, bf16>(const Cuda&, bf16*, float*, float*, const bf16*, const bf16*,
                                            const bf16*, int, int, float);
template void layernorm_backward<Cuda, bf16>(const Cuda&, bf16*, bf16*, bf16*, const bf16*, const bf16*,
                                             const bf16*, const float*, const float*, int, int);
template void residual_rmsnorm_forward<Cuda, bf16>(const Cuda&, bf16*, bf16*, float*, const bf16*,
                                                   const bf16*, const bf16*, int, int, float);
template void residual_layernorm_forward<Cuda, bf16>(const Cuda&, bf16*, bf16*, float*, float*, const bf16*,
                                                     const bf16*, const bf16*, const bf16*, int, int, float);

}  // namespace strata::ops
