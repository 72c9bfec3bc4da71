// tests/kernels/cpu_residual_norm_test.cpp: the CPU residual + norm fusions (kernels/cpu/residual_norm.cpp)
// against the composition they stand for, residual_forward then rmsnorm_forward / layernorm_forward, bit for
// bit, for float and double, out of place and with resid_out aliasing resid_in. Outputs start as NaN so an
// unwritten element fails; inputs are seeded random values.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/ops.h"

namespace strata::ops {
namespace {

const Cpu kCpu{};
constexpr float kEps = 1e-5f;

template <class F>
std::vector<F> random_vec(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  std::vector<F> v(n);
  for (F& x : v) x = static_cast<F>(dist(rng));
  return v;
}

template <class F>
std::vector<F> nan_vec(size_t n) {
  return std::vector<F>(n, std::numeric_limits<F>::quiet_NaN());
}

template <class F>
void expect_bitwise(const std::string& what, const std::vector<F>& got, const std::vector<F>& ref) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  bool nonzero = false;
  for (size_t i = 0; i < got.size(); ++i) {
    nonzero = nonzero || ref[i] != F(0);
    ASSERT_EQ(std::memcmp(&got[i], &ref[i], sizeof(F)), 0)
        << what << ": differs at " << i << ": " << got[i] << " vs " << ref[i];
  }
  EXPECT_TRUE(nonzero) << what << ": the reference is all zeros, the comparison would be vacuous";
}

struct Shape {
  int N, C;
};
const Shape kShapes[] = {{1, 8}, {3, 17}, {5, 100}, {7, 768}};

template <class F>
void check_rmsnorm(const Shape& s, bool in_place) {
  const size_t n = size_t(s.N) * s.C;
  const auto a = random_vec<F>(n, 11), b = random_vec<F>(n, 12), w = random_vec<F>(size_t(s.C), 13);
  // The reference: the two ops one after the other.
  auto ref_resid = nan_vec<F>(n), ref_out = nan_vec<F>(n), ref_rstd = nan_vec<F>(size_t(s.N));
  residual_forward(kCpu, ref_resid.data(), a.data(), b.data(), int64_t(n));
  rmsnorm_forward(kCpu, ref_out.data(), ref_rstd.data(), ref_resid.data(), w.data(), s.N, s.C, kEps);

  auto resid = in_place ? a : nan_vec<F>(n);
  auto out = nan_vec<F>(n), rstd = nan_vec<F>(size_t(s.N));
  const F* resid_in = in_place ? resid.data() : a.data();
  residual_rmsnorm_forward(kCpu, resid.data(), out.data(), rstd.data(), resid_in, b.data(), w.data(), s.N,
                           s.C, kEps);
  const std::string what =
      "N=" + std::to_string(s.N) + " C=" + std::to_string(s.C) + (in_place ? " in place" : "");
  expect_bitwise("rmsnorm resid_out " + what, resid, ref_resid);
  expect_bitwise("rmsnorm out " + what, out, ref_out);
  expect_bitwise("rmsnorm rstd " + what, rstd, ref_rstd);
}

template <class F>
void check_layernorm(const Shape& s, bool in_place) {
  const size_t n = size_t(s.N) * s.C;
  const auto a = random_vec<F>(n, 21), b = random_vec<F>(n, 22);
  const auto w = random_vec<F>(size_t(s.C), 23), bias = random_vec<F>(size_t(s.C), 24);
  auto ref_resid = nan_vec<F>(n), ref_out = nan_vec<F>(n);
  auto ref_mean = nan_vec<F>(size_t(s.N)), ref_rstd = nan_vec<F>(size_t(s.N));
  residual_forward(kCpu, ref_resid.data(), a.data(), b.data(), int64_t(n));
  layernorm_forward(kCpu, ref_out.data(), ref_mean.data(), ref_rstd.data(), ref_resid.data(), w.data(),
                    bias.data(), s.N, s.C, kEps);

  auto resid = in_place ? a : nan_vec<F>(n);
  auto out = nan_vec<F>(n), mean = nan_vec<F>(size_t(s.N)), rstd = nan_vec<F>(size_t(s.N));
  const F* resid_in = in_place ? resid.data() : a.data();
  residual_layernorm_forward(kCpu, resid.data(), out.data(), mean.data(), rstd.data(), resid_in, b.data(),
                             w.data(), bias.data(), s.N, s.C, kEps);
  const std::string what =
      "N=" + std::to_string(s.N) + " C=" + std::to_string(s.C) + (in_place ? " in place" : "");
  expect_bitwise("layernorm resid_out " + what, resid, ref_resid);
  expect_bitwise("layernorm out " + what, out, ref_out);
  expect_bitwise("layernorm mean " + what, mean, ref_mean);
  expect_bitwise("layernorm rstd " + what, rstd, ref_rstd);
}

TEST(CpuResidualNorm, RmsnormEqualsResidualThenNorm) {
  for (const Shape& s : kShapes)
    for (bool in_place : {false, true}) {
      check_rmsnorm<float>(s, in_place);
      check_rmsnorm<double>(s, in_place);
    }
}

TEST(CpuResidualNorm, LayernormEqualsResidualThenNorm) {
  for (const Shape& s : kShapes)
    for (bool in_place : {false, true}) {
      check_layernorm<float>(s, in_place);
      check_layernorm<double>(s, in_place);
    }
}

TEST(CpuResidualNormDeathTest, PreconditionsAreChecked) {
  std::vector<float> x(16, 1.0f), stat(2, 0.0f);
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // OpenMP threads may exist by now
  EXPECT_DEATH(residual_rmsnorm_forward(kCpu, x.data(), x.data(), stat.data(), x.data(), x.data(), x.data(),
                                        0, 8, kEps),
               "N=0");
  EXPECT_DEATH(residual_layernorm_forward(kCpu, x.data(), x.data(), stat.data(), stat.data(), x.data(),
                                          x.data(), x.data(), static_cast<const float*>(nullptr), 2, 8, kEps),
               "null pointer");
}

}  // namespace
}  // namespace strata::ops
