// kernels/cpu/residual_norm.cpp: the residual add fused with the next norm, CPU.
//
// residual_rmsnorm_forward:   resid_out = resid_in + branch;  out = rmsnorm(resid_out), rstd saved
// residual_layernorm_forward: resid_out = resid_in + branch;  out = layernorm(resid_out), mean and rstd saved
//                                                                        resid_out, out, mean, rstd `=`
// Shapes: resid_out, resid_in, branch, out (N,C); mean, rstd (N); weight, bias (C). resid_out may alias
// resid_in. The backward is the norm's own backward on resid_out (its `+=` into dinp is the residual stream's
// gradient).
//
// On the CPU the fusion buys nothing worth a second copy of the norm code: this is residual_forward followed
// by the norm op, so it is bitwise identical to that composition (the reference the CUDA fusion is tested
// against).
#include "engine/check.h"
#include "kernels/ops.h"

namespace strata::ops {

template <class Dev, class F>
void residual_rmsnorm_forward(const Dev& dev, F* resid_out, F* out, Stat<F>* rstd, const F* resid_in,
                              const F* branch, const F* weight, int N, int C, float eps) {
  STRATA_CHECK(resid_out && out && rstd && resid_in && branch && weight,
               "residual_rmsnorm_forward: null pointer");
  STRATA_CHECK(N > 0 && C > 0, "residual_rmsnorm_forward: N=", N, " C=", C);
  residual_forward(dev, resid_out, resid_in, branch, int64_t{N} * C);
  rmsnorm_forward(dev, out, rstd, resid_out, weight, N, C, eps);
}

template <class Dev, class F>
void residual_layernorm_forward(const Dev& dev, F* resid_out, F* out, Stat<F>* mean, Stat<F>* rstd,
                                const F* resid_in, const F* branch, const F* weight, const F* bias, int N,
                                int C, float eps) {
  STRATA_CHECK(resid_out && out && mean && rstd && resid_in && branch && weight && bias,
               "residual_layernorm_forward: null pointer");
  STRATA_CHECK(N > 0 && C > 0, "residual_layernorm_forward: N=", N, " C=", C);
  residual_forward(dev, resid_out, resid_in, branch, int64_t{N} * C);
  layernorm_forward(dev, out, mean, rstd, resid_out, weight, bias, N, C, eps);
}

#define STRATA_INSTANTIATE(F)                                                                                \
  template void residual_rmsnorm_forward<Cpu, F>(const Cpu&, F*, F*, Stat<F>*, const F*, const F*, const F*, \
                                                 int, int, float);                                           \
  template void residual_layernorm_forward<Cpu, F>(const Cpu&, F*, F*, Stat<F>*, Stat<F>*, const F*,         \
                                                   const F*, const F*, const F*, int, int, float);
STRATA_INSTANTIATE(float)
STRATA_INSTANTIATE(double)
#undef STRATA_INSTANTIATE

}  // namespace strata::ops
