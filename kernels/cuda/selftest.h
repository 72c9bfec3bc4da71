// kernels/cuda/selftest.h: launchers for the self-checks of the primitives in common.cuh (see selftest.cu).
// All pointers are device pointers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace strata::cuda {

// d_out (16,8) = a (16,16) @ b (16,8) + c (16,8), a and b rounded to bf16 when loaded into MMA fragments.
void mma_layout_selftest(float* d_out, const float* a, const float* b, const float* c, cudaStream_t stream);
// x (blocks*threads): block_sums (blocks) = sum of each block's x; warp_maxes (blocks*threads/32) = each warp's
// max; survivors (blocks) = 1 + 2 + ... + live, summed after a barrier that only the first `live` threads reach.
void reductions_selftest(float* block_sums, float* warp_maxes, int* survivors, const float* x, int blocks,
                         int threads, int live, cudaStream_t stream);

// m (16,16) bf16 row-major: out (32 lanes x 4 registers) = what ldmatrix_x4 (trans or not) returns when lanes
// 8i..8i+7 point at the rows of 8x8 block i in the order top-left, bottom-left, top-right, bottom-right; the data
// reach shared memory by cp_async_16. out[128 + 2 lane + i] (32 x 2) = what ldmatrix_x2 returns from the same
// addresses.
void ldmatrix_selftest(uint32_t* out, const __nv_bfloat16* m, bool trans, cudaStream_t stream);

}  // namespace strata::cuda
