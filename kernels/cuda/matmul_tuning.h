// kernels/cuda/matmul_tuning.h: choosing among cuBLASLt's algorithms (kernels/cuda/matmul.cu).
//
// By default matmul.cu runs the heuristic's first algorithm for each GEMM shape, cached for the process: the
// same algorithm on every run, so steps are bitwise reproducible on a given card and library. Two additions:
//  - matmul_algorithm_times (bench/kernel_bench.cu): the heuristic's first candidates for one product, each
//    timed, to measure what a choice among them would gain;
//  - autotuning, opt-in (STRATA_MATMUL_AUTOTUNE=<cache file> in the environment, or set_matmul_autotune): the
//    first time a process meets a GEMM shape it times the heuristic's first 8 candidates on scratch outputs
//    and runs the fastest; the choice is appended to the cache file, one line per (card, cuBLASLt version,
//    shape), and read back by later processes, which then run the same algorithms without timing. Runs that
//    share a filled cache stay bitwise reproducible; the run that fills it, or two runs filling it at once,
//    may choose differently from a run with another cache (timing noise), within fp32 accumulation's
//    rounding.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <string>
#include <vector>

namespace strata::cuda {

// The three products of matmul.cu, with the operands matmul_algorithm_times takes (as in ops::matmul_forward
// / matmul_backward): kForward out (N,OC) = a (N,IC) @ b (OC,IC)^T; kDinp out (N,IC) = a (N,OC) @ b (OC,IC);
// kDweight out (OC,IC) += a (N,OC)^T @ b (N,IC).
enum class MatmulProduct { kForward, kDinp, kDweight };

// The median time in ms (reps launches after 3 warm-ups, default stream) of each of the heuristic's first
// `count` (<= 16) algorithms for the product (fewer when it offers fewer), in the heuristic's order: element
// 0 is what matmul.cu runs without autotuning. out is overwritten (accumulated into, for kDweight).
std::vector<double> matmul_algorithm_times(MatmulProduct product, __nv_bfloat16* out, const __nv_bfloat16* a,
                                           const __nv_bfloat16* b, int N, int IC, int OC, int count,
                                           int reps);

// Turns autotuning on with this cache file (read now, if it exists; appended to as shapes are tuned), or off
// with an empty path, replacing what the environment said. Forgets every cached plan, so later GEMMs are
// planned again. A cache line that does not parse is a strata::Error naming the file and the line.
void set_matmul_autotune(const std::string& cache_path);

// How many variant-2 matmul_backward / matmul_backward_dgelu calls of this process (the bias gradient in the
// dweight product's BGRADB epilogue) computed it by the default's GEMV instead, because cuBLASLt offered no
// BGRADB algorithm for the shape: kernel_bench labels its rows by it.
int64_t matmul_bias_grad_fallbacks();

}  // namespace strata::cuda
