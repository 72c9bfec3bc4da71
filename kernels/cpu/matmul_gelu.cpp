// kernels/cpu/matmul_gelu.cpp: the linear map with the GELU fused, CPU (the twins of cuBLASLt's GELU_AUX_BIAS
// and DGELU epilogues in kernels/cuda/matmul.cu).
//
// forward:  pre (N,OC) = inp (N,IC) @ weight (OC,IC)^T + bias (OC, or null)                 pre `=`
//           out (N,OC) = gelu(pre), tanh approximation (kernels/cpu/activations.cpp)        out `=`
// backward: dpre (N,IC) = gelu'(pre) * (dout (N,OC) @ weight)                                dpre `=`
//           dweight, dbias as matmul_backward                                                `+=`
//
// On the CPU nothing is saved by fusing: the product (OpenBLAS) and the activation run one after the other,
// and the results are those of matmul_forward followed by gelu_forward (matmul_backward followed by
// gelu_backward, applied in place to the product's fp32 result), bit for bit.
#include <cstdint>

#include "engine/check.h"
#include "kernels/ops.h"

namespace strata::ops {

template <class Dev, class F>
void matmul_gelu_forward(const Dev& dev, F* out, F* pre, const F* inp, const F* weight, const F* bias, int N,
                         int IC, int OC) {
  STRATA_CHECK(out && pre && inp && weight, "matmul_gelu_forward: null pointer");
  STRATA_CHECK(N > 0 && IC > 0 && OC > 0, "matmul_gelu_forward: N=", N, " IC=", IC, " OC=", OC);
  matmul_forward(dev, pre, inp, weight, bias, N, IC, OC);
  gelu_forward(dev, out, pre, int64_t{N} * OC);
}

template <class Dev, class F>
void matmul_backward_dgelu(const Dev& dev, F* dpre, F* dweight, F* dbias, const F* dout, const F* inp,
                           const F* weight, const F* pre, int N, int IC, int OC) {
  STRATA_CHECK(dpre && dweight && dout && inp && weight && pre, "matmul_backward_dgelu: null pointer");
  STRATA_CHECK(N > 0 && IC > 0 && OC > 0, "matmul_backward_dgelu: N=", N, " IC=", IC, " OC=", OC);
  matmul_backward(dev, dpre, dweight, dbias, dout, inp, weight, N, IC, OC);
  gelu_backward(dev, dpre, dpre, pre, int64_t{N} * IC);  // elementwise: in place is safe
}

#define STRATA_INSTANTIATE(F)                                                                           \
  template void matmul_gelu_forward<Cpu, F>(const Cpu&, F*, F*, const F*, const F*, const F*, int, int, \
                                            int);                                                       \
  template void matmul_backward_dgelu<Cpu, F>(const Cpu&, F*, F*, F*, const F*, const F*, const F*,     \
                                              const F*, int, int, int);
STRATA_INSTANTIATE(float)
STRATA_INSTANTIATE(double)
#undef STRATA_INSTANTIATE

}  // namespace strata::ops
