// tests/kernels/cuda/norms_test.cpp: the CUDA RMSNorm / LayerNorm ops and their residual fusions
// (kernels/cuda/norms.cu) against the fp32 CPU twins on the same bf16-rounded inputs.
//
// Shapes sweep C over the vector path (C % 8 == 0) and the scalar one (17, 100), N over 1, a few rows, and
// enough rows for several backward row blocks; one shape is also run on pointers offset by one element, so
// the scalar fallback of an otherwise aligned C is exercised. Outputs start poisoned (NaN). Backward: dinp
// and dweight/dbias start random and the op is called twice (they accumulate), and a second run from the same
// start is bitwise identical (no float atomics).
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda/workspace.h"
#include "kernels/ops.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/tolerances.h"

namespace strata::test {
namespace {

const ops::Cpu kCpu{};
constexpr float kEps = 1e-5f;

bool bitwise_equal(const std::vector<bf16>& a, const std::vector<bf16>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(bf16)) == 0;
}

std::vector<float> round_bf16(std::vector<float> v) {
  for (float& x : v) x = bf16_to_float(float_to_bf16(x));
  return v;
}

struct Case {
  int N, C;
  bool misalign;
  std::string name() const {
    return "N=" + std::to_string(N) + " C=" + std::to_string(C) + (misalign ? " misaligned" : "");
  }
};
// C: 8 (one vector), 17 and 100 (scalar path), 64, 768 (several vectors per lane), 6144 (the backward's row
// ring at 2 vectors per thread, past the default 48 KB of shared memory: the opt-in path), 8200 (wider than the
// ring takes: the streaming fallback kernel); N = 64 spans 2 partial-sum rows of 32, N = 37 an uneven split,
// N = 137 5 partial rows, N = 8300 (over 8192 rows) more than one step of the column reduction's loop.
const Case kCases[] = {{1, 8, false},    {3, 17, false}, {64, 64, false}, {5, 100, false},  {37, 768, false},
                       {2, 1000, false}, {9, 64, true},  {137, 8, false}, {2, 6144, false}, {2, 8200, false},
                       {8300, 8, false}};

ops::Cuda cuda_dev() {
  return ops::Cuda{};
}

TEST(CudaNorms, RmsnormForwardMatchesCpu) {
  STRATA_SKIP_WITHOUT_GPU();
  for (const Case& k : kCases) {
    SCOPED_TRACE(k.name());
    const size_t n = size_t(k.N) * k.C;
    const auto x = random_bf16_values(n, 1, -2.0f, 2.0f), w = random_bf16_values(size_t(k.C), 2, 0.5f, 1.5f);
    std::vector<float> ref(n), ref_rstd(size_t(k.N));
    ops::rmsnorm_forward(kCpu, ref.data(), ref_rstd.data(), x.data(), w.data(), k.N, k.C, kEps);

    OffsetBuffer<bf16> dx(to_bf16(x), k.misalign), dw(to_bf16(w), k.misalign), dout(n, k.misalign);
    DeviceBuffer<float> drstd(size_t(k.N));
    ops::rmsnorm_forward(cuda_dev(), dout.get(), drstd.get(), dx.get(), dw.get(), k.N, k.C, kEps);
    STRATA_EXPECT_CLOSE(to_float(dout.download()), ref, kTolBf16Elementwise, "rmsnorm out");
    STRATA_EXPECT_CLOSE(drstd.download(), ref_rstd, kTolFp32Stat, "rmsnorm rstd");
  }
}

TEST(CudaNorms, LayernormForwardMatchesCpu) {
  STRATA_SKIP_WITHOUT_GPU();
  for (const Case& k : kCases) {
    SCOPED_TRACE(k.name());
    const size_t n = size_t(k.N) * k.C;
    // A row offset far from zero: the two-pass variance must not cancel.
    const auto x = random_bf16_values(n, 3, 3.0f, 5.0f);
    const auto w = random_bf16_values(size_t(k.C), 4, 0.5f, 1.5f), b = random_bf16_values(size_t(k.C), 5);
    std::vector<float> ref(n), ref_mean(size_t(k.N)), ref_rstd(size_t(k.N));
    ops::layernorm_forward(kCpu, ref.data(), ref_mean.data(), ref_rstd.data(), x.data(), w.data(), b.data(),
                           k.N, k.C, kEps);

    OffsetBuffer<bf16> dx(to_bf16(x), k.misalign), dw(to_bf16(w), k.misalign), db(to_bf16(b), k.misalign);
    OffsetBuffer<bf16> dout(n, k.misalign);
    DeviceBuffer<float> dmean(size_t(k.N)), drstd(size_t(k.N));
    ops::layernorm_forward(cuda_dev(), dout.get(), dmean.get(), drstd.get(), dx.get(), dw.get(), db.get(),
                           k.N, k.C, kEps);
    STRATA_EXPECT_CLOSE(to_float(dout.download()), ref, kTolBf16Elementwise, "layernorm out");
    STRATA_EXPECT_CLOSE(dmean.download(), ref_mean, kTolFp32Stat, "layernorm mean");
    STRATA_EXPECT_CLOSE(drstd.download(), ref_rstd, kTolFp32Stat, "layernorm rstd");
  }
}

// The fused forms: resid_out is the bf16 sum the kernel stores, and the norm is of that stored stream, so the
// reference normalises the twin's sum rounded to bf16. Run out of place and in place (resid_out == resid_in).
TEST(CudaNorms, ResidualRmsnormForwardMatchesCpu) {
  STRATA_SKIP_WITHOUT_GPU();
  for (const Case& k : kCases)
    for (bool in_place : {false, true}) {
      SCOPED_TRACE(k.name() + (in_place ? " in place" : ""));
      const size_t n = size_t(k.N) * k.C;
      const auto a = random_bf16_values(n, 6), br = random_bf16_values(n, 7);
      const auto w = random_bf16_values(size_t(k.C), 8, 0.5f, 1.5f);
      std::vector<float> resid(n), ref(n), ref_rstd(size_t(k.N));
      ops::residual_forward(kCpu, resid.data(), a.data(), br.data(), int64_t(n));
      resid = round_bf16(resid);
      ops::rmsnorm_forward(kCpu, ref.data(), ref_rstd.data(), resid.data(), w.data(), k.N, k.C, kEps);

      OffsetBuffer<bf16> da(to_bf16(a), k.misalign), dbr(to_bf16(br), k.misalign), dw(to_bf16(w), k.misalign);
      OffsetBuffer<bf16> dres(n, k.misalign), dout(n, k.misalign);
      DeviceBuffer<float> drstd(size_t(k.N));
      bf16* res_out = in_place ? da.get() : dres.get();
      ops::residual_rmsnorm_forward(cuda_dev(), res_out, dout.get(), drstd.get(), da.get(), dbr.get(),
                                    dw.get(), k.N, k.C, kEps);
      STRATA_EXPECT_CLOSE(to_float((in_place ? da : dres).download()), resid, kTolBf16Elementwise,
                          "resid_out");
      STRATA_EXPECT_CLOSE(to_float(dout.download()), ref, kTolBf16Elementwise, "residual rmsnorm out");
      STRATA_EXPECT_CLOSE(drstd.download(), ref_rstd, kTolFp32Stat, "residual rmsnorm rstd");
    }
}

TEST(CudaNorms, ResidualLayernormForwardMatchesCpu) {
  STRATA_SKIP_WITHOUT_GPU();
  for (const Case& k : kCases)
    for (bool in_place : {false, true}) {
      SCOPED_TRACE(k.name() + (in_place ? " in place" : ""));
      const size_t n = size_t(k.N) * k.C;
      const auto a = random_bf16_values(n, 9, 1.0f, 3.0f), br = random_bf16_values(n, 10);
      const auto w = random_bf16_values(size_t(k.C), 11, 0.5f, 1.5f), b = random_bf16_values(size_t(k.C), 12);
      std::vector<float> resid(n), ref(n), ref_mean(size_t(k.N)), ref_rstd(size_t(k.N));
      ops::residual_forward(kCpu, resid.data(), a.data(), br.data(), int64_t(n));
      resid = round_bf16(resid);
      ops::layernorm_forward(kCpu, ref.data(), ref_mean.data(), ref_rstd.data(), resid.data(), w.data(),
                             b.data(), k.N, k.C, kEps);

      OffsetBuffer<bf16> da(to_bf16(a), k.misalign), dbr(to_bf16(br), k.misalign), dw(to_bf16(w), k.misalign);
      OffsetBuffer<bf16> dbias(to_bf16(b), k.misalign), dres(n, k.misalign), dout(n, k.misalign);
      DeviceBuffer<float> dmean(size_t(k.N)), drstd(size_t(k.N));
      bf16* res_out = in_place ? da.get() : dres.get();
      ops::residual_layernorm_forward(cuda_dev(), res_out, dout.get(), dmean.get(), drstd.get(), da.get(),
                                      dbr.get(), dw.get(), dbias.get(), k.N, k.C, kEps);
      STRATA_EXPECT_CLOSE(to_float((in_place ? da : dres).download()), resid, kTolBf16Elementwise,
                          "resid_out");
      STRATA_EXPECT_CLOSE(to_float(dout.download()), ref, kTolBf16Elementwise, "residual layernorm out");
      STRATA_EXPECT_CLOSE(dmean.download(), ref_mean, kTolFp32Stat, "residual layernorm mean");
      STRATA_EXPECT_CLOSE(drstd.download(), ref_rstd, kTolFp32Stat, "residual layernorm rstd");
    }
}

// Backward: the twin's statistics are uploaded as the saved ones, both sides accumulate twice into the same
// random start, and (for shapes with several row blocks) the CUDA op is run a second time from that start for
// bitwise determinism.
void check_backward(const Case& k, bool layer) {
  const size_t n = size_t(k.N) * k.C, c = size_t(k.C);
  const auto x = random_bf16_values(n, 21, layer ? 1.0f : -2.0f, layer ? 3.0f : 2.0f);
  const auto dy = random_bf16_values(n, 22), w = random_bf16_values(c, 23, 0.5f, 1.5f);
  const auto b = random_bf16_values(c, 24), dinp0 = random_bf16_values(n, 25);
  const auto dw0 = random_bf16_values(c, 26), db0 = random_bf16_values(c, 27);
  std::vector<float> out(n), mean(size_t(k.N)), rstd(size_t(k.N));
  if (layer)
    ops::layernorm_forward(kCpu, out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), k.N, k.C,
                           kEps);
  else
    ops::rmsnorm_forward(kCpu, out.data(), rstd.data(), x.data(), w.data(), k.N, k.C, kEps);
  auto ref_dinp = dinp0, ref_dw = dw0, ref_db = db0;
  for (int call = 0; call < 2; ++call) {
    if (layer)
      ops::layernorm_backward(kCpu, ref_dinp.data(), ref_dw.data(), ref_db.data(), dy.data(), x.data(),
                              w.data(), mean.data(), rstd.data(), k.N, k.C);
    else
      ops::rmsnorm_backward(kCpu, ref_dinp.data(), ref_dw.data(), dy.data(), x.data(), w.data(), rstd.data(),
                            k.N, k.C);
  }

