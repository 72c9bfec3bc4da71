// kernels/cpu/residual.cpp: residual connection, CPU.
//
// forward:  out[i] = a[i] + b[i]                      out `=`; out may alias a (in-place add into the stream)
// backward: da[i] += dout[i];  db[i] += dout[i]       da, db `+=`; either may be null
// Shapes: out, a, b, dout, da, db (n).
#include "engine/check.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/ops.h"

namespace strata::ops {

using cpu_detail::kMinParallelWork;

template <class Dev, class F>
void residual_forward(const Dev&, F* out, const F* a, const F* b, int64_t n) {
  STRATA_CHECK(out && a && b, "residual_forward: null pointer");
  STRATA_CHECK(n > 0, "residual_forward: n=", n);
#pragma omp parallel for simd schedule(static) if (n >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

template <class Dev, class F>
void residual_backward(const Dev&, F* da, F* db, const F* dout, int64_t n) {
  STRATA_CHECK(dout, "residual_backward: null pointer");
  STRATA_CHECK(n > 0, "residual_backward: n=", n);
  if (da) {
#pragma omp parallel for simd schedule(static) if (n >= kMinParallelWork)
    for (int64_t i = 0; i < n; ++i) da[i] += dout[i];
  }
  if (db) {
#pragma omp parallel for simd schedule(static) if (n >= kMinParallelWork)
    for (int64_t i = 0; i < n; ++i) db[i] += dout[i];
  }
}

#define STRATA_INSTANTIATE(F)                                                          \
  template void residual_forward<Cpu, F>(const Cpu&, F*, const F*, const F*, int64_t); \
  template void residual_backward<Cpu, F>(const Cpu&, F*, F*, const F*, int64_t);
STRATA_INSTANTIATE(float)
STRATA_INSTANTIATE(double)
#undef STRATA_INSTANTIATE

}  // namespace strata::ops
