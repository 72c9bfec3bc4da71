// tests/kernels/cuda/flash_attention_test.cpp: the CUDA flash attention (kernels/cuda/flash_attention.cu)
// against the CPU attention with the (T,T) matrix (kernels/cpu/attention.cpp) in double on the same bf16
// inputs.
//
// FlashAttention's rule (tests/tolerances.h): for out, dQ, dK and dV, the kernel's error against the double
// reference (max |x - ref| over max |ref|) is at most kAttnErrFactor times the error of a naive bf16
// attention (written below: scores, probabilities, outputs and gradients rounded to bf16 where a
// straightforward bf16 implementation stores them) plus kAttnErrFloor. lse is fp32 and compared directly
// (kTolFp32Stat). Both backward paths are checked on every shape: the deterministic one
// (ops::Cuda::deterministic, the default: dK/dV kernel + dQ kernel) and the atomic one (deterministic =
// false: dQ accumulated with fp32 atomics in the workspace, which starts poisoned, so the kernels must zero
// it themselves). Shapes: HS 64 and 128 (both template instantiations), GQA (NH=4, KVH=2), MHA (NH=KVH), MQA
// (KVH=1), T in {1, 17, 64, 100, 130} (one key, inside one 64-row tile, exactly one, tails of 36 and 2 rows);
// the GPU build runs the full cross product with B=2 plus two long sequences, the emulated build (one fiber
// per CUDA thread) a subset that still reaches every tiling case (see shapes()). Outputs and scratch are
// poisoned (DeviceBuffer), so an element left unwritten fails; delta (scratch with specified contents) is
// checked too. The deterministic backward is checked to be bitwise reproducible. The GPU build checks
// attention through cuDNN's SDPA graphs (ops::Cuda::cudnn_attention) the same way, on the same shapes: its
// deterministic backward (dQ direct) and its accumulating one (dQ through atomics), and the deterministic one
// for bitwise reproducibility.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <ostream>
#include <string>
#include <vector>

#include "kernels/cuda/workspace.h"
#if !defined(STRATA_CUDA_EMU) && defined(STRATA_HAVE_CUDNN_SDPA)
#include "kernels/cuda/cudnn_sdpa.h"
#endif
#include "kernels/ops.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/tolerances.h"