  OffsetBuffer<bf16> dx(to_bf16(x), k.misalign), ddy(to_bf16(dy), k.misalign), dw(to_bf16(w), k.misalign);
  DeviceBuffer<float> dmean(mean), drstd(rstd);
  DeviceBuffer<unsigned char> ws(cuda::norm_backward_workspace_bytes(k.N, k.C));
  ops::Cuda dev;
  dev.workspace = ws.get(), dev.workspace_bytes = ws.size();
  struct State {
    std::vector<bf16> dinp, dw, db;
  };
  // `calls` calls from the start; the state after the first call goes to *first, after the last to *last.
  auto run = [&](int calls, State* first, State* last) {
    OffsetBuffer<bf16> ddinp(to_bf16(dinp0), k.misalign), ddw(to_bf16(dw0), k.misalign), ddb(to_bf16(db0), k.misalign);
    for (int call = 0; call < calls; ++call) {
      ws.poison();  // the partials must be written before they are read, on every call
      if (layer)
        ops::layernorm_backward(dev, ddinp.get(), ddw.get(), ddb.get(), ddy.get(), dx.get(), dw.get(),
                                dmean.get(), drstd.get(), k.N, k.C);
      else
        ops::rmsnorm_backward(dev, ddinp.get(), ddw.get(), ddy.get(), dx.get(), dw.get(), drstd.get(), k.N,
                              k.C);
      State* dst = call == 0 ? first : call == calls - 1 ? last : nullptr;
      if (dst) *dst = {ddinp.download(), ddw.download(), ddb.download()};
    }
  };
  State one, two, again;
  run(2, &one, &two);
  STRATA_EXPECT_CLOSE(to_float(two.dinp), ref_dinp, kTolBf16Reduction, "dinp (two calls)");
  STRATA_EXPECT_CLOSE(to_float(two.dw), ref_dw, kTolBf16Reduction, "dweight (two calls)");
  if (layer) {
    STRATA_EXPECT_CLOSE(to_float(two.db), ref_db, kTolBf16Reduction, "dbias (two calls)");
  } else {
    EXPECT_TRUE(bitwise_equal(two.db, to_bf16(db0))) << "rmsnorm touched dbias";
  }
  if (k.N <= 16) return;  // one row block: nothing whose order could vary (kept short under the emulation)
  run(1, &again, nullptr);
  EXPECT_TRUE(bitwise_equal(one.dinp, again.dinp)) << "dinp differs between two runs";
  EXPECT_TRUE(bitwise_equal(one.dw, again.dw)) << "dweight differs between two runs";
  EXPECT_TRUE(bitwise_equal(one.db, again.db)) << "dbias differs between two runs";
}

