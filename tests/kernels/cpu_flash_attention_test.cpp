// tests/kernels/cpu_flash_attention_test.cpp: the CPU flash attention (kernels/cpu/flash_attention.cpp) against
// the CPU attention with the (T,T) matrix (kernels/cpu/attention.cpp), itself tested against a naive loop and
// finite differences in cpu_ops_test.cpp.
//
//   - forward out and backward dqkv, double vs double: only the summation order differs (kTolDoubleRef);
//   - lse vs log sum exp of the scores computed here in double;
//   - float vs double on the same inputs (kTolFloatVsDouble);
//   - the backward is bitwise reproducible and independent of the OpenMP thread count.
// Shapes cross the 64-row tile (T = 64, 65, 130, 150), GQA and MHA, odd head sizes; outputs are poisoned with NaN.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/ops.h"
#include "tests/tolerances.h"

namespace strata::ops {
namespace {

using test::kTolDoubleRef;
using test::kTolFloatVsDouble;

using Vec = std::vector<double>;
const Cpu kCpu{};

struct Shape {
  int B, T, NH, KVH, HS;
  int row() const { return (NH + 2 * KVH) * HS; }
  size_t qkv_size() const { return size_t(B) * T * row(); }
  size_t out_size() const { return size_t(B) * T * NH * HS; }
  size_t att_size() const { return size_t(B) * NH * T * T; }
  size_t lse_size() const { return size_t(B) * NH * T; }
};

// GQA, MHA, one head; T on both sides of the 64-row tile and several tiles.
const Shape kShapes[] = {{2, 5, 4, 2, 3},  {2, 7, 3, 3, 5},  {1, 1, 2, 1, 8},   {1, 64, 2, 2, 16},
                         {2, 65, 4, 2, 8}, {1, 130, 4, 1, 32}, {1, 150, 2, 1, 64}};

::testing::Message describe(const Shape& s) {
  return ::testing::Message() << "B=" << s.B << " T=" << s.T << " NH=" << s.NH << " KVH=" << s.KVH
                              << " HS=" << s.HS;
}

Vec random_vec(size_t n, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  Vec v(n);
  for (double& x : v) x = dist(rng);
  return v;
}

template <class F>
std::vector<F> nan_vec(size_t n) {
  return std::vector<F>(n, std::numeric_limits<F>::quiet_NaN());
}
template <class F>
std::vector<F> cast(const Vec& v) {
  return std::vector<F>(v.begin(), v.end());
}

// max |got - ref| / max |ref| <= tol, with a non-zero reference and no NaN.
template <class G>
void expect_close(const char* what, const std::vector<G>& got, const Vec& ref, double tol) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  double err = 0, mag = 0;
  size_t worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = static_cast<double>(got[i]);
    ASSERT_FALSE(std::isnan(g)) << what << ": NaN at " << i << " (an element left unwritten?)";
    mag = std::max(mag, std::abs(ref[i]));
    if (std::abs(g - ref[i]) > err) err = std::abs(g - ref[i]), worst = i;
  }
  ASSERT_GT(mag, 0.0) << what << ": all-zero reference";
  EXPECT_LE(err / mag, tol) << what << ": worst element " << worst << " got " << static_cast<double>(got[worst])
                            << " want " << ref[worst] << " (max |ref| " << mag << ")";
}

template <class F>
struct Fwd {
  std::vector<F> out;
  std::vector<Stat<F>> lse;
};

template <class F>
Fwd<F> run_flash(const Vec& qkv, const Shape& s) {
  Fwd<F> r{nan_vec<F>(s.out_size()), nan_vec<Stat<F>>(s.lse_size())};
  const auto x = cast<F>(qkv);
  flash_attention_forward(kCpu, r.out.data(), r.lse.data(), x.data(), s.B, s.T, s.NH, s.KVH, s.HS);
  return r;
}

template <class F>
std::vector<F> run_flash_backward(const Vec& qkv, const Vec& dout, const Shape& s) {
  const auto fwd = run_flash<F>(qkv, s);
  auto dqkv = nan_vec<F>(s.qkv_size());
  auto delta = nan_vec<Stat<F>>(s.lse_size());
  const auto x = cast<F>(qkv), dy = cast<F>(dout);
  flash_attention_backward(kCpu, dqkv.data(), delta.data(), dy.data(), fwd.out.data(), x.data(), fwd.lse.data(),
                           s.B, s.T, s.NH, s.KVH, s.HS);
  return dqkv;
}

// The (T,T) attention in double: out and dqkv.
Vec reference_out(const Vec& qkv, const Shape& s) {
  Vec out = nan_vec<double>(s.out_size()), att = nan_vec<double>(s.att_size());
  attention_forward(kCpu, out.data(), att.data(), qkv.data(), s.B, s.T, s.NH, s.KVH, s.HS);
  return out;
}
Vec reference_dqkv(const Vec& qkv, const Vec& dout, const Shape& s) {
  Vec out = nan_vec<double>(s.out_size()), att = nan_vec<double>(s.att_size());
  attention_forward(kCpu, out.data(), att.data(), qkv.data(), s.B, s.T, s.NH, s.KVH, s.HS);
  Vec dqkv = nan_vec<double>(s.qkv_size()), datt = nan_vec<double>(s.att_size());
  attention_backward(kCpu, dqkv.data(), datt.data(), dout.data(), qkv.data(), att.data(), s.B, s.T, s.NH, s.KVH,
                     s.HS);
  return dqkv;
}

