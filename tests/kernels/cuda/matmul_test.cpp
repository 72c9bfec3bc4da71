// tests/kernels/cuda/matmul_test.cpp: matmul_forward, matmul_gelu_forward, matmul_backward and
// matmul_backward_dgelu for ops::Cuda, bf16 (kernels/cuda/matmul.cu, cuBLASLt) against the fp32 CPU twins
// (kernels/cpu/matmul.cpp, matmul_gelu.cpp) on the same bf16-representable inputs. GPU only (label gpu):
// cuBLASLt cannot run in the emulation.
//
// Shapes: N = 1, 17, 100 rows; IC, OC among 8, 24, 768 (row strides of 16 bytes and more), and one shape with
// odd IC and OC (row strides of 26 and 14 bytes: misaligned rows, which the plan's alignment preferences must
// handle). Outputs are poisoned (NaN) first, so an unwritten element fails; the `+=` gradients start from
// random values and are accumulated twice; the same call twice gives the same bits.
//
// Tolerance: each output element is one fp32 sum of K products (K = IC, OC or N, up to 768) rounded once to
// bf16 (the accumulating gradients: twice), against the twin's fp32 sum: kTolBf16Reduction relative to
// max |ref|. cuBLASLt's GELU epilogue is compared with the twin's tanh GELU; an erf GELU would differ by at
// most ~2e-4 absolute here, below that tolerance, so this test does not tell the two apart.
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "kernels/cuda/matmul_tuning.h"
#include "kernels/ops.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/test_util.h"
#include "tests/tolerances.h"