namespace strata::test {
namespace {

using ops::Cuda;

struct Shape {
  int B, T, NH, KVH, HS;
  int row() const { return (NH + 2 * KVH) * HS; }
  size_t qkv_size() const { return size_t(B) * T * row(); }
  size_t out_size() const { return size_t(B) * T * NH * HS; }
  size_t lse_size() const { return size_t(B) * NH * T; }
};

std::string shape_name(const Shape& s) {
  return cat("B", s.B, "_T", s.T, "_NH", s.NH, "_KVH", s.KVH, "_HS", s.HS);
}
void PrintTo(const Shape& s, std::ostream* os) { *os << shape_name(s); }  // gtest's name for a failing case

float round_bf16(float x) { return bf16_to_float(float_to_bf16(x)); }

// ---- references ------------------------------------------------------------------------------------------------

struct Result {
  std::vector<double> out, lse, dqkv;
};

// ops::attention_forward/backward in double, and lse by a direct loop.
Result reference(const Shape& s, const std::vector<float>& qkv_f, const std::vector<float>& dout_f) {
  const std::vector<double> qkv(qkv_f.begin(), qkv_f.end()), dout(dout_f.begin(), dout_f.end());
  const ops::Cpu cpu;
  Result r{std::vector<double>(s.out_size()), std::vector<double>(s.lse_size()), std::vector<double>(s.qkv_size())};
  std::vector<double> att(size_t(s.B) * s.NH * s.T * s.T), datt(att.size());
  ops::attention_forward(cpu, r.out.data(), att.data(), qkv.data(), s.B, s.T, s.NH, s.KVH, s.HS);
  ops::attention_backward(cpu, r.dqkv.data(), datt.data(), dout.data(), qkv.data(), att.data(), s.B, s.T, s.NH,
                          s.KVH, s.HS);
  const double scale = 1.0 / std::sqrt(double(s.HS));
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.NH; ++h) {
      const int g = h / (s.NH / s.KVH);
      for (int t = 0; t < s.T; ++t) {
        const double* q = qkv.data() + (size_t(b) * s.T + t) * s.row() + size_t(h) * s.HS;
        std::vector<double> sc(size_t(t) + 1);
        for (int u = 0; u <= t; ++u) {
          const double* k = qkv.data() + (size_t(b) * s.T + u) * s.row() + size_t(s.NH + g) * s.HS;
          double d = 0;
          for (int i = 0; i < s.HS; ++i) d += q[i] * k[i];
          sc[size_t(u)] = d * scale;
        }
        const double mx = *std::max_element(sc.begin(), sc.end());
        double sum = 0;
        for (double x : sc) sum += std::exp(x - mx);
        r.lse[(size_t(b) * s.NH + h) * s.T + t] = mx + std::log(sum);
      }
    }
  return r;
}

// A straightforward bf16 attention: fp32 dot products of bf16 values, every stored tensor rounded to bf16 (scores,
// probabilities, out; dP, dS, dQ, dK, dV), softmax and delta in fp32. Its error against the double reference is
// the yardstick of the tolerance rule.
Result naive_bf16(const Shape& s, const std::vector<float>& qkv, const std::vector<float>& dout) {
  const int R = s.row(), OC = s.NH * s.HS, T = s.T, HS = s.HS;
  const float scale = 1.0f / std::sqrt(float(HS));
  Result r{std::vector<double>(s.out_size()), {}, std::vector<double>(s.qkv_size())};
  std::vector<float> dkv(size_t(s.B) * T * 2 * s.KVH * HS, 0.0f);  // fp32 sums of dK, dV over the group
  std::vector<float> P(size_t(T) * T), dS(size_t(T) * T);
  auto at = [&](int b, int t, int head) { return (size_t(b) * T + t) * R + size_t(head) * HS; };
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.NH; ++h) {
      const int g = h / (s.NH / s.KVH);
      const int kh = s.NH + g, vh = s.NH + s.KVH + g;
      std::vector<float> out(size_t(T) * HS);
      for (int t = 0; t < T; ++t) {
        std::vector<float> sc(size_t(t) + 1);
        for (int u = 0; u <= t; ++u) {
          float d = 0;
          for (int i = 0; i < HS; ++i) d += qkv[at(b, t, h) + i] * qkv[at(b, u, kh) + i];
          sc[size_t(u)] = round_bf16(d * scale);
        }
        const float mx = *std::max_element(sc.begin(), sc.end());
        float sum = 0;
        for (float& x : sc) sum += (x = std::exp(x - mx));
        for (int u = 0; u < T; ++u) P[size_t(t) * T + u] = u <= t ? round_bf16(sc[size_t(u)] / sum) : 0.0f;
        for (int i = 0; i < HS; ++i) {
          float o = 0;
          for (int u = 0; u <= t; ++u) o += P[size_t(t) * T + u] * qkv[at(b, u, vh) + i];
          out[size_t(t) * HS + i] = round_bf16(o);
          r.out[(size_t(b) * T + t) * OC + size_t(h) * HS + i] = out[size_t(t) * HS + i];
        }
      }
      for (int t = 0; t < T; ++t) {
        const float* dy = dout.data() + (size_t(b) * T + t) * OC + size_t(h) * HS;
        float delta = 0;
        for (int i = 0; i < HS; ++i) delta += dy[i] * out[size_t(t) * HS + i];
        for (int u = 0; u <= t; ++u) {
          float dp = 0;
          for (int i = 0; i < HS; ++i) dp += dy[i] * qkv[at(b, u, vh) + i];
          dS[size_t(t) * T + u] = round_bf16(P[size_t(t) * T + u] * (round_bf16(dp) - delta));
        }
        for (int i = 0; i < HS; ++i) {
          float dq = 0;
          for (int u = 0; u <= t; ++u) dq += dS[size_t(t) * T + u] * qkv[at(b, u, kh) + i];
          r.dqkv[at(b, t, h) + i] = round_bf16(dq * scale);
        }
        for (int u = 0; u <= t; ++u) {
          float* dk = dkv.data() + ((size_t(b) * T + u) * 2 * s.KVH + g) * HS;
          float* dv = dkv.data() + ((size_t(b) * T + u) * 2 * s.KVH + s.KVH + g) * HS;
          for (int i = 0; i < HS; ++i) {
            dk[i] += dS[size_t(t) * T + u] * qkv[at(b, t, h) + i] * scale;
            dv[i] += P[size_t(t) * T + u] * dy[i];
          }
        }
      }
    }
  for (int b = 0; b < s.B; ++b)
    for (int t = 0; t < T; ++t)
      for (int j = 0; j < 2 * s.KVH * HS; ++j)
        r.dqkv[at(b, t, s.NH) + j] = round_bf16(dkv[(size_t(b) * T + t) * 2 * s.KVH * HS + j]);
  return r;
}

