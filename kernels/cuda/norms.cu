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
// Forward: one warp per row, kFwdWarps = 4 rows per block (128 threads: a fine-grained tail). Lanes stride
// over the row in 16-byte vectors of 8 bf16 when C % 8 == 0 and every pointer is 16-byte aligned, else
// element by element. Rows of C <= 2048 on the vector path are held in registers (kFwdRegVecs = 8 vectors per
// lane): every load of the row (both inputs of the fused add) is issued before the first use, 256 B per lane
// in flight, and the later passes read the registers (ptxas: 78-90 registers, 5-6 blocks = 640-768 threads
// per SM, ~160-200 KB of loads in flight per SM). Wider or scalar rows stream: the statistics pass reads the
// row from DRAM and the later passes re-read it from L1/L2. DRAM traffic per element: the plain norms read 2
// B and write 2 B; the fused forms read 4 B (resid_in, branch) and write 4 B (resid_out, out). Napkin: N =
// 32768, C = 2048 fused: 537 MB, ~127 us at the H200's measured 4.2 TB/s copy rate.
// Measured (H200, bench/KERNELS.md run 2): residual+rmsnorm fwd at C = 2048 91%, residual+layernorm 91%, both
// ~92% at C = 768. Prediction (written before): residual+rmsnorm fwd at C = 2048 from 78% to ~85-90% of copy
// bandwidth (at C = 2048 the streaming form's L1 re-read missed: 16 blocks x 4 rows x 4 KB > L1; the register
// form reads the row once with 8x the loads in flight); the other forwards at C <= 2048 about as before or
// better (C = 768 was 90%: its rows already stayed in L1).
//
// Backward, deterministic (no float atomics), two kernels:
//   1. row blocks: P = ceil(N / U) blocks, U = max(32, ceil(N / 1024)) rows each (a contiguous run; P and U
//      depend on N only, never on the device). The whole block works on one row at a time (threads = C/8
//      vectors rounded up to a warp; 2 vectors per thread above 512 vectors); each thread owns the same
//      columns on every row, so its fp32 column sums of dout * xhat (and dout) live in registers. The rows
//      stream through a 4-stage shared-memory ring filled by cp.async (dout, x and dinp of one row per
//      stage): 3 rows ahead are in flight without holding registers (C = 2048: 256 threads x 3 x 48 B, 4
//      blocks per SM (64 registers, 48 KB of ring each): ~147 KB in flight per SM; C = 768: 10 blocks of 96
//      threads, ~138 KB). Per row: one pass over the thread's vectors forms the row sums (one block
//      reduction, a fixed order) and adds to the column sums; a second forms dinp from the same registers
//      and ring (the row is read from DRAM once). At the end each block writes its column sums to workspace
//      row `block` (fp32 P x C; dbias's P x C after it). Rows off the vector path or wider than C = 8192 take
//      the former form (norm_backward_rows_smem_kernel: column sums in shared memory, the second pass
//      re-reading dout and x from L1).
//   2. column reduce: 32 columns x 32 row-lanes per block; each lane sums every 32nd partial row in order
//      (8 loads in flight per tensor), then one lane sums the 32 in order and adds into dweight/dbias
//      (bf16 +=). Same order on every run and every device.
//   DRAM traffic per element: dout 2 B + x 2 B + dinp 4 B = 8 B; the partials add 2 x 4 B x P x C per
//   accumulated tensor, P/N of the row traffic (at most 1/32; 3% per tensor at N = 32768, 1.6% at 65536).
//   Workspace: norm_backward_workspace_bytes(N, C) (kernels/cuda/workspace.h).
// Measured (H200, bench/KERNELS.md run 2): rmsnorm bwd 82% / 81%, layernorm bwd 72% / 74% (C = 2048 / 768).
// Prediction (written before), % of copy bandwidth, bench byte counts: rmsnorm bwd ~82-86% at
// N=32768 C=2048 (was 77%) and ~80-85% at N=65536 C=768 (was 59%); layernorm bwd ~80-84% and ~78-83% (was
// 55%, 55%). Reasons: the former kernel 1 had 32 B per thread in flight before each row's barriers and one
// row at a time (24-64 KB per SM), and re-read the row from L1; its column reduce was 8 lanes summing up to
// 128 partials each one dependent load at a time on only C/32 blocks (latency-bound, several us, twice for
// LayerNorm: the likely cause of layernorm's 55%). The grid: P = 1024 blocks at both bench shapes fill 4
// blocks x 132 SMs 1.94 times (C = 2048) or fit at once (C = 768, ~7.8 of 10 per SM).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/nvtx.h"
#include "kernels/cuda/workspace.h"
#include "kernels/ops.h"

