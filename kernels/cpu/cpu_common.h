// kernels/cpu/cpu_common.h: private helpers of the CPU ops (kernels/cpu/*.cpp only; not part of the op API).
//
// - gemm<F>: row-major cblas_sgemm / cblas_dgemm. OpenBLAS is the OpenMP build (libopenblas-openmp-dev): it
//   shares the OpenMP thread pool with our `omp parallel` loops (no oversubscription when the two alternate)
//   and runs single-threaded when called inside a parallel region (attention calls it per (b, head)).
// - exp_of / softmax_exp / sigmoid_of / tanh_of: for float a branch-free polynomial exp that vectorises under
//   `omp simd` (glibc's expf only vectorises under -ffast-math) and never returns denormals; for double the
//   libm functions (the finite-difference tests run in double and want full accuracy).
// - kMinParallelWork / kMinParallelFlops: below them a loop runs on the calling thread (an OpenMP fork/join
//   costs microseconds on an idle machine, a scheduler time slice on a loaded one).
// - STRATA_SIMD_CLONES: on the row kernels (loops with exp, norms, reductions), with gcc on x86-64, compiles
//   them three times (AVX-512 "x86-64-v4", AVX2 "x86-64-v3", baseline SSE2) and picks one at load time
//   (ifunc): the portable build runs the exp-heavy loops 2.5-5x faster than SSE2 would. CMake turns it off
//   for STRATA_NATIVE (-march=native), sanitizers and clang. Results may differ in the last bits between CPUs
//   (the vector width changes simd reduction orders; the clones may contract into FMA).
// - kColBlock: column block width of the column-wise reductions (norm weight/bias gradients, bias gradients,
//   embedding backward). A block is owned by one thread and summed over rows in row order, so those
//   reductions are deterministic and independent of the thread count.
#pragma once

#include <cblas.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "engine/check.h"

#if defined(STRATA_CPU_CLONES)
#define STRATA_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define STRATA_SIMD_CLONES
#endif

namespace strata::ops::cpu_detail {

inline constexpr int64_t kMinParallelWork = int64_t{1} << 15;   // elements; ~10 us of streaming work
inline constexpr int64_t kMinParallelFlops = int64_t{1} << 20;  // multiply-adds; ~50 us in small GEMMs
inline constexpr int kColBlock = 64;                            // 64 doubles of accumulator on the stack

// Multiply-adds of the causal attention products of B*NH heads (a bound; causal blocks skip up to half): the
// attention ops' parallel threshold.
inline int64_t attention_work(int B, int T, int NH, int HS) { return int64_t{B} * NH * T * T * HS * 2; }
// The shape preconditions every attention op checks.
inline void check_attention_shapes(const char* op, int B, int T, int NH, int KVH, int HS) {
  STRATA_CHECK(B > 0 && T > 0 && NH > 0 && KVH > 0 && HS > 0, op, ": B=", B, " T=", T, " NH=", NH,
               " KVH=", KVH, " HS=", HS);
  STRATA_CHECK(NH % KVH == 0, op, ": NH=", NH, " is not a multiple of KVH=", KVH);
}

// C (M,N) = alpha * op(A) @ op(B) + beta * C, all row-major.
template <class F>
inline void gemm(bool trans_a, bool trans_b, int M, int N, int K, F alpha, const F* A, int lda, const F* B,
                 int ldb, F beta, F* C, int ldc) {
  const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
  if constexpr (std::is_same_v<F, float>) {
    cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  } else {
    static_assert(std::is_same_v<F, double>);
    cblas_dgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  }
}

// e^x for float: Cephes' expf (range reduction x = n ln2 + r, degree-6 polynomial), max relative error ~2e-7.
// Below -87.3 (where expf turns denormal) it returns exactly 0; above 80 it saturates at e^80 ~ 5.5e34, so
// 1 / (1 + e^x) in sigmoid and tanh stays a normal float: denormal operands cost ~100 cycles each on x86.
// NaN propagates (selected at the end, so the float-to-int conversion never sees it). Rounding uses the
// 1.5*2^23 trick, exact in the default rounding mode; the whole function is branch-free and vectorises.
inline float exp_approx(float x_in) {
  constexpr float kLo = -87.33654f, kHi = 80.0f;
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23
  float x = x_in > kLo ? x_in : kLo;     // NaN -> kLo
  x = x < kHi ? x : kHi;
  const float n = (x * kLog2e + kRound) - kRound;
  const float r = x - n * kLn2Hi - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) * (int32_t{1} << 23);
  const float y = x_in < kLo ? 0.0f : e * std::bit_cast<float>(bits);
  return x_in == x_in ? y : x_in;
}

template <class F>
inline F exp_of(F x) {
  if constexpr (std::is_same_v<F, float>) {
    return exp_approx(x);
  } else {
    return std::exp(x);
  }
}

// e^d for a softmax term d = x - max <= 0. For float, exactly 0 below kSoftmaxCut: e^-60 ~ 1e-26 is invisible
// next to the max term (1) in float, and the cut keeps probabilities times a gradient scale >= 1e-7 out of
// the denormal range (see exp_approx). Double needs no cut.
inline constexpr float kSoftmaxCut = -60.0f;
template <class F>
inline F softmax_exp(F d) {
  if constexpr (std::is_same_v<F, float>) {
    return d < kSoftmaxCut ? 0.0f : exp_approx(d);
  } else {
    return std::exp(d);
  }
}

// 1 / (1 + e^-x); saturates to 1 and ~2e-35 for large |x| (see exp_approx).
template <class F>
inline F sigmoid_of(F x) {
  return F(1) / (F(1) + exp_of<F>(-x));
}

// tanh(x) = 2 sigmoid(2x) - 1 for float (absolute error ~1e-7, fine where 1 + tanh is used); libm for double.
template <class F>
inline F tanh_of(F x) {
  if constexpr (std::is_same_v<F, float>) {
    return 2.0f * sigmoid_of<float>(2.0f * x) - 1.0f;
  } else {
    return std::tanh(x);
  }
}

}  // namespace strata::ops::cpu_detail
