// kernels/cuda/selftest.cu: kernels that check the primitives of common.cuh themselves: the m16n8k16 fragment
// layout documented there, warp shuffles and reductions, and barriers with threads that returned early. Their
// test (tests/kernels/cuda/selftest_test.cpp) runs on the emulation here and on the GPU in the device check, so
// a disagreement between the emulation and the hardware (the fragment layout above all) shows up in one place.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/selftest.h"

namespace strata::cuda {
namespace {

// One warp: loads A (16x16) and B (16x8, given row-major as B[k][n]) into fragments by the documented layout,
// runs one MMA on D initialised to C, stores D (16x8).
__global__ void mma_layout_kernel(float* d_out, const float* a, const float* b, const float* c) {
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  uint32_t fa[4], fb[2];
  fa[0] = pack_bf16x2(a[g * 16 + 2 * t], a[g * 16 + 2 * t + 1]);
  fa[1] = pack_bf16x2(a[(g + 8) * 16 + 2 * t], a[(g + 8) * 16 + 2 * t + 1]);
  fa[2] = pack_bf16x2(a[g * 16 + 2 * t + 8], a[g * 16 + 2 * t + 9]);
  fa[3] = pack_bf16x2(a[(g + 8) * 16 + 2 * t + 8], a[(g + 8) * 16 + 2 * t + 9]);
  fb[0] = pack_bf16x2(b[(2 * t) * 8 + g], b[(2 * t + 1) * 8 + g]);
  fb[1] = pack_bf16x2(b[(2 * t + 8) * 8 + g], b[(2 * t + 9) * 8 + g]);
  float d[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t], c[(g + 8) * 8 + 2 * t + 1]};
  mma_bf16_16816(d, fa, fb);
  d_out[g * 8 + 2 * t] = d[0];
  d_out[g * 8 + 2 * t + 1] = d[1];
  d_out[(g + 8) * 8 + 2 * t] = d[2];
  d_out[(g + 8) * 8 + 2 * t + 1] = d[3];
}

// Per block: the block sum (block_sum), each warp's max (warp_max) and, after threads with index >= live have
// returned, a shared-memory exchange across a barrier among the survivors.
__global__ void reductions_kernel(float* block_sums, float* warp_maxes, int* survivors, const float* x, int live) {
  __shared__ float scratch[32];
  __shared__ int seen[1024];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const float v = x[i];
  const float s = block_sum(v, scratch);
  if (threadIdx.x == 0) block_sums[blockIdx.x] = s;
  const float m = warp_max(v);
  if (threadIdx.x % kWarpSize == 0) warp_maxes[i / kWarpSize] = m;
  if (static_cast<int>(threadIdx.x) >= live) return;
  seen[threadIdx.x] = static_cast<int>(threadIdx.x) + 1;
  __syncthreads();  // only the `live` survivors arrive; the returned threads must not block them
  if (threadIdx.x == 0) {
    int total = 0;
    for (int k = 0; k < live; ++k) total += seen[k];
    survivors[blockIdx.x] = total;
  }
}

// One warp: copies a 16x16 bf16 matrix (row-major, 16 elements per row) into shared memory with cp.async, then
// loads it with ldmatrix_x4 (plain or transposed) as four 8x8 matrices (top-left, bottom-left, top-right,
// bottom-right: the A fragment order of mma_bf16_16816) and writes each lane's four registers to out (32 x 4), then
// the two registers of ldmatrix_x2 from the same addresses (out[128 + 2 lane + i]).
__global__ void ldmatrix_kernel(uint32_t* out, const bf16* m, int trans) {
  alignas(16) __shared__ bf16 tile[16 * 16];
  const int lane = threadIdx.x;
  cp_async_16(tile + lane * 8, m + lane * 8);  // 32 lanes x 8 elements = the whole tile
  cp_async_commit();
  cp_async_wait<0>();
  __syncwarp();
  const int mat = lane / 8, row = lane % 8;
  const int r0 = row + (mat % 2) * 8, c0 = (mat / 2) * 8;
  uint32_t r[4];
  ldmatrix_x4(r, tile + r0 * 16 + c0, trans != 0);
  for (int i = 0; i < 4; ++i) out[lane * 4 + i] = r[i];
  // The x2 form from the same row addresses must give the first two of them.
  uint32_t r2[2];
  ldmatrix_x2(r2, tile + r0 * 16 + c0, trans != 0);
  out[128 + lane * 2] = r2[0];
  out[128 + lane * 2 + 1] = r2[1];
}

}  // namespace

void ldmatrix_selftest(uint32_t* out, const bf16* m, bool trans, cudaStream_t stream) {
  launch(&ldmatrix_kernel, dim3(1), dim3(kWarpSize), 0, stream, out, m, trans ? 1 : 0);
}

void mma_layout_selftest(float* d_out, const float* a, const float* b, const float* c, cudaStream_t stream) {
  launch(&mma_layout_kernel, dim3(1), dim3(kWarpSize), 0, stream, d_out, a, b, c);
}

void reductions_selftest(float* block_sums, float* warp_maxes, int* survivors, const float* x, int blocks,
                         int threads, int live, cudaStream_t stream) {
  STRATA_CHECK(threads % kWarpSize == 0 && threads <= 1024 && live >= 1 && live <= threads);
  launch(&reductions_kernel, dim3(blocks), dim3(threads), 0, stream, block_sums, warp_maxes, survivors, x, live);
}

}  // namespace strata::cuda