// ---- the kernel -----------------------------------------------------------------------------------------------

// The outputs of the forward and of the backward in each mode: [0] deterministic, [1] atomic dQ.
struct Kernel {
  std::vector<bf16> out;
  std::vector<float> lse;
  std::vector<bf16> dqkv[2];
  std::vector<float> delta[2];
};

// The forward, then the deterministic backward and (when with_atomic) the atomic one on the same forward
// outputs. cudnn: through cuDNN's SDPA graphs (ops::Cuda::cudnn_attention), whose backward in mode 1
// accumulates dQ with atomics; each call gets the workspace its plans ask for, poisoned.
Kernel run_kernel(const Shape& s, const std::vector<float>& qkv_f, const std::vector<float>& dout_f,
                  bool with_atomic, bool cudnn = false) {
  DeviceBuffer<bf16> qkv(to_bf16(qkv_f)), dout(to_bf16(dout_f)), out(s.out_size());
  DeviceBuffer<float> lse(s.lse_size());
  auto workspace_bytes = [&](bool deterministic) {
    if (cudnn) return cuda::cudnn_attention_workspace_bytes(s.B, s.T, s.NH, s.KVH, s.HS, deterministic);
    return deterministic ? size_t{0} : cuda::flash_attention_backward_workspace_bytes(s.B, s.T, s.NH, s.HS);
  };
  DeviceBuffer<unsigned char> fws(workspace_bytes(true));
  Cuda dev;
  dev.cudnn_attention = cudnn, dev.workspace = fws.get(), dev.workspace_bytes = fws.size();
  ops::flash_attention_forward(dev, out.get(), lse.get(), qkv.get(), s.B, s.T, s.NH, s.KVH, s.HS);
  Kernel k{out.download(), lse.download(), {}, {}};
  for (int mode = 0; mode < (with_atomic ? 2 : 1); ++mode) {
    DeviceBuffer<bf16> dqkv(s.qkv_size());
    DeviceBuffer<float> delta(s.lse_size());
    DeviceBuffer<unsigned char> ws(workspace_bytes(mode == 0));
    Cuda bwd;
    bwd.deterministic = mode == 0, bwd.cudnn_attention = cudnn, bwd.workspace = ws.get(),
    bwd.workspace_bytes = ws.size();
    ops::flash_attention_backward(bwd, dqkv.get(), delta.get(), dout.get(), out.get(), qkv.get(), lse.get(), s.B,
                                  s.T, s.NH, s.KVH, s.HS);
    k.dqkv[mode] = dqkv.download();
    k.delta[mode] = delta.download();
  }
  return k;
}

// Columns [col0, col0 + cols) of every row of a (rows, row_len) tensor.
template <class T>
std::vector<double> columns(const std::vector<T>& v, int row_len, int col0, int cols) {
  std::vector<double> out;
  out.reserve(v.size() / row_len * cols);
  for (size_t r = 0; r < v.size() / row_len; ++r)
    for (int c = 0; c < cols; ++c) out.push_back(static_cast<double>(v[r * row_len + col0 + c]));
  return out;
}
std::vector<double> widen(const std::vector<bf16>& v) { return as_double(v); }