// lse[b,h,t] = log sum_{u<=t} exp(q_t . k_u / sqrt(HS)), a naive double loop.
Vec reference_lse(const Vec& qkv, const Shape& s) {
  Vec lse(s.lse_size());
  const double scale = 1.0 / std::sqrt(double(s.HS));
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.NH; ++h) {
      const int g = h / (s.NH / s.KVH);
      for (int t = 0; t < s.T; ++t) {
        const double* q = qkv.data() + (size_t(b) * s.T + t) * s.row() + size_t(h) * s.HS;
        Vec sc(size_t(t) + 1);
        for (int u = 0; u <= t; ++u) {
          const double* k = qkv.data() + (size_t(b) * s.T + u) * s.row() + size_t(s.NH + g) * s.HS;
          double d = 0;
          for (int i = 0; i < s.HS; ++i) d += q[i] * k[i];
          sc[size_t(u)] = d * scale;
        }
        const double mx = *std::max_element(sc.begin(), sc.end());
        double sum = 0;
        for (double x : sc) sum += std::exp(x - mx);
        lse[(size_t(b) * s.NH + h) * s.T + t] = mx + std::log(sum);
      }
    }
  return lse;
}

TEST(CpuFlashAttention, ForwardMatchesAttention) {
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(describe(s));
    const Vec qkv = random_vec(s.qkv_size(), 71, -2.0, 2.0);
    const Vec ref = reference_out(qkv, s);
    const Vec ref_lse = reference_lse(qkv, s);
    const auto got = run_flash<double>(qkv, s);
    expect_close("flash out", got.out, ref, kTolDoubleRef);
    expect_close("flash lse", got.lse, ref_lse, kTolDoubleRef);
    const auto got_f = run_flash<float>(qkv, s);
    expect_close("flash out (float)", got_f.out, ref, kTolFloatVsDouble);
    expect_close("flash lse (float)", got_f.lse, ref_lse, kTolFloatVsDouble);
  }
}

// Large scores (|q.k| scale up to ~40): the running max moves by much more than 1 between tiles, so the
// rescaling of the earlier output (exp(m_old - m_new) far from 1) is exercised.
TEST(CpuFlashAttention, ForwardWithLargeScores) {
  const Shape s{1, 150, 2, 1, 16};
  const Vec qkv = random_vec(s.qkv_size(), 72, -4.0, 4.0);
  expect_close("flash out", run_flash<double>(qkv, s).out, reference_out(qkv, s), kTolDoubleRef);
  expect_close("flash lse", run_flash<double>(qkv, s).lse, reference_lse(qkv, s), kTolDoubleRef);
  expect_close("flash out (float)", run_flash<float>(qkv, s).out, reference_out(qkv, s), kTolFloatVsDouble);
}

TEST(CpuFlashAttention, BackwardMatchesAttention) {
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(describe(s));
    const Vec qkv = random_vec(s.qkv_size(), 73, -2.0, 2.0);
    const Vec dout = random_vec(s.out_size(), 74);
    const Vec ref = reference_dqkv(qkv, dout, s);
    expect_close("flash dqkv", run_flash_backward<double>(qkv, dout, s), ref, kTolDoubleRef);
    expect_close("flash dqkv (float)", run_flash_backward<float>(qkv, dout, s), ref, kTolFloatVsDouble);
  }
}

// delta is scratch but its contents are specified (rowsum(dout * out)): check them too.
TEST(CpuFlashAttention, BackwardDeltaIsRowsumOfDoutTimesOut) {
  const Shape s{2, 17, 4, 2, 8};
  const Vec qkv = random_vec(s.qkv_size(), 75), dout = random_vec(s.out_size(), 76);
  const auto fwd = run_flash<double>(qkv, s);
  Vec dqkv = nan_vec<double>(s.qkv_size()), delta = nan_vec<double>(s.lse_size());
  flash_attention_backward(kCpu, dqkv.data(), delta.data(), dout.data(), fwd.out.data(), qkv.data(),
                           fwd.lse.data(), s.B, s.T, s.NH, s.KVH, s.HS);
  Vec ref(s.lse_size());
  for (int b = 0; b < s.B; ++b)
    for (int t = 0; t < s.T; ++t)
      for (int h = 0; h < s.NH; ++h) {
        double d = 0;
        for (int i = 0; i < s.HS; ++i) {
          const size_t at = (size_t(b) * s.T + t) * s.NH * s.HS + size_t(h) * s.HS + i;
          d += dout[at] * fwd.out[at];
        }
        ref[(size_t(b) * s.NH + h) * s.T + t] = d;
      }
  expect_close("flash delta", delta, ref, kTolDoubleRef);
}

TEST(CpuFlashAttention, BackwardIsBitwiseReproducibleAcrossThreadCounts) {
  const Shape s{2, 150, 4, 2, 32};
  const Vec qkv = random_vec(s.qkv_size(), 77, -2.0, 2.0), dout = random_vec(s.out_size(), 78);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto one = run_flash_backward<float>(qkv, dout, s);
  omp_set_num_threads(2);
  const auto two = run_flash_backward<float>(qkv, dout, s);
  const auto again = run_flash_backward<float>(qkv, dout, s);
  omp_set_num_threads(saved);
  EXPECT_EQ(0, std::memcmp(one.data(), two.data(), one.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(two.data(), again.data(), two.size() * sizeof(float)));
}

TEST(CpuFlashAttentionDeathTest, RejectsBadShapes) {
  std::vector<float> x(64), lse(64);
  EXPECT_DEATH(flash_attention_forward(kCpu, x.data(), lse.data(), x.data(), 1, 1, 3, 2, 1), "multiple of KVH");
  EXPECT_DEATH(flash_attention_forward(kCpu, x.data(), lse.data(), x.data(), 1, 0, 2, 2, 1), "T=0");
}

}  // namespace
}  // namespace strata::ops