namespace strata::test {
namespace {

const ops::Cuda kDev{};
constexpr ops::Cpu kCpu;
bf16* const kNoDinp = nullptr;
bf16* const kNoBias = nullptr;

struct Shape {
  int N, IC, OC;
};
const Shape kShapes[] = {{1, 8, 8},    {17, 24, 8},     {100, 768, 24}, {17, 8, 768},
                         {1, 768, 24}, {100, 768, 768}, {5, 13, 7}};

std::string name(const Shape& s) {
  return "N=" + std::to_string(s.N) + " IC=" + std::to_string(s.IC) + " OC=" + std::to_string(s.OC);
}

template <class T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

TEST(CudaMatmul, ForwardWithAndWithoutBiasMatchesTwin) {
  STRATA_SKIP_WITHOUT_GPU();
  for (const Shape& s : kShapes) {
    const size_t n_out = size_t(s.N) * s.OC;
    const auto inp = random_bf16_values(size_t(s.N) * s.IC, 1);
    const auto w = random_bf16_values(size_t(s.OC) * s.IC, 2);
    const auto bias = random_bf16_values(size_t(s.OC), 3);
    DeviceBuffer<bf16> d_inp(to_bf16(inp)), d_w(to_bf16(w)), d_bias(to_bf16(bias));
    for (const bool with_bias : {true, false}) {
      std::vector<float> ref(n_out);
      ops::matmul_forward(kCpu, ref.data(), inp.data(), w.data(), with_bias ? bias.data() : nullptr, s.N,
                          s.IC, s.OC);
      DeviceBuffer<bf16> out(n_out);
      ops::matmul_forward(kDev, out.get(), d_inp.get(), d_w.get(), with_bias ? d_bias.get() : nullptr, s.N,
                          s.IC, s.OC);
      const auto got = out.download();
      STRATA_EXPECT_CLOSE(as_double(got), ref, kTolBf16Reduction,
                          name(s) + (with_bias ? " with" : " without") + " bias");
      out.poison();
      ops::matmul_forward(kDev, out.get(), d_inp.get(), d_w.get(), with_bias ? d_bias.get() : nullptr, s.N,
                          s.IC, s.OC);
      EXPECT_TRUE(bitwise_equal(out.download(), got)) << name(s) << ": a second call differs";
    }
  }
}

TEST(CudaMatmul, GeluForwardMatchesTwin) {
  STRATA_SKIP_WITHOUT_GPU();
  for (const Shape& s : kShapes) {
    if (s.OC % 8 != 0) continue;  // the GELU aux output needs OC % 8 == 0 (checked by the op)
    const size_t n_out = size_t(s.N) * s.OC;
    // Inputs in [-1, 1) over IC terms: pre-activations of a few units, where GELU is far from linear.
    const auto inp = random_bf16_values(size_t(s.N) * s.IC, 4);
    const auto w = random_bf16_values(size_t(s.OC) * s.IC, 5, -2.0f / std::sqrt(float(s.IC)),
                                      2.0f / std::sqrt(float(s.IC)));
    const auto bias = random_bf16_values(size_t(s.OC), 6);
    DeviceBuffer<bf16> d_inp(to_bf16(inp)), d_w(to_bf16(w)), d_bias(to_bf16(bias));
    for (const bool with_bias : {true, false}) {
      std::vector<float> ref_out(n_out), ref_pre(n_out);
      ops::matmul_gelu_forward(kCpu, ref_out.data(), ref_pre.data(), inp.data(), w.data(),
                               with_bias ? bias.data() : nullptr, s.N, s.IC, s.OC);
      DeviceBuffer<bf16> out(n_out), pre(n_out);
      ops::matmul_gelu_forward(kDev, out.get(), pre.get(), d_inp.get(), d_w.get(),
                               with_bias ? d_bias.get() : nullptr, s.N, s.IC, s.OC);
      const std::string what = name(s) + (with_bias ? " with" : " without") + " bias";
      STRATA_EXPECT_CLOSE(as_double(out.download()), ref_out, kTolBf16Reduction, what + " out");
      STRATA_EXPECT_CLOSE(as_double(pre.download()), ref_pre, kTolBf16Reduction, what + " pre");
    }
  }
}

TEST(CudaMatmul, BackwardAccumulatesTwiceAndMatchesTwin) {
  STRATA_SKIP_WITHOUT_GPU();
  for (const Shape& s : kShapes) {
    const auto inp = random_bf16_values(size_t(s.N) * s.IC, 7);
    const auto w = random_bf16_values(size_t(s.OC) * s.IC, 8);
    const auto dout = random_bf16_values(size_t(s.N) * s.OC, 9);
    const auto dw0 = random_bf16_values(size_t(s.OC) * s.IC, 10);  // `+=` targets start non-zero
    const auto db0 = random_bf16_values(size_t(s.OC), 11);
    // The twin, twice: dinp `=`, dweight and dbias `+=`.
    std::vector<float> ref_dinp(size_t(s.N) * s.IC), ref_dw = dw0, ref_db = db0;
    for (int call = 0; call < 2; ++call)
      ops::matmul_backward(kCpu, ref_dinp.data(), ref_dw.data(), ref_db.data(), dout.data(), inp.data(),
                           w.data(), s.N, s.IC, s.OC);
    DeviceBuffer<bf16> d_inp(to_bf16(inp)), d_w(to_bf16(w)), d_dout(to_bf16(dout));
    DeviceBuffer<bf16> d_dw(to_bf16(dw0)), d_db(to_bf16(db0)), d_dinp(size_t(s.N) * s.IC);  // dinp poisoned
    ops::matmul_backward(kDev, d_dinp.get(), d_dw.get(), d_db.get(), d_dout.get(), d_inp.get(), d_w.get(),
                         s.N, s.IC, s.OC);
    // The second call without dinp (the first layer's input needs no gradient): dinp must stay as it is.
    const auto dinp_first = d_dinp.download();
    ops::matmul_backward(kDev, kNoDinp, d_dw.get(), d_db.get(), d_dout.get(), d_inp.get(), d_w.get(), s.N,
                         s.IC, s.OC);
    EXPECT_TRUE(bitwise_equal(d_dinp.download(), dinp_first)) << name(s) << ": dinp written with dinp null";
    STRATA_EXPECT_CLOSE(as_double(dinp_first), ref_dinp, kTolBf16Reduction, name(s) + " dinp");
    STRATA_EXPECT_CLOSE(as_double(d_dw.download()), ref_dw, kTolBf16Reduction, name(s) + " dweight (twice)");
    STRATA_EXPECT_CLOSE(as_double(d_db.download()), ref_db, kTolBf16Reduction, name(s) + " dbias (twice)");

    // Variant 2: the bias gradient in the dweight product's BGRADB epilogue (fp32 or bf16 sums, added into
    // dbias in fp32) where cuBLASLt has it, instead of the default's GEMV: the twin's tolerance. The
    // default's dweight product is the plain one, so a call without dbias gives the same dweight bits (the
    // GEMV writes nothing else).
    ops::Cuda bgradb = kDev;
    bgradb.variant = 2;
    DeviceBuffer<bf16> d_dw2(to_bf16(dw0)), d_db2(to_bf16(db0)), d_dw3(to_bf16(dw0));
    for (int call = 0; call < 2; ++call) {
      ops::matmul_backward(bgradb, kNoDinp, d_dw2.get(), d_db2.get(), d_dout.get(), d_inp.get(), d_w.get(),
                           s.N, s.IC, s.OC);
      ops::matmul_backward(kDev, kNoDinp, d_dw3.get(), kNoBias, d_dout.get(), d_inp.get(), d_w.get(), s.N,
                           s.IC, s.OC);
    }
    STRATA_EXPECT_CLOSE(as_double(d_dw2.download()), ref_dw, kTolBf16Reduction, name(s) + " BGRADB dweight");
    STRATA_EXPECT_CLOSE(as_double(d_db2.download()), ref_db, kTolBf16Reduction, name(s) + " BGRADB dbias");
    EXPECT_TRUE(bitwise_equal(d_dw3.download(), d_dw.download())) << name(s) << ": dweight depends on dbias";
  }
}

// The GELU derivative fused into the dinp product (DGELU epilogue, variant 0) and unfused (variant 1: the
// product, then gelu_backward in place) against the twin (matmul_backward, then gelu_backward, in fp32): dpre
// `=` (poisoned first), dweight and dbias `+=` twice from random starts. pre spans [-3, 3), where GELU's
// derivative goes from ~-0.13 through 0.5 to ~1.13, so a missing or wrong derivative (identity, the forward
// GELU, pre read with the wrong stride) is far outside the tolerance. dweight and dbias must be bit for bit
// those of matmul_backward (the same GEMMs).
TEST(CudaMatmul, BackwardWithGeluDerivativeMatchesTwin) {
  STRATA_SKIP_WITHOUT_GPU();
  for (const Shape& s : kShapes) {
    if (s.IC % 8 != 0) continue;  // the GELU aux input needs IC % 8 == 0 (checked by the op)
    const size_t n_in = size_t(s.N) * s.IC;
    const auto inp = random_bf16_values(n_in, 12);
    const auto w = random_bf16_values(size_t(s.OC) * s.IC, 13);
    const auto dout = random_bf16_values(size_t(s.N) * s.OC, 14);
    const auto pre = random_bf16_values(n_in, 15, -3.0f, 3.0f);
    const auto dw0 = random_bf16_values(size_t(s.OC) * s.IC, 16);
    const auto db0 = random_bf16_values(size_t(s.OC), 17);
    std::vector<float> ref_dpre(n_in), ref_dw = dw0, ref_db = db0;
    for (int call = 0; call < 2; ++call)
      ops::matmul_backward_dgelu(kCpu, ref_dpre.data(), ref_dw.data(), ref_db.data(), dout.data(), inp.data(),
                                 w.data(), pre.data(), s.N, s.IC, s.OC);
    DeviceBuffer<bf16> d_inp(to_bf16(inp)), d_w(to_bf16(w)), d_dout(to_bf16(dout)), d_pre(to_bf16(pre));
    DeviceBuffer<bf16> d_dw2(to_bf16(dw0)), d_db2(to_bf16(db0)), d_dinp(n_in);
    for (int call = 0; call < 2; ++call)
      ops::matmul_backward(kDev, d_dinp.get(), d_dw2.get(), d_db2.get(), d_dout.get(), d_inp.get(), d_w.get(),
                           s.N, s.IC, s.OC);
    for (const int variant : {0, 1}) {  // 0: DGELU in the epilogue; 1: the product, then gelu_backward
      const std::string what = name(s) + " variant " + std::to_string(variant);
      ops::Cuda dev = kDev;
      dev.variant = variant;
      DeviceBuffer<bf16> d_dw(to_bf16(dw0)), d_db(to_bf16(db0)), d_dpre(n_in);  // dpre poisoned
      for (int call = 0; call < 2; ++call)
        ops::matmul_backward_dgelu(dev, d_dpre.get(), d_dw.get(), d_db.get(), d_dout.get(), d_inp.get(),
                                   d_w.get(), d_pre.get(), s.N, s.IC, s.OC);
      STRATA_EXPECT_CLOSE(as_double(d_dpre.download()), ref_dpre, kTolBf16Reduction, what + " dpre");
      STRATA_EXPECT_CLOSE(as_double(d_dw.download()), ref_dw, kTolBf16Reduction, what + " dweight (twice)");
      STRATA_EXPECT_CLOSE(as_double(d_db.download()), ref_db, kTolBf16Reduction, what + " dbias (twice)");
      EXPECT_TRUE(bitwise_equal(d_dw2.download(), d_dw.download())) << what << ": dweight differs";
      EXPECT_TRUE(bitwise_equal(d_db2.download(), d_db.download())) << what << ": dbias differs";
    }
  }
}

// Autotuning (kernels/cuda/matmul_tuning.h). With a fresh cache file, the first GEMM of each shape times the
// candidates and appends its choice: one line per shape (forward with bias; dinp, dweight and the bias GEMV),
// and the results match the twin as without tuning. Read back (set_matmul_autotune again forgets the plans),
// the same calls give the same bits and the file does not grow. A line that does not parse is a one-line
// error naming the file and the line. Off again, the heuristic's first algorithm.
TEST(CudaMatmul, AutotuneChoosesPersistsAndReusesAlgorithms) {
  STRATA_SKIP_WITHOUT_GPU();
  namespace fs = std::filesystem;
  const fs::path path =
      fs::temp_directory_path() / ("strata_autotune_" + std::to_string(::getpid()) + ".txt");
  fs::remove(path);
  const Shape s{100, 768, 768};
  const auto inp = random_bf16_values(size_t(s.N) * s.IC, 21),
             w = random_bf16_values(size_t(s.OC) * s.IC, 22);
  const auto bias = random_bf16_values(size_t(s.OC), 23), dout = random_bf16_values(size_t(s.N) * s.OC, 24);
  const auto dw0 = random_bf16_values(size_t(s.OC) * s.IC, 25), db0 = random_bf16_values(size_t(s.OC), 26);
  std::vector<float> ref_out(size_t(s.N) * s.OC), ref_dinp(size_t(s.N) * s.IC), ref_dw = dw0, ref_db = db0;
  ops::matmul_forward(kCpu, ref_out.data(), inp.data(), w.data(), bias.data(), s.N, s.IC, s.OC);
  ops::matmul_backward(kCpu, ref_dinp.data(), ref_dw.data(), ref_db.data(), dout.data(), inp.data(), w.data(),
                       s.N, s.IC, s.OC);
  DeviceBuffer<bf16> d_inp(to_bf16(inp)), d_w(to_bf16(w)), d_bias(to_bf16(bias)), d_dout(to_bf16(dout));
  struct Result {
    std::vector<bf16> out, dinp, dw, db;
  };
  auto run = [&] {
    DeviceBuffer<bf16> out(size_t(s.N) * s.OC), dinp(size_t(s.N) * s.IC), dw(to_bf16(dw0)), db(to_bf16(db0));
    ops::matmul_forward(kDev, out.get(), d_inp.get(), d_w.get(), d_bias.get(), s.N, s.IC, s.OC);
    ops::matmul_backward(kDev, dinp.get(), dw.get(), db.get(), d_dout.get(), d_inp.get(), d_w.get(), s.N,
                         s.IC, s.OC);
    return Result{out.download(), dinp.download(), dw.download(), db.download()};
  };
  auto lines = [&] {
    std::ifstream in(path);
    int n = 0;
    for (std::string line; std::getline(in, line);) n += !line.empty();
    return n;
  };
  cuda::set_matmul_autotune(path.string());
  const Result tuned = run();
  EXPECT_EQ(lines(), 4) << "one cache line per GEMM shape";
  STRATA_EXPECT_CLOSE(as_double(tuned.out), ref_out, kTolBf16Reduction, "tuned forward");
  STRATA_EXPECT_CLOSE(as_double(tuned.dinp), ref_dinp, kTolBf16Reduction, "tuned dinp");
  STRATA_EXPECT_CLOSE(as_double(tuned.dw), ref_dw, kTolBf16Reduction, "tuned dweight");
  STRATA_EXPECT_CLOSE(as_double(tuned.db), ref_db, kTolBf16Reduction, "tuned dbias");
  cuda::set_matmul_autotune(path.string());  // a new process, as far as the plans go
  const Result again = run();
  EXPECT_EQ(lines(), 4) << "shapes in the cache were timed again";
  EXPECT_TRUE(bitwise_equal(again.out, tuned.out) && bitwise_equal(again.dinp, tuned.dinp) &&
              bitwise_equal(again.dw, tuned.dw) && bitwise_equal(again.db, tuned.db))
      << "the cache's choices gave other bits";
  std::ofstream(path, std::ios::app) << "not a cache line\n";
  test::expect_one_line_error([&] { cuda::set_matmul_autotune(path.string()); }, {path.string(), "line 5"});
  cuda::set_matmul_autotune("");
  const Result plain = run();
  STRATA_EXPECT_CLOSE(as_double(plain.out), ref_out, kTolBf16Reduction, "untuned forward");
  fs::remove(path);
}

TEST(CudaMatmul, GeluRejectsLeadingDimensionsNotMultipleOf8) {
  STRATA_SKIP_WITHOUT_GPU();
  DeviceBuffer<bf16> x(64);
  EXPECT_DEATH(ops::matmul_gelu_forward(kDev, x.get(), x.get(), x.get(), x.get(), x.get(), 1, 8, 7),
               "not a multiple of 8");
  EXPECT_DEATH(ops::matmul_backward_dgelu(kDev, x.get(), x.get(), x.get(), x.get(), x.get(), x.get(), x.get(),
                                          1, 7, 8),
               "not a multiple of 8");
}

}  // namespace
}  // namespace strata::test