// The rule for one tensor: error(kernel) <= kAttnErrFactor * error(naive bf16) + kAttnErrFloor.
void expect_within_rule(const char* what, const std::vector<double>& got, const std::vector<double>& naive,
                        const std::vector<double>& ref) {
  const Comparison k = compare(got, ref), n = compare(naive, ref);
  EXPECT_FALSE(k.has_nan) << what << ": NaN in the output (an element left unwritten?)";
  const double bound = kAttnErrFactor * n.rel() + kAttnErrFloor;
  EXPECT_LE(k.rel(), bound) << what << ": kernel error " << k.rel() << " (worst element " << k.worst << ", off by "
                            << k.max_abs_err << " of max |ref| " << k.max_abs_ref << "), naive bf16 error "
                            << n.rel();
}

// Forward, both backwards, delta: each against the double reference within the rule.
void expect_matches_reference(const Shape& s, bool cudnn) {
  const std::vector<float> qkv = random_bf16_values(s.qkv_size(), 1000 + s.T, -2.0f, 2.0f);
  const std::vector<float> dout = random_bf16_values(s.out_size(), 2000 + s.T);
  const Result ref = reference(s, qkv, dout);
  const Result naive = naive_bf16(s, qkv, dout);
  const Kernel got = run_kernel(s, qkv, dout, /*with_atomic=*/true, cudnn);

  expect_within_rule("out", widen(got.out), naive.out, ref.out);
  STRATA_EXPECT_CLOSE(got.lse, ref.lse, kTolFp32Stat, "lse");
  // delta is scratch, but its contents are specified: rowsum(dout * out) of the bf16 tensors, in fp32.
  std::vector<double> delta(s.lse_size());
  for (int b = 0; b < s.B; ++b)
    for (int t = 0; t < s.T; ++t)
      for (int h = 0; h < s.NH; ++h) {
        double d = 0;
        for (int i = 0; i < s.HS; ++i) {
          const size_t at = (size_t(b) * s.T + t) * s.NH * s.HS + size_t(h) * s.HS + i;
          d += double(dout[at]) * bf16_to_float(got.out[at]);
        }
        delta[(size_t(b) * s.NH + h) * s.T + t] = d;
      }
  const int R = s.row(), Q = s.NH * s.HS, K = s.KVH * s.HS;
  for (int mode = 0; mode < 2; ++mode) {
    SCOPED_TRACE(mode == 0 ? "deterministic backward" : "atomic-dQ backward (deterministic = false)");
    const std::vector<bf16>& dqkv = got.dqkv[mode];
    const auto dq = columns(dqkv, R, 0, Q), dk = columns(dqkv, R, Q, K), dv = columns(dqkv, R, Q + K, K);
    expect_within_rule("dV", dv, columns(naive.dqkv, R, Q + K, K), columns(ref.dqkv, R, Q + K, K));
    if (s.T > 1) {
      expect_within_rule("dQ", dq, columns(naive.dqkv, R, 0, Q), columns(ref.dqkv, R, 0, Q));
      expect_within_rule("dK", dk, columns(naive.dqkv, R, Q, K), columns(ref.dqkv, R, Q, K));
    } else {
      // One key: p = 1 and dS = dP - delta = 0 up to fp32 rounding, so dQ = dK = 0 (a relative error against a
      // zero reference would be vacuous): they must be negligible next to dV.
      const double dv_scale = compare(dv, columns(ref.dqkv, R, Q + K, K)).max_abs_ref;
      for (const auto* part : {&dq, &dk})
        for (double x : *part) ASSERT_LE(std::abs(x), kAttnErrFloor * dv_scale) << "dQ/dK for T=1";
    }
    STRATA_EXPECT_CLOSE(got.delta[mode], delta, kTolFp32Stat, "delta");
  }
}

class FlashAttentionTest : public ::testing::TestWithParam<Shape> {};

TEST_P(FlashAttentionTest, MatchesDoubleReferenceWithinBf16Rule) {
  STRATA_SKIP_WITHOUT_GPU();
  expect_matches_reference(GetParam(), false);
}