TEST(CudaNorms, RmsnormBackwardMatchesCpuAccumulatesAndIsDeterministic) {
  STRATA_SKIP_WITHOUT_GPU();
  for (const Case& k : kCases) {
    SCOPED_TRACE(k.name());
    check_backward(k, false);
  }
}

TEST(CudaNorms, LayernormBackwardMatchesCpuAccumulatesAndIsDeterministic) {
  STRATA_SKIP_WITHOUT_GPU();
  for (const Case& k : kCases) {
    SCOPED_TRACE(k.name());
    check_backward(k, true);
  }
}

TEST(CudaNormsDeathTest, BackwardChecksItsWorkspace) {
  STRATA_SKIP_WITHOUT_GPU();
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const int N = 4, C = 16;
  DeviceBuffer<bf16> g(static_cast<size_t>(N * C)), w(static_cast<size_t>(C));
  DeviceBuffer<float> rstd(static_cast<size_t>(N));
  DeviceBuffer<unsigned char> ws(cuda::norm_backward_workspace_bytes(N, C) - 1);
  ops::Cuda dev;
  dev.workspace = ws.get(), dev.workspace_bytes = ws.size();
  EXPECT_DEATH(ops::rmsnorm_backward(dev, g.get(), w.get(), g.get(), g.get(), w.get(), rstd.get(), N, C),
               "norm_backward_workspace_bytes");
}

}  // namespace
}  // namespace strata::test
