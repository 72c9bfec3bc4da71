// kernels/cuda/matmul_sweep.h: for bench/kernel_bench.cu, the cuBLASLt algorithms the heuristic ranks for one of
// the linear map's products, each timed. kernels/cuda/matmul.cu runs the heuristic's first algorithm (cached per
// shape: bitwise-reproducible steps); this measures what a choice among its next ones would gain on a card.
#pragma once

#include <cuda_bf16.h>

#include <vector>

namespace strata::cuda {

// The three products of matmul.cu, with the operands this call takes (as in ops::matmul_forward /
// matmul_backward): kForward out (N,OC) = a (N,IC) @ b (OC,IC)^T; kDinp out (N,IC) = a (N,OC) @ b (OC,IC);
// kDweight out (OC,IC) += a (N,OC)^T @ b (N,IC).
enum class MatmulProduct { kForward, kDinp, kDweight };

// The median time in ms (reps launches after 3 warm-ups, default stream) of each of the heuristic's first
// `count` algorithms for the product (fewer when it offers fewer), in the heuristic's order: element 0 is what
// matmul.cu runs. out is overwritten (accumulated into, for kDweight).
std::vector<double> matmul_algorithm_times(MatmulProduct product, __nv_bfloat16* out, const __nv_bfloat16* a,
                                           const __nv_bfloat16* b, int N, int IC, int OC, int count, int reps);

}  // namespace strata::cuda