// T = 1 (one key), 17 (inside one tile), 64 (exactly one 64-row tile, two 32-row ones), 100 and 130 (tails of 36
// and 2 rows); GQA with groups of 2, MHA, MQA (a group of 4); both HS instantiations (HS 128 uses 32-row query
// tiles in the backward).
std::vector<Shape> shapes() {
  std::vector<Shape> v;
#if defined(STRATA_CUDA_EMU)
  // The emulation costs ~B*NH*T^2*HS fiber switches (each fragment load and mma is a warp-wide exchange); the
  // full cross product below with both backward paths would take minutes. Every T of the sweep for GQA (B=1, and
  // B=2 at one T for the batch offsets), MHA at a short T, MQA at two tiles (~30 s on an idle 2-core machine).
  for (int HS : {64, 128}) {
    for (int T : {1, 17, 64, 130}) v.push_back({1, T, 4, 2, HS});  // GQA, groups of 2
    v.push_back({2, 100, 4, 2, HS});                                 // GQA, two sequences
    v.push_back({1, 17, 2, 2, HS});                                  // MHA
    v.push_back({1, 70, 4, 1, HS});                                  // MQA, a group of 4
  }
#else
  for (int HS : {64, 128})
    for (int T : {1, 17, 64, 100, 130}) {
      v.push_back({2, T, 4, 2, HS});  // GQA, groups of 2
      v.push_back({2, T, 2, 2, HS});  // MHA
      v.push_back({2, T, 4, 1, HS});  // MQA, a group of 4
    }
  // Longer sequences: many tiles per row, heavy and light blocks in one launch.
  v.push_back({1, 1029, 8, 2, 128});
  v.push_back({2, 777, 4, 4, 64});
#endif
  return v;
}

INSTANTIATE_TEST_SUITE_P(Shapes, FlashAttentionTest, ::testing::ValuesIn(shapes()),
                         [](const ::testing::TestParamInfo<Shape>& p) { return shape_name(p.param); });

#if !defined(STRATA_CUDA_EMU) && defined(STRATA_HAVE_CUDNN_SDPA)
// Attention through cuDNN's SDPA graphs (kernels/cuda/cudnn_sdpa.h) under the same rule, on the same shapes;
// skips where libcudnn.so.9 cannot be loaded.
#define STRATA_SKIP_WITHOUT_CUDNN()                                                                        \
  do {                                                                                                     \
    STRATA_SKIP_WITHOUT_GPU();                                                                             \
    if (!cuda::cudnn::library().ok) GTEST_SKIP() << "cuDNN unavailable: " << cuda::cudnn::library().error; \
  } while (0)

class CudnnAttentionTest : public ::testing::TestWithParam<Shape> {};

TEST_P(CudnnAttentionTest, MatchesDoubleReferenceWithinBf16Rule) {
  STRATA_SKIP_WITHOUT_CUDNN();
  expect_matches_reference(GetParam(), true);
}

// Each shape compiles cuDNN's runtime-fused kernels for its three plans (~1-5 s each), so a subset of the
// sweep: one key, tails of a tile, every group size, both head dims, and two long sequences.
const Shape kCudnnShapes[] = {{2, 1, 4, 2, 64},     {2, 17, 4, 2, 64},  {2, 100, 2, 2, 64},
                              {2, 130, 4, 1, 64},   {2, 64, 4, 2, 128}, {2, 130, 2, 2, 128},
                              {1, 1029, 8, 2, 128}, {2, 777, 4, 4, 64}};

INSTANTIATE_TEST_SUITE_P(Shapes, CudnnAttentionTest, ::testing::ValuesIn(kCudnnShapes),
                         [](const ::testing::TestParamInfo<Shape>& p) { return shape_name(p.param); });

