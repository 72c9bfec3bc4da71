// tests/kernels/cuda/activations_test.cpp: the CUDA SwiGLU, GELU and residual ops
// (kernels/cuda/activations.cu) against the fp32 CPU twins on the same bf16-rounded inputs.
//
// Sizes sweep the vector path (multiples of 8) and the scalar one (F = 17, 100; n = 1, 7, 17, 1003: a short
// last group), plus pointers offset by one element (the scalar fallback for aligned sizes). Outputs start
// poisoned (NaN). The residual add runs in place too; its backward accumulates into random gradients, is
// called twice, and leaves a null gradient alone.
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/tolerances.h"

namespace strata::test {
namespace {

const ops::Cpu kCpu{};

struct RowCase {
  int N, F;
  bool misalign;
};
const RowCase kRowCases[] = {{1, 8, false},   {3, 17, false},  {4, 64, false},
                             {2, 100, false}, {3, 768, false}, {2, 64, true}};
struct FlatCase {
  int64_t n;
  bool misalign;
};
const FlatCase kFlatCases[] = {{1, false},    {7, false},    {8, false}, {17, false},
                               {1003, false}, {4096, false}, {64, true}, {1003, true}};

std::string row_name(const RowCase& k) {
  return "N=" + std::to_string(k.N) + " F=" + std::to_string(k.F) + (k.misalign ? " misaligned" : "");
}
std::string flat_name(const FlatCase& k) {
  return "n=" + std::to_string(k.n) + (k.misalign ? " misaligned" : "");
}

TEST(CudaActivations, SwigluMatchesCpu) {
  STRATA_SKIP_WITHOUT_GPU();
  for (const RowCase& k : kRowCases) {
    SCOPED_TRACE(row_name(k));
    const size_t nf = size_t(k.N) * k.F;
    const auto inp = random_bf16_values(2 * nf, 1, -4.0f, 4.0f), dy = random_bf16_values(nf, 2);
    std::vector<float> ref(nf), ref_dinp(2 * nf);
    ops::swiglu_forward(kCpu, ref.data(), inp.data(), k.N, k.F);
    ops::swiglu_backward(kCpu, ref_dinp.data(), dy.data(), inp.data(), k.N, k.F);

    OffsetBuffer<bf16> dinp_in(to_bf16(inp), k.misalign), ddy(to_bf16(dy), k.misalign);
    OffsetBuffer<bf16> dout(nf, k.misalign), ddinp(2 * nf, k.misalign);
    ops::swiglu_forward(ops::Cuda{}, dout.get(), dinp_in.get(), k.N, k.F);
    ops::swiglu_backward(ops::Cuda{}, ddinp.get(), ddy.get(), dinp_in.get(), k.N, k.F);
    STRATA_EXPECT_CLOSE(to_float(dout.download()), ref, kTolBf16Elementwise, "swiglu out");
    STRATA_EXPECT_CLOSE(to_float(ddinp.download()), ref_dinp, kTolBf16Elementwise, "swiglu dinp");
  }
}

TEST(CudaActivations, GeluMatchesCpu) {
  STRATA_SKIP_WITHOUT_GPU();
  for (const FlatCase& k : kFlatCases) {
    SCOPED_TRACE(flat_name(k));
    const size_t n = size_t(k.n);
    const auto x = random_bf16_values(n, 3, -4.0f, 4.0f), dy = random_bf16_values(n, 4);
    std::vector<float> ref(n), ref_dinp(n);
    ops::gelu_forward(kCpu, ref.data(), x.data(), k.n);
    ops::gelu_backward(kCpu, ref_dinp.data(), dy.data(), x.data(), k.n);

    OffsetBuffer<bf16> dx(to_bf16(x), k.misalign), ddy(to_bf16(dy), k.misalign), dout(n, k.misalign),
        ddinp(n, k.misalign);
    ops::gelu_forward(ops::Cuda{}, dout.get(), dx.get(), k.n);
    ops::gelu_backward(ops::Cuda{}, ddinp.get(), ddy.get(), dx.get(), k.n);
    STRATA_EXPECT_CLOSE(to_float(dout.download()), ref, kTolBf16Elementwise, "gelu out");
    STRATA_EXPECT_CLOSE(to_float(ddinp.download()), ref_dinp, kTolBf16Elementwise, "gelu dinp");
  }
}

TEST(CudaActivations, ResidualForwardMatchesCpuAlsoInPlace) {
  STRATA_SKIP_WITHOUT_GPU();
  for (const FlatCase& k : kFlatCases) {
    SCOPED_TRACE(flat_name(k));
    const size_t n = size_t(k.n);
    const auto a = random_bf16_values(n, 5), b = random_bf16_values(n, 6);
    std::vector<float> ref(n);
    ops::residual_forward(kCpu, ref.data(), a.data(), b.data(), k.n);

    OffsetBuffer<bf16> da(to_bf16(a), k.misalign), db(to_bf16(b), k.misalign), dout(n, k.misalign);
    ops::residual_forward(ops::Cuda{}, dout.get(), da.get(), db.get(), k.n);
    STRATA_EXPECT_CLOSE(to_float(dout.download()), ref, kTolBf16Elementwise, "residual out");
    ops::residual_forward(ops::Cuda{}, da.get(), da.get(), db.get(), k.n);  // out aliases a
    STRATA_EXPECT_CLOSE(to_float(da.download()), ref, kTolBf16Elementwise, "residual out (in place)");
  }
}

TEST(CudaActivations, ResidualBackwardAccumulatesTwiceAndSkipsNull) {
  STRATA_SKIP_WITHOUT_GPU();
  for (const FlatCase& k : kFlatCases) {
    SCOPED_TRACE(flat_name(k));
    const size_t n = size_t(k.n);
    const auto dy = random_bf16_values(n, 7), da0 = random_bf16_values(n, 8), db0 = random_bf16_values(n, 9);
    auto ref_da = da0, ref_db = db0;
    ops::residual_backward(kCpu, ref_da.data(), ref_db.data(), dy.data(), k.n);
    ops::residual_backward(kCpu, ref_da.data(), static_cast<float*>(nullptr), dy.data(), k.n);

    OffsetBuffer<bf16> ddy(to_bf16(dy), k.misalign), gda(to_bf16(da0), k.misalign), gdb(to_bf16(db0), k.misalign);
    ops::residual_backward(ops::Cuda{}, gda.get(), gdb.get(), ddy.get(), k.n);
    ops::residual_backward(ops::Cuda{}, gda.get(), static_cast<bf16*>(nullptr), ddy.get(), k.n);
    STRATA_EXPECT_CLOSE(to_float(gda.download()), ref_da, kTolBf16Reduction, "da (two calls)");
    STRATA_EXPECT_CLOSE(to_float(gdb.download()), ref_db, kTolBf16Elementwise, "db (one call, then null)");
  }
}

}  // namespace
}  // namespace strata::test
