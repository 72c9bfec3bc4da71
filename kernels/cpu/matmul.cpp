// kernels/cpu/matmul.cpp: the linear map, CPU (OpenBLAS sgemm / dgemm).
//
// forward:  out (N,OC) = inp (N,IC) @ weight (OC,IC)^T + bias (OC, or null)             out `=`
// backward: dinp (N,IC) = dout (N,OC) @ weight (OC,IC)       (skipped when dinp is null)   dinp `=`
//           dweight (OC,IC) += dout^T @ inp                                                dweight `+=`
//           dbias (OC) += sum_n dout[n,:]                    (when dbias is non-null)      dbias `+=`
//
// The products run multi-threaded inside OpenBLAS (its OpenMP build shares our thread pool). With a bias the
// output rows are first filled with it and the product is added with beta = 1, saving a pass over out.
// dbias is a column-wise reduction in double (column blocks, rows in order): deterministic for any thread
// count. The BLAS products are deterministic run to run at a fixed thread count.
#include <algorithm>

#include "engine/check.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/ops.h"

namespace strata::ops {

using cpu_detail::gemm;
using cpu_detail::kColBlock;
using cpu_detail::kMinParallelWork;

template <class Dev, class F>
void matmul_forward(const Dev&, F* out, const F* inp, const F* weight, const F* bias, int N, int IC, int OC) {
  STRATA_CHECK(out && inp && weight, "matmul_forward: null pointer");
  STRATA_CHECK(N > 0 && IC > 0 && OC > 0, "matmul_forward: N=", N, " IC=", IC, " OC=", OC);
  F beta = F(0);
  if (bias) {
#pragma omp parallel for schedule(static) if (int64_t{N} * OC >= kMinParallelWork)
    for (int n = 0; n < N; ++n) std::copy(bias, bias + OC, out + int64_t{n} * OC);
    beta = F(1);
  }
  gemm<F>(false, true, N, OC, IC, F(1), inp, IC, weight, IC, beta, out, OC);
}

template <class Dev, class F>
void matmul_backward(const Dev&, F* dinp, F* dweight, F* dbias, const F* dout, const F* inp, const F* weight,
                     int N, int IC, int OC) {
  STRATA_CHECK(dweight && dout && inp && weight, "matmul_backward: null pointer");
  STRATA_CHECK(N > 0 && IC > 0 && OC > 0, "matmul_backward: N=", N, " IC=", IC, " OC=", OC);
  if (dinp) gemm<F>(false, false, N, IC, OC, F(1), dout, OC, weight, IC, F(0), dinp, IC);
  gemm<F>(true, false, OC, IC, N, F(1), dout, OC, inp, IC, F(1), dweight, IC);
  if (dbias) {
    const int nblocks = (OC + kColBlock - 1) / kColBlock;
#pragma omp parallel for schedule(static) if (int64_t{N} * OC >= kMinParallelWork)
    for (int blk = 0; blk < nblocks; ++blk) {
      const int c0 = blk * kColBlock, w = std::min(OC - c0, kColBlock);
      double acc[kColBlock] = {};
      for (int n = 0; n < N; ++n) {
        const F* dy = dout + int64_t{n} * OC + c0;
#pragma omp simd
        for (int j = 0; j < w; ++j) acc[j] += static_cast<double>(dy[j]);
      }
      for (int j = 0; j < w; ++j) dbias[c0 + j] += static_cast<F>(acc[j]);
    }
  }
}

#define STRATA_INSTANTIATE(F)                                                                        \
  template void matmul_forward<Cpu, F>(const Cpu&, F*, const F*, const F*, const F*, int, int, int); \
  template void matmul_backward<Cpu, F>(const Cpu&, F*, F*, F*, const F*, const F*, const F*, int, int, int);
STRATA_INSTANTIATE(float)
STRATA_INSTANTIATE(double)
#undef STRATA_INSTANTIATE

}  // namespace strata::ops