// cuDNN's deterministic backward (dP in the workspace): two runs give the same bits, forward included.
TEST(CudnnAttention, DeterministicBackwardIsBitwiseReproducible) {
  STRATA_SKIP_WITHOUT_CUDNN();
  for (const Shape& s : {Shape{2, 1000, 8, 2, 64}, Shape{2, 1000, 8, 4, 128}}) {
    SCOPED_TRACE(shape_name(s));
    const std::vector<float> qkv = random_bf16_values(s.qkv_size(), 31, -2.0f, 2.0f);
    const std::vector<float> dout = random_bf16_values(s.out_size(), 32);
    const Kernel a = run_kernel(s, qkv, dout, false, true), b = run_kernel(s, qkv, dout, false, true);
    EXPECT_EQ(0, std::memcmp(a.out.data(), b.out.data(), a.out.size() * sizeof(bf16))) << "out";
    EXPECT_EQ(0, std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * sizeof(float))) << "lse";
    EXPECT_EQ(0, std::memcmp(a.dqkv[0].data(), b.dqkv[0].data(), a.dqkv[0].size() * sizeof(bf16))) << "dqkv";
  }
}
#endif

// The deterministic backward has no atomics: two runs give the same bits (and so does the forward). Several tiles
// of keys and queries, and a group of 2 summed into dK, dV.
TEST(FlashAttention, BackwardIsBitwiseReproducible) {
  STRATA_SKIP_WITHOUT_GPU();
#if defined(STRATA_CUDA_EMU)
  const Shape cases[] = {{1, 70, 2, 1, 64}, {1, 40, 2, 1, 128}};
#else
  const Shape cases[] = {{2, 1000, 8, 2, 64}, {2, 1000, 8, 4, 128}};
#endif
  for (const Shape& s : cases) {
    SCOPED_TRACE(shape_name(s));
    const std::vector<float> qkv = random_bf16_values(s.qkv_size(), 31, -2.0f, 2.0f);
    const std::vector<float> dout = random_bf16_values(s.out_size(), 32);
    const Kernel a = run_kernel(s, qkv, dout, false), b = run_kernel(s, qkv, dout, false);
    EXPECT_EQ(0, std::memcmp(a.out.data(), b.out.data(), a.out.size() * sizeof(bf16))) << "out";
    EXPECT_EQ(0, std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * sizeof(float))) << "lse";
    EXPECT_EQ(0, std::memcmp(a.dqkv[0].data(), b.dqkv[0].data(), a.dqkv[0].size() * sizeof(bf16))) << "dqkv";
  }
}

// Unsupported head sizes and groupings are rejected before anything is launched.
TEST(FlashAttentionDeathTest, RejectsUnsupportedShapes) {
  STRATA_SKIP_WITHOUT_GPU();  // no device is touched, but the test belongs to the gpu executable's contract
  std::vector<bf16> x(1024);
  std::vector<float> f(1024);
  const Cuda dev;
  EXPECT_DEATH(ops::flash_attention_forward(dev, x.data(), f.data(), x.data(), 1, 8, 2, 2, 32), "64 or 128");
  EXPECT_DEATH(ops::flash_attention_forward(dev, x.data(), f.data(), x.data(), 1, 8, 3, 2, 64), "multiple of KVH");
  EXPECT_DEATH(ops::flash_attention_backward(dev, x.data(), f.data(), x.data(), x.data(), x.data(), f.data(), 1, 8,
                                             2, 2, 96),
               "64 or 128");
}

// The atomic path checks its workspace (one byte short, and none) before anything is launched.
TEST(FlashAttentionDeathTest, AtomicBackwardChecksItsWorkspace) {
  STRATA_SKIP_WITHOUT_GPU();
  const Shape s{1, 8, 2, 2, 64};
  std::vector<bf16> x(s.qkv_size());  // host memory: never touched, the check comes first
  std::vector<float> f(s.lse_size());
  std::vector<unsigned char> ws(cuda::flash_attention_backward_workspace_bytes(s.B, s.T, s.NH, s.HS) - 1);
  Cuda dev;
  dev.deterministic = false;
  dev.workspace = ws.data(), dev.workspace_bytes = ws.size();
  auto run = [&] {
    ops::flash_attention_backward(dev, x.data(), f.data(), x.data(), x.data(), x.data(), f.data(), s.B, s.T, s.NH,
                                  s.KVH, s.HS);
  };
  EXPECT_DEATH(run(), "flash_attention_backward_workspace_bytes");
  dev.workspace = nullptr, dev.workspace_bytes = 0;
  EXPECT_DEATH(run(), "flash_attention_backward_workspace_bytes");
}

}  // namespace
}  // namespace strata::test