namespace strata::cuda {
namespace {

constexpr int kFwdWarps = 4;    // rows (warps) per forward block
constexpr int kFwdRegVecs = 8;  // forward rows up to 8 vectors per lane (C <= 2048) are held in registers
constexpr int kBwdMaxThreads = 512;   // threads per backward row block at most (register form)
constexpr int kBwdStages = 4;         // rows per backward block in the cp.async ring (3 in flight)
constexpr int kBwdSmemThreads = 256;  // threads per backward row block of the shared-memory form
constexpr int kBwdMinRows = 32;  // rows per backward block at least: partial traffic <= 1/32 of the rows'
constexpr int kBwdMaxPartials = 1024;       // row blocks at most
constexpr int kReduceCols = kWarpSize;      // column-reduce block: 32 columns (coalesced) x
constexpr int kReduceLanes = 32;            // 32 partial-row lanes,
constexpr int kReduceUnroll = 8;            // each with 8 loads in flight per tensor
constexpr size_t kDefaultSmem = 48 * 1024;  // dynamic shared memory without the opt-in attribute
constexpr size_t kRowsStaticSmem = 2 * kWarpSize * sizeof(float);  // the smem row kernel's reduction scratch

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
// K > 0 (W = 8, C <= 256 K): the row stays in registers, K 16-byte vectors per lane, and every load of the
// row is issued before the first use; K = 0 streams the row and re-reads it from L1/L2 in the later passes.
template <int W, int K, bool kLayer, bool kResidual>
__global__ void __launch_bounds__(kFwdWarps* kWarpSize)
    norm_forward_kernel(bf16* resid_out, bf16* out, float* mean, float* rstd, const bf16* inp,
                        const bf16* branch, const bf16* weight, const bf16* bias, int N, int C, float eps) {
  static_assert(K == 0 || W == 8, "the register-held row is made of 16-byte vectors");
  const int lane = threadIdx.x % kWarpSize;
  const int row = blockIdx.x * kFwdWarps + threadIdx.x / kWarpSize;
  if (row >= N) return;  // the whole warp
  const int CV = C / W;
  const int64_t base = int64_t{row} * C;
  const bf16* x = (kResidual ? resid_out : inp) + base;  // the row being normalised (after the add, if any)
  float m = 0.0f, s = 0.0f;

  if constexpr (K > 0) {
    // Pass 1 (DRAM, all loads in flight at once): the add, and sum or sum of squares. Loading every vector
    // before the first store is what resid_out aliasing resid_in allows: each element is read before it is
    // written, by the same thread.
    Vec16<bf16> xr[K];
    if constexpr (kResidual) {
      Vec16<bf16> br[K];
      for (int j = 0; j < K; ++j) {
        const int v = lane + j * kWarpSize;
        if (v < CV)
          xr[j] = Vec16<bf16>::load(inp + base + v * W), br[j] = Vec16<bf16>::load(branch + base + v * W);
      }
      for (int j = 0; j < K; ++j) {
        const int v = lane + j * kWarpSize;
        if (v >= CV) break;
        for (int k = 0; k < W; ++k)
          xr[j].v[k] = from_float<bf16>(to_float(xr[j].v[k]) + to_float(br[j].v[k]));  // the stream as stored
        xr[j].store(resid_out + base + v * W);
      }
    } else {
      for (int j = 0; j < K; ++j) {
        const int v = lane + j * kWarpSize;
        if (v < CV) xr[j] = Vec16<bf16>::load(inp + base + v * W);
      }
    }
    for (int j = 0; j < K && lane + j * kWarpSize < CV; ++j)
      for (int k = 0; k < W; ++k) {
        const float f = to_float(xr[j].v[k]);
        s += kLayer ? f : f * f;
      }
    s = warp_sum(s);
    if constexpr (kLayer) {
      m = s / static_cast<float>(C);
      float ss = 0.0f;  // pass 2 (registers): centred sum of squares
      for (int j = 0; j < K && lane + j * kWarpSize < CV; ++j)
        for (int k = 0; k < W; ++k) {
          const float f = to_float(xr[j].v[k]);
          ss += (f - m) * (f - m);
        }
      s = warp_sum(ss);
    }
    const float r = 1.0f / sqrtf(s / static_cast<float>(C) + eps);
    // Last pass (registers; weight and bias from L1/L2): normalise, scale, shift, write.
    for (int j = 0; j < K; ++j) {
      const int v = lane + j * kWarpSize;
      if (v >= CV) break;
      float w[W], o[W];
      load_floats<W>(weight + v * W, w);
      for (int k = 0; k < W; ++k) o[k] = (to_float(xr[j].v[k]) - m) * r * w[k];
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
  } else {
    // Pass 1 (DRAM): the add, and sum (LayerNorm) or sum of squares (RMSNorm).
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
}

template <bool kLayer, bool kResidual>
void norm_forward(const ops::Cuda& dev, bf16* resid_out, bf16* out, float* mean, float* rstd, const bf16* inp,
                  const bf16* branch, const bf16* weight, const bf16* bias, int N, int C, float eps) {
  const bool vec = C % 8 == 0 && aligned16(out) && aligned16(inp) && aligned16(weight) &&
                   (!kLayer || aligned16(bias)) &&
                   (!kResidual || (aligned16(resid_out) && aligned16(branch)));
  const dim3 grid(static_cast<unsigned>(ceil_div(N, kFwdWarps))), block(kFwdWarps * kWarpSize);
  const auto stream = static_cast<cudaStream_t>(dev.stream);
  auto kernel = norm_forward_kernel<1, 0, kLayer, kResidual>;
  if (vec)
    kernel = C <= kFwdRegVecs * kWarpSize * 8 ? norm_forward_kernel<8, kFwdRegVecs, kLayer, kResidual>
                                              : norm_forward_kernel<8, 0, kLayer, kResidual>;
  launch(kernel, grid, block, 0, stream, resid_out, out, mean, rstd, inp, branch, weight, bias, N, C, eps);
}

// ---- backward
// ------------------------------------------------------------------------------------------------------
// Rows per backward block, the same for every block but the last.
int backward_rows_per_block(int N) {
  return std::max(kBwdMinRows, ceil_div(N, kBwdMaxPartials));
}
int backward_partials(int N) {
  return ceil_div(N, backward_rows_per_block(N));
}

// Kernel 1 (C % 8 == 0, aligned, C <= 8 * 2 * kBwdMaxThreads): dinp += ..., and this block's column sums of
// dout * xhat (and dout) into partial[blockIdx.x, :] (and partial[gridDim.x + blockIdx.x, :]). Thread t owns
// the 16-byte vectors t + j * blockDim.x (j < VPT) of every row, so its column sums stay in registers. The
// rows stream through a kBwdStages-deep ring of shared-memory stages filled by cp.async (dout, x and dinp of
// one row per stage): while a row is reduced, the next kBwdStages - 1 rows are in flight without holding
// registers. Each thread copies and reads back only its own vectors, so a stage needs no barrier of its own.
template <int VPT, bool kLayer>
__global__ void __launch_bounds__(kBwdMaxThreads, VPT == 1 ? 2 : 1)  // VPT = 1: at most 64 registers
    norm_backward_rows_kernel(bf16* dinp, float* partial, const bf16* dout, const bf16* x, const bf16* weight,
                              const float* mean, const float* rstd, int N, int C, int rows_per_block) {
  constexpr int W = 8;
  STRATA_DYNAMIC_SMEM(Vec16<bf16>, ring);  // [kBwdStages][3 (dout, x, dinp)][VPT * blockDim.x]
  __shared__ float scratch[2 * kWarpSize];
  const int CV = C / W, nt = static_cast<int>(blockDim.x), tid = static_cast<int>(threadIdx.x);
  const int span = VPT * nt;
  const int r0 = static_cast<int>(blockIdx.x) * rows_per_block;
  const int r1 = std::min(N, r0 + rows_per_block);
  const float inv_c = 1.0f / static_cast<float>(C);
  // Queues the copies of `row` (none past the block's rows) into stage s, as one cp.async group.
  auto fetch = [&](int row, int s) {
    if (row < r1)
      for (int j = 0; j < VPT; ++j) {
        const int v = tid + j * nt;
        if (v >= CV) break;
        const int64_t at = int64_t{row} * C + v * W;
        Vec16<bf16>* slot = ring + 3 * s * span + j * nt + tid;
        cp_async_16(slot, dout + at);
        cp_async_16(slot + span, x + at);
        cp_async_16(slot + 2 * span, dinp + at);
      }
    cp_async_commit();  // an empty group past the end keeps the count uniform
  };
  for (int s = 0; s < kBwdStages - 1; ++s) fetch(r0 + s, s);
  float w[VPT][W];
  for (int j = 0; j < VPT; ++j)
    if (tid + j * nt < CV) load_floats<W>(weight + (tid + j * nt) * W, w[j]);
  float acc_w[VPT][W] = {}, acc_b[VPT][W] = {};  // fp32 column sums of dout * xhat, dout (LayerNorm)
  float mean32 = 0.0f, rstd32 = 0.0f;    // lane l: the statistics of row r0 + 32 k + l, for the current k
  for (int row = r0; row < r1; ++row) {  // block-uniform: every thread reaches the block_sums
    const int s = (row - r0) % kBwdStages, k32 = (row - r0) % kWarpSize;
    if (k32 == 0 && row + static_cast<int>(threadIdx.x % kWarpSize) < r1) {  // 32 rows' statistics at once
      rstd32 = rstd[row + threadIdx.x % kWarpSize];
      if constexpr (kLayer) mean32 = mean[row + threadIdx.x % kWarpSize];
    }
    fetch(row + kBwdStages - 1, (row - r0 + kBwdStages - 1) % kBwdStages);  // the stage read last step
    cp_async_wait<kBwdStages - 1>();  // this thread's copies of `row` have landed
    const float m = kLayer ? __shfl_sync(kFullMask, mean32, k32) : 0.0f;
    const float r = __shfl_sync(kFullMask, rstd32, k32);
    float xhat[VPT][W], g[VPT][W], sums[2] = {0.0f, 0.0f};  // sum(g * xhat), sum(g)
    for (int j = 0; j < VPT; ++j) {
      if (tid + j * nt >= CV) break;
      const Vec16<bf16>* slot = ring + 3 * s * span + j * nt + tid;
      float dy[W], xv[W];
      load_floats<W>(slot[0].v, dy);
      load_floats<W>(slot[span].v, xv);
      for (int k = 0; k < W; ++k) {
        xhat[j][k] = (xv[k] - m) * r, g[j][k] = dy[k] * w[j][k];
        sums[1] += g[j][k];
        sums[0] += g[j][k] * xhat[j][k];
        acc_w[j][k] += dy[k] * xhat[j][k];
        if constexpr (kLayer) acc_b[j][k] += dy[k];
      }
    }
    if constexpr (kLayer) {
      block_sums(sums, scratch);
    } else {
      float one[1] = {sums[0]};
      block_sums(one, scratch);
      sums[0] = one[0];
    }
    const float sgx = sums[0] * inv_c, sg = kLayer ? sums[1] * inv_c : 0.0f;
    for (int j = 0; j < VPT; ++j) {
      const int v = tid + j * nt;
      if (v >= CV) break;
      float dx[W];
      load_floats<W>(ring[3 * s * span + 2 * span + j * nt + tid].v, dx);
      for (int k = 0; k < W; ++k) dx[k] += r * (g[j][k] - sg - xhat[j][k] * sgx);
      store_floats<W>(dinp + int64_t{row} * C + v * W, dx);
    }
  }
  cp_async_wait<0>();  // no copy outlives the block
  float* pw = partial + int64_t{blockIdx.x} * C;
  float* pb = partial + (int64_t{gridDim.x} + blockIdx.x) * C;
  for (int j = 0; j < VPT; ++j) {
    const int v = tid + j * nt;
    if (v >= CV) break;
    for (int k = 0; k < W; ++k) {
      pw[v * W + k] = acc_w[j][k];
      if constexpr (kLayer) pb[v * W + k] = acc_b[j][k];
    }
  }
}

// Kernel 1 for the rows the pipelined form does not take (off the vector path, or C > 8192): the same sums,
// the column sums in shared memory (C floats per accumulated tensor, stored [k][v]: element k of vector v at
// k * CV + v, so that a warp's accesses for one k fall in distinct banks); one row at a time, the second pass
// re-reading dout and x from L1.
template <int W, bool kLayer>
__global__ void norm_backward_rows_smem_kernel(bf16* dinp, float* partial, const bf16* dout, const bf16* x,
                                               const bf16* weight, const float* mean, const float* rstd,
                                               int N, int C, int rows_per_block) {
  STRATA_DYNAMIC_SMEM(float, acc_w);  // (W, CV) fp32 sums of dout * xhat, then (W, CV) of dout for LayerNorm
  __shared__ float scratch[kRowsStaticSmem / sizeof(float)];
  float* acc_b = acc_w + C;
  const int CV = C / W;
  for (int v = threadIdx.x; v < CV; v += blockDim.x)
    for (int k = 0; k < W; ++k) {
      acc_w[k * CV + v] = 0.0f;
      if constexpr (kLayer) acc_b[k * CV + v] = 0.0f;
    }
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

// Kernel 2: dweight[c] += sum_p partial[p, c] (and dbias[c] += sum_p partial[P + p, c]), in a fixed order:
// lane ty sums the partial rows ty, ty + 32, ... in order (kReduceUnroll loads in flight per tensor), then
// thread ty = 0 sums the 32 lanes in order.
__global__ void __launch_bounds__(kReduceCols* kReduceLanes)
    norm_backward_columns_kernel(bf16* dweight, bf16* dbias, const float* partial, int P, int C) {
  __shared__ float part[2][kReduceLanes][kReduceCols];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int c = static_cast<int>(blockIdx.x) * kReduceCols + tx;
  float sw = 0.0f, sb = 0.0f;
  if (c < C) {
    for (int p0 = ty; p0 < P; p0 += kReduceLanes * kReduceUnroll) {
      float a[kReduceUnroll], b[kReduceUnroll];
      for (int u = 0; u < kReduceUnroll; ++u) {
        const int p = p0 + u * kReduceLanes;
        a[u] = p < P ? partial[int64_t{p} * C + c] : 0.0f;
        b[u] = p < P && dbias ? partial[(int64_t{P} + p) * C + c] : 0.0f;
      }
      for (int u = 0; u < kReduceUnroll && p0 + u * kReduceLanes < P; ++u) sw += a[u], sb += b[u];
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

// Lets `kernel` launch with `dynamic` bytes of dynamic shared memory (plus `fixed` static bytes) beyond the
// default 48 KB.
void allow_smem(const void* kernel, size_t dynamic, size_t fixed, int C) {
  if (dynamic + fixed <= kDefaultSmem) return;
  int device = 0, optin = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  STRATA_CHECK(dynamic + fixed <= static_cast<size_t>(optin), "norm backward: C=", C, " needs ",
               dynamic + fixed, " bytes of shared memory, the device has ", optin);
  CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dynamic)));
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
  const int rows_per_block = backward_rows_per_block(N), P = backward_partials(N);
  const dim3 grid(static_cast<unsigned>(P));
  const bool vec = C % 8 == 0 && aligned16(dinp) && aligned16(dout) && aligned16(x) && aligned16(weight);
  const int CV = vec ? C / 8 : C;
  // Pipelined form: one thread per vpt vectors of the row (vpt = 1, or 2 for wide rows), rounded up to warps.
  if (vec && CV <= 2 * kBwdMaxThreads) {
    const int vpt = CV <= kBwdMaxThreads ? 1 : 2;
    const int threads = ceil_div(ceil_div(CV, vpt), kWarpSize) * kWarpSize;
    const size_t smem = size_t{kBwdStages} * 3 * static_cast<size_t>(vpt * threads) * 16;
    auto kernel = vpt == 1 ? norm_backward_rows_kernel<1, kLayer> : norm_backward_rows_kernel<2, kLayer>;
    allow_smem(reinterpret_cast<const void*>(kernel), smem, 2 * kWarpSize * sizeof(float), C);
    launch(kernel, grid, dim3(static_cast<unsigned>(threads)), smem, stream, dinp, partial, dout, x, weight,
           mean, rstd, N, C, rows_per_block);
  } else {
    const int threads = std::min(ceil_div(CV, kWarpSize) * kWarpSize, kBwdSmemThreads);
    const size_t smem = static_cast<size_t>(C) * sizeof(float) * (kLayer ? 2 : 1);
    auto kernel = vec ? norm_backward_rows_smem_kernel<8, kLayer> : norm_backward_rows_smem_kernel<1, kLayer>;
    allow_smem(reinterpret_cast<const void*>(kernel), smem, kRowsStaticSmem, C);
    launch(kernel, grid, dim3(static_cast<unsigned>(threads)), smem, stream, dinp, partial, dout, x, weight,
           mean, rstd, N, C, rows_per_block);
  }
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
  cuda::NvtxRange range("rmsnorm fwd", dev.stream);
  STRATA_CHECK(out && rstd && inp && weight, "rmsnorm_forward: null pointer");
  STRATA_CHECK(N > 0 && C > 0 && eps >= 0.0f, "rmsnorm_forward: N=", N, " C=", C, " eps=", eps);
  cuda::norm_forward<false, false>(dev, nullptr, out, nullptr, rstd, inp, nullptr, weight, nullptr, N, C,
                                   eps);
}

template <class Dev, class F>
void rmsnorm_backward(const Dev& dev, F* dinp, F* dweight, const F* dout, const F* inp, const F* weight,
                      const Stat<F>* rstd, int N, int C) {
  cuda::NvtxRange range("rmsnorm bwd", dev.stream);
  STRATA_CHECK(dinp && dweight && dout && inp && weight && rstd, "rmsnorm_backward: null pointer");
  STRATA_CHECK(N > 0 && C > 0, "rmsnorm_backward: N=", N, " C=", C);
  cuda::norm_backward<false>(dev, dinp, dweight, nullptr, dout, inp, weight, nullptr, rstd, N, C);
}

template <class Dev, class F>
void layernorm_forward(const Dev& dev, F* out, Stat<F>* mean, Stat<F>* rstd, const F* inp, const F* weight,
                       const F* bias, int N, int C, float eps) {
  cuda::NvtxRange range("layernorm fwd", dev.stream);
  STRATA_CHECK(out && mean && rstd && inp && weight && bias, "layernorm_forward: null pointer");
  STRATA_CHECK(N > 0 && C > 0 && eps >= 0.0f, "layernorm_forward: N=", N, " C=", C, " eps=", eps);
  cuda::norm_forward<true, false>(dev, nullptr, out, mean, rstd, inp, nullptr, weight, bias, N, C, eps);
}

template <class Dev, class F>
void layernorm_backward(const Dev& dev, F* dinp, F* dweight, F* dbias, const F* dout, const F* inp,
                        const F* weight, const Stat<F>* mean, const Stat<F>* rstd, int N, int C) {
  cuda::NvtxRange range("layernorm bwd", dev.stream);
  STRATA_CHECK(dinp && dweight && dbias && dout && inp && weight && mean && rstd,
               "layernorm_backward: null pointer");
  STRATA_CHECK(N > 0 && C > 0, "layernorm_backward: N=", N, " C=", C);
  cuda::norm_backward<true>(dev, dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
}

template <class Dev, class F>
void residual_rmsnorm_forward(const Dev& dev, F* resid_out, F* out, Stat<F>* rstd, const F* resid_in,
                              const F* branch, const F* weight, int N, int C, float eps) {
  cuda::NvtxRange range("residual+rmsnorm fwd", dev.stream);
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
  cuda::NvtxRange range("residual+layernorm fwd", dev.stream);
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
