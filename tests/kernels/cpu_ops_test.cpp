// tests/kernels/cpu_ops_test.cpp: the CPU backend (kernels/cpu/*.cpp) against independent references.
//
// For every op:
//   - forward vs a naive double loop (or an exact identity: rope_backward inverts rope_forward, decode with
//     a prefix cache equals the full causal forward), outputs poisoned with NaN so unwritten elements fail;
//   - every input and parameter gradient vs central finite differences of L = sum(out * R) in double, R a
//     seeded random projection; accumulating (`+=`) gradients start from random values, called twice;
//   - float vs double on the same inputs;
//   - determinism: two runs are bitwise equal, and so are 1 vs 2 OpenMP threads where the op guarantees it.
// Inputs are seeded uniform random values, never zeros; every comparison asserts its reference is non-zero.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <numbers>
#include <random>
#include <string>
#include <vector>

#include "engine/check.h"
#include "kernels/cpu/blas_runtime.h"
#include "kernels/cpu/cpu_common.h"
#include "kernels/ops.h"
#include "tests/tolerances.h"

namespace strata::ops {
namespace {

// Tolerances (relative to the largest |reference| entry of the compared tensor): tests/tolerances.h.
using test::kFdStep;
using test::kTolDoubleRef;
using test::kTolExpApprox;
using test::kTolFiniteDiff;
using test::kTolFloatVsDouble;
using test::kTolTwice;

using Vec = std::vector<double>;
const Cpu kCpu{};

Vec random_vec(size_t n, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  Vec v(n);
  for (double& x : v) x = dist(rng);
  return v;
}

std::vector<int32_t> random_tokens(size_t n, int V, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, V - 1);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = dist(rng);
  return t;
}

Vec nan_vec(size_t n) {
  return Vec(n, std::numeric_limits<double>::quiet_NaN());
}

template <class F>
std::vector<F> cast(const Vec& v) {
  return std::vector<F>(v.begin(), v.end());
}
template <class F>
Vec to_double(const std::vector<F>& v) {
  return Vec(v.begin(), v.end());
}

double max_abs(const Vec& v) {
  double m = 0.0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

double dot(const Vec& a, const Vec& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

Vec sub(const Vec& a, const Vec& b) {
  Vec r(a.size());
  for (size_t i = 0; i < a.size(); ++i) r[i] = a[i] - b[i];
  return r;
}

// max |got - ref| <= tol * max |ref|, with a non-zero reference and no NaN in `got`.
void expect_close(const std::string& what, const Vec& got, const Vec& ref, double tol) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  const double scale = max_abs(ref);
  ASSERT_GT(scale, 0.0) << what << ": the reference is all zeros, the comparison would be vacuous";
  double worst = 0.0;
  size_t at = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_FALSE(std::isnan(got[i])) << what << ": NaN at " << i << " (element not written?)";
    const double d = std::abs(got[i] - ref[i]);
    if (d > worst) worst = d, at = i;
  }
  EXPECT_LE(worst, tol * scale) << what << ": worst at " << at << " got " << got[at] << " ref " << ref[at]
                                << " (|ref|max " << scale << ")";
}
template <class F>
void expect_close(const std::string& what, const std::vector<F>& got, const Vec& ref, double tol) {
  expect_close(what, to_double(got), ref, tol);
}

template <class F>
void expect_bitwise(const std::string& what, const std::vector<F>& a, const std::vector<F>& b) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i)
    ASSERT_EQ(std::memcmp(&a[i], &b[i], sizeof(F)), 0)
        << what << ": differs at " << i << ": " << a[i] << " vs " << b[i];
}

// Central-difference gradient of loss() w.r.t. x at the indices `at` (all of x when empty), compared with
// `analytic` there.
void expect_grad(const std::string& what, Vec& x, const Vec& analytic, const std::function<double()>& loss,
                 std::vector<size_t> at = {}) {
  ASSERT_EQ(x.size(), analytic.size()) << what;
  if (at.empty())
    for (size_t i = 0; i < x.size(); ++i) at.push_back(i);
  Vec num(at.size()), ana(at.size());
  for (size_t j = 0; j < at.size(); ++j) {
    const size_t i = at[j];
    const double x0 = x[i];
    x[i] = x0 + kFdStep;
    const double lp = loss();
    x[i] = x0 - kFdStep;
    const double lm = loss();
    x[i] = x0;
    num[j] = (lp - lm) / (2.0 * kFdStep);
    ana[j] = analytic[i];
  }
  expect_close(what + " vs finite differences", ana, num, kTolFiniteDiff);
}

std::vector<size_t> sample_indices(size_t n, size_t count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<size_t> dist(0, n - 1);
  std::vector<size_t> at(count);
  for (size_t& i : at) i = dist(rng);
  return at;
}

// Runs fn with `threads` OpenMP threads, restoring the previous setting.
template <class Fn>
void with_threads(int threads, Fn&& fn) {
  const int before = omp_get_max_threads();
  omp_set_num_threads(threads);
  fn();
  omp_set_num_threads(before);
}

// ---- exp approximation ------------------------------------------------------------------------------------
TEST(CpuOps, ExpApproxMatchesLibm) {
  double worst = 0.0;
  for (double x = -87.0; x <= 80.0; x += 0.0013) {
    const float xf = static_cast<float>(x);
    const double ref = std::exp(static_cast<double>(xf));
    worst = std::max(worst, std::abs(static_cast<double>(cpu_detail::exp_approx(xf)) - ref) / ref);
  }
  EXPECT_LE(worst, kTolExpApprox);
  EXPECT_EQ(cpu_detail::exp_approx(0.0f), 1.0f);
  EXPECT_TRUE(std::isnan(cpu_detail::exp_approx(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_EQ(cpu_detail::exp_approx(-88.0f), 0.0f);  // flushed, never denormal
  EXPECT_EQ(cpu_detail::exp_approx(-1000.0f), 0.0f);
  EXPECT_GE(cpu_detail::sigmoid_of(-1000.0f), std::numeric_limits<float>::min());  // saturates, normal
  EXPECT_EQ(cpu_detail::sigmoid_of(1000.0f), 1.0f);
  EXPECT_EQ(cpu_detail::tanh_of(-1000.0f), -1.0f);
  EXPECT_EQ(cpu_detail::tanh_of(1000.0f), 1.0f);
}

// True when v holds a denormal float (arithmetic on those is ~100x slower on x86).
bool has_denormal(const std::vector<float>& v) {
  return std::any_of(v.begin(), v.end(), [](float x) { return std::fpclassify(x) == FP_SUBNORMAL; });
}

// ---- embedding --------------------------------------------------------------------------------------------
constexpr int kB = 2, kT = 5, kC = 7, kV = 11;

std::vector<int32_t> embedding_tokens() {
  auto tok = random_tokens(kB * kT, kV, 11);
  tok[3] = tok[0];  // repeated tokens: their gradient rows must add up
  tok[7] = tok[0];
  tok[8] = tok[4];
  return tok;
}

template <class F>
std::vector<F> run_embedding(const std::vector<int32_t>& tok, const Vec& wte, const Vec* wpe) {
  std::vector<F> out = cast<F>(nan_vec(kB * kT * kC));
  const auto e = cast<F>(wte);
  const auto p = wpe ? cast<F>(*wpe) : std::vector<F>();
  embedding_forward(kCpu, out.data(), tok.data(), e.data(), wpe ? p.data() : nullptr, kB, kT, kC);
  return out;
}

TEST(CpuOps, EmbeddingForwardMatchesNaive) {
  const auto tok = embedding_tokens();
  const Vec wte = random_vec(kV * kC, 1), wpe = random_vec((kT + 2) * kC, 2);
  for (bool with_wpe : {true, false}) {
    Vec ref(kB * kT * kC);
    for (int n = 0; n < kB * kT; ++n)
      for (int c = 0; c < kC; ++c)
        ref[n * kC + c] = wte[tok[n] * kC + c] + (with_wpe ? wpe[(n % kT) * kC + c] : 0.0);
    const Vec* p = with_wpe ? &wpe : nullptr;
    expect_close("embedding out", run_embedding<double>(tok, wte, p), ref, kTolDoubleRef);
    expect_close("embedding out (float)", run_embedding<float>(tok, wte, p), ref, kTolFloatVsDouble);
  }
}

TEST(CpuOps, EmbeddingBackwardMatchesFiniteDifferences) {
  const auto tok = embedding_tokens();
  Vec wte = random_vec(kV * kC, 1), wpe = random_vec((kT + 2) * kC, 2);
  const Vec R = random_vec(kB * kT * kC, 3);
  const Vec dwte0 = random_vec(wte.size(), 4), dwpe0 = random_vec(wpe.size(), 5);
  Vec dwte = dwte0, dwpe = dwpe0;
  embedding_backward(kCpu, dwte.data(), dwpe.data(), R.data(), tok.data(), kB, kT, kC);
  const Vec gwte = sub(dwte, dwte0), gwpe = sub(dwpe, dwpe0);
  auto loss = [&] { return dot(run_embedding<double>(tok, wte, &wpe), R); };
  expect_grad("embedding dwte", wte, gwte, loss);
  expect_grad("embedding dwpe", wpe, gwpe, loss);
  embedding_backward(kCpu, dwte.data(), dwpe.data(), R.data(), tok.data(), kB, kT, kC);
  Vec twice_wte = gwte, twice_wpe = gwpe;
  for (double& x : twice_wte) x *= 2.0;
  for (double& x : twice_wpe) x *= 2.0;
  expect_close("embedding dwte twice", sub(dwte, dwte0), twice_wte, kTolTwice);
  expect_close("embedding dwpe twice", sub(dwpe, dwpe0), twice_wpe, kTolTwice);
  // Without wpe only dwte changes.
  Vec dwte2 = dwte0;
  embedding_backward(kCpu, dwte2.data(), static_cast<double*>(nullptr), R.data(), tok.data(), kB, kT, kC);
  expect_close("embedding dwte (no wpe)", sub(dwte2, dwte0), gwte, kTolDoubleRef);
}

// ---- RMSNorm / LayerNorm ----------------------------------------------------------------------------------
constexpr int kN = kB * kT;
constexpr float kEps = 1e-5f;

template <class F>
std::vector<F> run_rmsnorm(const Vec& inp, const Vec& w, int N, int C, std::vector<F>* rstd_out = nullptr) {
  std::vector<F> out = cast<F>(nan_vec(inp.size())), rstd = cast<F>(nan_vec(N));
  const auto x = cast<F>(inp), wf = cast<F>(w);
  rmsnorm_forward(kCpu, out.data(), rstd.data(), x.data(), wf.data(), N, C, kEps);
  if (rstd_out) *rstd_out = rstd;
  return out;
}

TEST(CpuOps, RmsnormForwardMatchesNaive) {
  const Vec inp = random_vec(kN * kC, 21), w = random_vec(kC, 22, 0.5, 1.5);
  Vec ref(inp.size()), ref_rstd(kN);
  for (int n = 0; n < kN; ++n) {
    double ss = 0;
    for (int c = 0; c < kC; ++c) ss += inp[n * kC + c] * inp[n * kC + c];
    ref_rstd[n] = 1.0 / std::sqrt(ss / kC + kEps);
    for (int c = 0; c < kC; ++c) ref[n * kC + c] = inp[n * kC + c] * ref_rstd[n] * w[c];
  }
  std::vector<double> rstd;
  expect_close("rmsnorm out", run_rmsnorm<double>(inp, w, kN, kC, &rstd), ref, kTolDoubleRef);
  expect_close("rmsnorm rstd", rstd, ref_rstd, kTolDoubleRef);
  std::vector<float> rstd_f;
  expect_close("rmsnorm out (float)", run_rmsnorm<float>(inp, w, kN, kC, &rstd_f), ref, kTolFloatVsDouble);
  expect_close("rmsnorm rstd (float)", rstd_f, ref_rstd, kTolFloatVsDouble);
}

TEST(CpuOps, RmsnormBackwardMatchesFiniteDifferences) {
  Vec inp = random_vec(kN * kC, 21), w = random_vec(kC, 22, 0.5, 1.5);
  const Vec R = random_vec(inp.size(), 23);
  std::vector<double> rstd;
  run_rmsnorm<double>(inp, w, kN, kC, &rstd);
  const Vec dinp0 = random_vec(inp.size(), 24), dw0 = random_vec(kC, 25);
  Vec dinp = dinp0, dw = dw0;
  rmsnorm_backward(kCpu, dinp.data(), dw.data(), R.data(), inp.data(), w.data(), rstd.data(), kN, kC);
  const Vec g_inp = sub(dinp, dinp0), g_w = sub(dw, dw0);
  auto loss = [&] { return dot(run_rmsnorm<double>(inp, w, kN, kC), R); };
  expect_grad("rmsnorm dinp", inp, g_inp, loss);
  expect_grad("rmsnorm dweight", w, g_w, loss);
  rmsnorm_backward(kCpu, dinp.data(), dw.data(), R.data(), inp.data(), w.data(), rstd.data(), kN, kC);
  Vec two_inp = g_inp, two_w = g_w;
  for (double& x : two_inp) x *= 2.0;
  for (double& x : two_w) x *= 2.0;
  expect_close("rmsnorm dinp twice", sub(dinp, dinp0), two_inp, kTolTwice);
  expect_close("rmsnorm dweight twice", sub(dw, dw0), two_w, kTolTwice);
  // float backward vs double backward
  const auto inp_f = cast<float>(inp), w_f = cast<float>(w), R_f = cast<float>(R);
  std::vector<float> rstd_f;
  run_rmsnorm<float>(inp, w, kN, kC, &rstd_f);
  std::vector<float> dinp_f(inp.size(), 0.0f), dw_f(kC, 0.0f);
  rmsnorm_backward(kCpu, dinp_f.data(), dw_f.data(), R_f.data(), inp_f.data(), w_f.data(), rstd_f.data(), kN,
                   kC);
  expect_close("rmsnorm dinp (float)", dinp_f, g_inp, kTolFloatVsDouble);
  expect_close("rmsnorm dweight (float)", dw_f, g_w, kTolFloatVsDouble);
}

template <class F>
std::vector<F> run_layernorm(const Vec& inp, const Vec& w, const Vec& b, int N, int C,
                             std::vector<F>* mean_out = nullptr, std::vector<F>* rstd_out = nullptr) {
  std::vector<F> out = cast<F>(nan_vec(inp.size())), mean = cast<F>(nan_vec(N)), rstd = cast<F>(nan_vec(N));
  const auto x = cast<F>(inp), wf = cast<F>(w), bf = cast<F>(b);
  layernorm_forward(kCpu, out.data(), mean.data(), rstd.data(), x.data(), wf.data(), bf.data(), N, C, kEps);
  if (mean_out) *mean_out = mean;
  if (rstd_out) *rstd_out = rstd;
  return out;
}

TEST(CpuOps, LayernormForwardMatchesNaive) {
  const Vec inp = random_vec(kN * kC, 31, -1.0, 3.0), w = random_vec(kC, 32, 0.5, 1.5),
            b = random_vec(kC, 33);
  Vec ref(inp.size()), ref_mean(kN), ref_rstd(kN);
  for (int n = 0; n < kN; ++n) {
    double s = 0, v = 0;
    for (int c = 0; c < kC; ++c) s += inp[n * kC + c];
    ref_mean[n] = s / kC;
    for (int c = 0; c < kC; ++c) v += (inp[n * kC + c] - ref_mean[n]) * (inp[n * kC + c] - ref_mean[n]);
    ref_rstd[n] = 1.0 / std::sqrt(v / kC + kEps);
    for (int c = 0; c < kC; ++c)
      ref[n * kC + c] = (inp[n * kC + c] - ref_mean[n]) * ref_rstd[n] * w[c] + b[c];
  }
  std::vector<double> mean, rstd;
  expect_close("layernorm out", run_layernorm<double>(inp, w, b, kN, kC, &mean, &rstd), ref, kTolDoubleRef);
  expect_close("layernorm mean", mean, ref_mean, kTolDoubleRef);
  expect_close("layernorm rstd", rstd, ref_rstd, kTolDoubleRef);
  expect_close("layernorm out (float)", run_layernorm<float>(inp, w, b, kN, kC), ref, kTolFloatVsDouble);
}

TEST(CpuOps, LayernormBackwardMatchesFiniteDifferences) {
  Vec inp = random_vec(kN * kC, 31, -1.0, 3.0), w = random_vec(kC, 32, 0.5, 1.5), b = random_vec(kC, 33);
  const Vec R = random_vec(inp.size(), 34);
  std::vector<double> mean, rstd;
  run_layernorm<double>(inp, w, b, kN, kC, &mean, &rstd);
  const Vec dinp0 = random_vec(inp.size(), 35), dw0 = random_vec(kC, 36), db0 = random_vec(kC, 37);
  Vec dinp = dinp0, dw = dw0, db = db0;
  auto backward = [&] {
    layernorm_backward(kCpu, dinp.data(), dw.data(), db.data(), R.data(), inp.data(), w.data(), mean.data(),
                       rstd.data(), kN, kC);
  };
  backward();
  const Vec g_inp = sub(dinp, dinp0), g_w = sub(dw, dw0), g_b = sub(db, db0);
  auto loss = [&] { return dot(run_layernorm<double>(inp, w, b, kN, kC), R); };
  expect_grad("layernorm dinp", inp, g_inp, loss);
  expect_grad("layernorm dweight", w, g_w, loss);
  expect_grad("layernorm dbias", b, g_b, loss);
  backward();
  auto twice = [](Vec v) {
    for (double& x : v) x *= 2.0;
    return v;
  };
  expect_close("layernorm dinp twice", sub(dinp, dinp0), twice(g_inp), kTolTwice);
  expect_close("layernorm dweight twice", sub(dw, dw0), twice(g_w), kTolTwice);
  expect_close("layernorm dbias twice", sub(db, db0), twice(g_b), kTolTwice);
  // float backward vs double backward
  std::vector<float> mean_f, rstd_f;
  run_layernorm<float>(inp, w, b, kN, kC, &mean_f, &rstd_f);
  const auto inp_f = cast<float>(inp), w_f = cast<float>(w), R_f = cast<float>(R);
  std::vector<float> dinp_f(inp.size(), 0.0f), dw_f(kC, 0.0f), db_f(kC, 0.0f);
  layernorm_backward(kCpu, dinp_f.data(), dw_f.data(), db_f.data(), R_f.data(), inp_f.data(), w_f.data(),
                     mean_f.data(), rstd_f.data(), kN, kC);
  expect_close("layernorm dinp (float)", dinp_f, g_inp, kTolFloatVsDouble);
  expect_close("layernorm dweight (float)", dw_f, g_w, kTolFloatVsDouble);
  expect_close("layernorm dbias (float)", db_f, g_b, kTolFloatVsDouble);
}

// ---- matmul -----------------------------------------------------------------------------------------------
constexpr int kIC = 7, kOC = 5;

template <class F>
std::vector<F> run_matmul(const Vec& inp, const Vec& w, const Vec* bias, int N, int IC, int OC) {
  std::vector<F> out = cast<F>(nan_vec(int64_t{N} * OC));
  const auto x = cast<F>(inp), wf = cast<F>(w);
  const auto bf = bias ? cast<F>(*bias) : std::vector<F>();
  matmul_forward(kCpu, out.data(), x.data(), wf.data(), bias ? bf.data() : nullptr, N, IC, OC);
  return out;
}

TEST(CpuOps, MatmulForwardMatchesNaive) {
  const Vec inp = random_vec(kN * kIC, 41), w = random_vec(kOC * kIC, 42), b = random_vec(kOC, 43);
  for (bool with_bias : {true, false}) {
    Vec ref(kN * kOC);
    for (int n = 0; n < kN; ++n)
      for (int o = 0; o < kOC; ++o) {
        double s = with_bias ? b[o] : 0.0;
        for (int i = 0; i < kIC; ++i) s += inp[n * kIC + i] * w[o * kIC + i];
        ref[n * kOC + o] = s;
      }
    const Vec* bp = with_bias ? &b : nullptr;
    expect_close("matmul out", run_matmul<double>(inp, w, bp, kN, kIC, kOC), ref, kTolDoubleRef);
    expect_close("matmul out (float)", run_matmul<float>(inp, w, bp, kN, kIC, kOC), ref, kTolFloatVsDouble);
  }
}

TEST(CpuOps, MatmulBackwardMatchesFiniteDifferences) {
  Vec inp = random_vec(kN * kIC, 41), w = random_vec(kOC * kIC, 42), b = random_vec(kOC, 43);
  const Vec R = random_vec(kN * kOC, 44);
  const Vec dw0 = random_vec(w.size(), 45), db0 = random_vec(kOC, 46);
  Vec dinp = nan_vec(inp.size()), dw = dw0, db = db0;
  matmul_backward(kCpu, dinp.data(), dw.data(), db.data(), R.data(), inp.data(), w.data(), kN, kIC, kOC);
  const Vec g_w = sub(dw, dw0), g_b = sub(db, db0);
  auto loss = [&] { return dot(run_matmul<double>(inp, w, &b, kN, kIC, kOC), R); };
  expect_grad("matmul dinp", inp, dinp, loss);
  expect_grad("matmul dweight", w, g_w, loss);
  expect_grad("matmul dbias", b, g_b, loss);
  // Second call: dinp is written again (same value), dweight and dbias accumulate.
  const Vec dinp1 = dinp;
  matmul_backward(kCpu, dinp.data(), dw.data(), db.data(), R.data(), inp.data(), w.data(), kN, kIC, kOC);
  expect_close("matmul dinp second call (=)", dinp, dinp1, kTolDoubleRef);
  Vec two_w = g_w, two_b = g_b;
  for (double& x : two_w) x *= 2.0;
  for (double& x : two_b) x *= 2.0;
  expect_close("matmul dweight twice", sub(dw, dw0), two_w, kTolTwice);
  expect_close("matmul dbias twice", sub(db, db0), two_b, kTolTwice);
  // Null dinp and null dbias are skipped; dweight is unaffected by them.
  Vec dw2 = dw0;
  matmul_backward(kCpu, static_cast<double*>(nullptr), dw2.data(), static_cast<double*>(nullptr), R.data(),
                  inp.data(), w.data(), kN, kIC, kOC);
  expect_close("matmul dweight (no dinp, no dbias)", sub(dw2, dw0), g_w, kTolDoubleRef);
  // float vs double
  const auto inp_f = cast<float>(inp), w_f = cast<float>(w), R_f = cast<float>(R);
  std::vector<float> dinp_f = cast<float>(nan_vec(inp.size())), dw_f(w.size(), 0.0f), db_f(kOC, 0.0f);
  matmul_backward(kCpu, dinp_f.data(), dw_f.data(), db_f.data(), R_f.data(), inp_f.data(), w_f.data(), kN,
                  kIC, kOC);
  expect_close("matmul dinp (float)", dinp_f, dinp1, kTolFloatVsDouble);
  expect_close("matmul dweight (float)", dw_f, g_w, kTolFloatVsDouble);
  expect_close("matmul dbias (float)", db_f, g_b, kTolFloatVsDouble);
}

// ---- RoPE -------------------------------------------------------------------------------------------------
struct AttnShape {
  int B, T, NH, KVH, HS;
  int row() const { return (NH + 2 * KVH) * HS; }
  size_t qkv_size() const { return size_t(B) * T * row(); }
  size_t out_size() const { return size_t(B) * T * NH * HS; }
  size_t att_size() const { return size_t(B) * NH * T * T; }
};
constexpr AttnShape kRopeShape{2, 5, 4, 2, 6};
constexpr float kRopeBase = 10000.0f;
constexpr int kPos0 = 3;

template <class F>
std::vector<F> run_rope(const Vec& qkv, const AttnShape& s, bool forward) {
  auto x = cast<F>(qkv);
  if (forward)
    rope_forward(kCpu, x.data(), s.B, s.T, s.NH, s.KVH, s.HS, kRopeBase, kPos0);
  else
    rope_backward(kCpu, x.data(), s.B, s.T, s.NH, s.KVH, s.HS, kRopeBase, kPos0);
  return x;
}

TEST(CpuOps, RopeForwardMatchesNaive) {
  const AttnShape s = kRopeShape;
  const Vec qkv = random_vec(s.qkv_size(), 51);
  Vec ref = qkv;
  const int half = s.HS / 2;
  for (int b = 0; b < s.B; ++b)
    for (int t = 0; t < s.T; ++t)
      for (int h = 0; h < s.NH + s.KVH; ++h) {
        double* x = ref.data() + (size_t(b) * s.T + t) * s.row() + size_t(h) * s.HS;
        for (int i = 0; i < half; ++i) {
          const double theta = (kPos0 + t) * std::pow(double(kRopeBase), -2.0 * i / s.HS);
          const double x0 = x[i], x1 = x[i + half];
          x[i] = x0 * std::cos(theta) - x1 * std::sin(theta);
          x[i + half] = x1 * std::cos(theta) + x0 * std::sin(theta);
        }
      }
  const auto got = run_rope<double>(qkv, s, true);
  expect_close("rope out", got, ref, kTolDoubleRef);
  expect_close("rope out (float)", run_rope<float>(qkv, s, true), ref, kTolFloatVsDouble);
  // The value heads are untouched, bit for bit.
  for (size_t r = 0; r < size_t(s.B) * s.T; ++r)
    for (int j = (s.NH + s.KVH) * s.HS; j < s.row(); ++j)
      ASSERT_EQ(got[r * s.row() + j], qkv[r * s.row() + j]);
}

TEST(CpuOps, RopeBackwardIsTheInverseAndTheTranspose) {
  const AttnShape s = kRopeShape;
  Vec qkv = random_vec(s.qkv_size(), 52);
  const auto roundtrip = run_rope<double>(to_double(run_rope<double>(qkv, s, true)), s, false);
  expect_close("rope_backward(rope_forward(x))", roundtrip, qkv, kTolDoubleRef);
  const Vec R = random_vec(qkv.size(), 53);
  const Vec grad = run_rope<double>(R, s, false);
  expect_grad("rope dqkv", qkv, grad, [&] { return dot(run_rope<double>(qkv, s, true), R); });
  expect_close("rope dqkv (float)", run_rope<float>(R, s, false), grad, kTolFloatVsDouble);
}

// ---- attention --------------------------------------------------------------------------------------------
template <class F>
struct AttnOut {
  std::vector<F> out, att;
};

template <class F>
AttnOut<F> run_attention(const Vec& qkv, const AttnShape& s) {
  AttnOut<F> r{cast<F>(nan_vec(s.out_size())), cast<F>(nan_vec(s.att_size()))};
  const auto x = cast<F>(qkv);
  attention_forward(kCpu, r.out.data(), r.att.data(), x.data(), s.B, s.T, s.NH, s.KVH, s.HS);
  return r;
}

template <class F>
std::vector<F> run_attention_backward(const Vec& qkv, const Vec& dout, const AttnShape& s) {
  const auto fwd = run_attention<F>(qkv, s);
  std::vector<F> dqkv = cast<F>(nan_vec(s.qkv_size())), datt = cast<F>(nan_vec(s.att_size()));
  const auto x = cast<F>(qkv), dy = cast<F>(dout);
  attention_backward(kCpu, dqkv.data(), datt.data(), dy.data(), x.data(), fwd.att.data(), s.B, s.T, s.NH,
                     s.KVH, s.HS);
  return dqkv;
}

// The naive reference: a triple loop per (b, h, t).
AttnOut<double> naive_attention(const Vec& qkv, const AttnShape& s) {
  AttnOut<double> r{Vec(s.out_size(), 0.0), Vec(s.att_size(), 0.0)};
  const double scale = 1.0 / std::sqrt(double(s.HS));
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.NH; ++h) {
      const int g = h / (s.NH / s.KVH);
      for (int t = 0; t < s.T; ++t) {
        const double* q = qkv.data() + (size_t(b) * s.T + t) * s.row() + size_t(h) * s.HS;
        double* a = r.att.data() + ((size_t(b) * s.NH + h) * s.T + t) * s.T;
        double mx = -1e300;
        for (int u = 0; u <= t; ++u) {
          const double* k = qkv.data() + (size_t(b) * s.T + u) * s.row() + size_t(s.NH + g) * s.HS;
          double d = 0;
          for (int i = 0; i < s.HS; ++i) d += q[i] * k[i];
          a[u] = d * scale;
          mx = std::max(mx, a[u]);
        }
        double sum = 0;
        for (int u = 0; u <= t; ++u) sum += (a[u] = std::exp(a[u] - mx));
        for (int u = 0; u <= t; ++u) a[u] /= sum;
        double* o = r.out.data() + (size_t(b) * s.T + t) * s.NH * s.HS + size_t(h) * s.HS;
        for (int u = 0; u <= t; ++u) {
          const double* v = qkv.data() + (size_t(b) * s.T + u) * s.row() + size_t(s.NH + s.KVH + g) * s.HS;
          for (int i = 0; i < s.HS; ++i) o[i] += a[u] * v[i];
        }
      }
    }
  return r;
}

// Small odd shapes (GQA, MHA, one head) and one long enough for several 64-row causal blocks (T = 150).
const AttnShape kAttnShapes[] = {{2, 5, 4, 2, 3}, {2, 7, 3, 3, 5}, {1, 6, 1, 1, 4}, {1, 150, 2, 1, 4}};

TEST(CpuOps, AttentionForwardMatchesNaive) {
  for (const AttnShape& s : kAttnShapes) {
    SCOPED_TRACE(::testing::Message()
                 << "B=" << s.B << " T=" << s.T << " NH=" << s.NH << " KVH=" << s.KVH << " HS=" << s.HS);
    const Vec qkv = random_vec(s.qkv_size(), 61, -2.0, 2.0);
    const auto ref = naive_attention(qkv, s);
    const auto got = run_attention<double>(qkv, s);
    expect_close("attention out", got.out, ref.out, kTolDoubleRef);
    expect_close("attention att", got.att, ref.att, kTolDoubleRef);
    const auto got_f = run_attention<float>(qkv, s);
    expect_close("attention out (float)", got_f.out, ref.out, kTolFloatVsDouble);
    expect_close("attention att (float)", got_f.att, ref.att, kTolFloatVsDouble);
  }
}

TEST(CpuOps, AttentionBackwardMatchesFiniteDifferences) {
  for (const AttnShape& s : kAttnShapes) {
    SCOPED_TRACE(::testing::Message()
                 << "B=" << s.B << " T=" << s.T << " NH=" << s.NH << " KVH=" << s.KVH << " HS=" << s.HS);
    Vec qkv = random_vec(s.qkv_size(), 62, -2.0, 2.0);
    const Vec R = random_vec(s.out_size(), 63);
    const auto dqkv = to_double(run_attention_backward<double>(qkv, R, s));
    // The long shape: a sample of coordinates (every one would take seconds under ASan).
    const auto at = s.T > 64 ? sample_indices(qkv.size(), 300, 64) : std::vector<size_t>{};
    expect_grad(
        "attention dqkv", qkv, dqkv, [&] { return dot(run_attention<double>(qkv, s).out, R); }, at);
    expect_close("attention dqkv (float)", run_attention_backward<float>(qkv, R, s), dqkv, kTolFloatVsDouble);
  }
}

TEST(CpuOps, AttentionDecodeMatchesForwardWithPrefixCache) {
  const AttnShape s{1, 9, 4, 2, 5};
  const Vec qkv = random_vec(s.qkv_size(), 65, -2.0, 2.0);
  const auto full = run_attention<double>(qkv, s);
  const int KC = s.KVH * s.HS, OC = s.NH * s.HS;
  Vec kcache(size_t(s.T) * KC), vcache(size_t(s.T) * KC), q(size_t(s.T) * OC);
  for (int t = 0; t < s.T; ++t) {
    const double* row = qkv.data() + size_t(t) * s.row();
    std::copy(row, row + OC, q.begin() + size_t(t) * OC);
    std::copy(row + OC, row + OC + KC, kcache.begin() + size_t(t) * KC);
    std::copy(row + OC + KC, row + OC + 2 * KC, vcache.begin() + size_t(t) * KC);
  }
  for (auto [Tp, Tn] : {std::pair{0, 9}, std::pair{3, 2}, std::pair{8, 1}, std::pair{4, 5}}) {
    SCOPED_TRACE(::testing::Message() << "Tp=" << Tp << " Tn=" << Tn);
    Vec out = nan_vec(size_t(Tn) * OC), scratch = nan_vec(size_t(s.NH) * (Tp + Tn));
    attention_decode(kCpu, out.data(), scratch.data(), q.data() + size_t(Tp) * OC, kcache.data(),
                     vcache.data(), Tp, Tn, s.NH, s.KVH, s.HS);
    const Vec ref(full.out.begin() + size_t(Tp) * OC, full.out.begin() + size_t(Tp + Tn) * OC);
    expect_close("attention_decode vs forward", out, ref, kTolDoubleRef);
    std::vector<float> out_f = cast<float>(nan_vec(out.size())), scratch_f = cast<float>(scratch);
    const auto q_f = cast<float>(q), k_f = cast<float>(kcache), v_f = cast<float>(vcache);
    attention_decode(kCpu, out_f.data(), scratch_f.data(), q_f.data() + size_t(Tp) * OC, k_f.data(),
                     v_f.data(), Tp, Tn, s.NH, s.KVH, s.HS);
    expect_close("attention_decode (float)", out_f, ref, kTolFloatVsDouble);
  }
}

// ---- activations ------------------------------------------------------------------------------------------
constexpr int kFdim = 9;

template <class F>
std::vector<F> run_swiglu(const Vec& inp, int N, int Fd) {
  std::vector<F> out = cast<F>(nan_vec(size_t(N) * Fd));
  const auto x = cast<F>(inp);
  swiglu_forward(kCpu, out.data(), x.data(), N, Fd);
  return out;
}

TEST(CpuOps, SwigluMatchesNaiveAndFiniteDifferences) {
  Vec inp = random_vec(size_t(kN) * 2 * kFdim, 71, -4.0, 4.0);
  Vec ref(size_t(kN) * kFdim);
  for (int n = 0; n < kN; ++n)
    for (int j = 0; j < kFdim; ++j) {
      const double g = inp[n * 2 * kFdim + j], u = inp[n * 2 * kFdim + kFdim + j];
      ref[n * kFdim + j] = g / (1.0 + std::exp(-g)) * u;
    }
  expect_close("swiglu out", run_swiglu<double>(inp, kN, kFdim), ref, kTolDoubleRef);
  expect_close("swiglu out (float)", run_swiglu<float>(inp, kN, kFdim), ref, kTolFloatVsDouble);
  const Vec R = random_vec(ref.size(), 72);
  Vec dinp = nan_vec(inp.size());
  swiglu_backward(kCpu, dinp.data(), R.data(), inp.data(), kN, kFdim);
  expect_grad("swiglu dinp", inp, dinp, [&] { return dot(run_swiglu<double>(inp, kN, kFdim), R); });
  std::vector<float> dinp_f = cast<float>(nan_vec(inp.size()));
  const auto R_f = cast<float>(R), inp_f = cast<float>(inp);
  swiglu_backward(kCpu, dinp_f.data(), R_f.data(), inp_f.data(), kN, kFdim);
  expect_close("swiglu dinp (float)", dinp_f, dinp, kTolFloatVsDouble);
}

template <class F>
std::vector<F> run_gelu(const Vec& inp) {
  std::vector<F> out = cast<F>(nan_vec(inp.size()));
  const auto x = cast<F>(inp);
  gelu_forward(kCpu, out.data(), x.data(), int64_t(x.size()));
  return out;
}

TEST(CpuOps, GeluMatchesNaiveAndFiniteDifferences) {
  Vec inp = random_vec(37, 81, -5.0, 5.0);  // covers both saturated tails
  Vec ref(inp.size());
  for (size_t i = 0; i < inp.size(); ++i) {
    const double x = inp[i];
    ref[i] = 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / std::numbers::pi) * (x + 0.044715 * x * x * x)));
  }
  expect_close("gelu out", run_gelu<double>(inp), ref, kTolDoubleRef);
  expect_close("gelu out (float)", run_gelu<float>(inp), ref, kTolFloatVsDouble);
  const Vec R = random_vec(inp.size(), 82);
  Vec dinp = nan_vec(inp.size());
  gelu_backward(kCpu, dinp.data(), R.data(), inp.data(), int64_t(inp.size()));
  expect_grad("gelu dinp", inp, dinp, [&] { return dot(run_gelu<double>(inp), R); });
  std::vector<float> dinp_f = cast<float>(nan_vec(inp.size()));
  const auto R_f = cast<float>(R), inp_f = cast<float>(inp);
  gelu_backward(kCpu, dinp_f.data(), R_f.data(), inp_f.data(), int64_t(inp.size()));
  expect_close("gelu dinp (float)", dinp_f, dinp, kTolFloatVsDouble);
}

// The backward of out = gelu(pre) @ w^T + b with GELU's derivative fused (matmul_backward_dgelu, the twin of
// cuBLASLt's DGELU epilogue): dpre, dweight, dbias against central differences of L = sum(out * R), pre in
// [-3, 3) where the derivative is far from constant; float vs double.
TEST(CpuOps, MatmulBackwardWithGeluDerivativeMatchesFiniteDifferences) {
  Vec pre = random_vec(kN * kIC, 47, -3.0, 3.0), w = random_vec(kOC * kIC, 48), b = random_vec(kOC, 49);
  const Vec R = random_vec(kN * kOC, 50);
  const Vec dw0 = random_vec(w.size(), 51), db0 = random_vec(kOC, 52);
  auto act_of = [&] { return to_double(run_gelu<double>(pre)); };
  const Vec act = act_of();
  Vec dpre = nan_vec(pre.size()), dw = dw0, db = db0;
  matmul_backward_dgelu(kCpu, dpre.data(), dw.data(), db.data(), R.data(), act.data(), w.data(), pre.data(),
                        kN, kIC, kOC);
  auto loss = [&] { return dot(run_matmul<double>(act_of(), w, &b, kN, kIC, kOC), R); };
  expect_grad("matmul+dgelu dpre", pre, dpre, loss);
  expect_grad("matmul+dgelu dweight", w, sub(dw, dw0), loss);
  expect_grad("matmul+dgelu dbias", b, sub(db, db0), loss);
  const auto pre_f = cast<float>(pre), act_f = cast<float>(act), w_f = cast<float>(w), R_f = cast<float>(R);
  std::vector<float> dpre_f = cast<float>(nan_vec(pre.size())), dw_f = cast<float>(dw0),
                     db_f = cast<float>(db0);
  matmul_backward_dgelu(kCpu, dpre_f.data(), dw_f.data(), db_f.data(), R_f.data(), act_f.data(), w_f.data(),
                        pre_f.data(), kN, kIC, kOC);
  expect_close("matmul+dgelu dpre (float)", dpre_f, dpre, kTolFloatVsDouble);
  expect_close("matmul+dgelu dweight (float)", dw_f, dw, kTolFloatVsDouble);
  expect_close("matmul+dgelu dbias (float)", db_f, db, kTolFloatVsDouble);
}

// ---- residual ---------------------------------------------------------------------------------------------
TEST(CpuOps, ResidualForwardInPlaceAndBackwardAccumulates) {
  const size_t n = 41;
  const Vec a = random_vec(n, 91), b = random_vec(n, 92);
  Vec ref(n);
  for (size_t i = 0; i < n; ++i) ref[i] = a[i] + b[i];
  Vec out = nan_vec(n);
  residual_forward(kCpu, out.data(), a.data(), b.data(), int64_t(n));
  expect_close("residual out", out, ref, kTolDoubleRef);
  Vec stream = a;  // out aliases a
  residual_forward(kCpu, stream.data(), stream.data(), b.data(), int64_t(n));
  expect_close("residual out (in place)", stream, ref, kTolDoubleRef);
  std::vector<float> out_f = cast<float>(nan_vec(n));
  const auto a_f = cast<float>(a), b_f = cast<float>(b);
  residual_forward(kCpu, out_f.data(), a_f.data(), b_f.data(), int64_t(n));
  expect_close("residual out (float)", out_f, ref, kTolFloatVsDouble);

  const Vec dout = random_vec(n, 93), da0 = random_vec(n, 94), db0 = random_vec(n, 95);
  Vec da = da0, db = db0;
  residual_backward(kCpu, da.data(), db.data(), dout.data(), int64_t(n));
  expect_close("residual da", sub(da, da0), dout, kTolDoubleRef);
  expect_close("residual db", sub(db, db0), dout, kTolDoubleRef);
  residual_backward(kCpu, da.data(), static_cast<double*>(nullptr), dout.data(), int64_t(n));
  Vec two = dout;
  for (double& x : two) x *= 2.0;
  expect_close("residual da twice", sub(da, da0), two, kTolTwice);
  expect_close("residual db untouched with null", sub(db, db0), dout, kTolDoubleRef);
}

// ---- softmax + cross-entropy ------------------------------------------------------------------------------
constexpr int32_t kIgnore = -100;
constexpr float kDloss = 0.37f;

std::vector<int32_t> ce_targets(int N, int V) {
  auto tg = random_tokens(size_t(N), V, 101);
  tg[2] = kIgnore;
  if (N > 7) tg[7] = kIgnore;
  return tg;
}

template <class F>
std::vector<F> run_ce(const Vec& logits, const std::vector<int32_t>& tg, int N, int V, float dloss,
                      std::vector<F>* grad_out = nullptr) {
  std::vector<F> x = cast<F>(logits), losses = cast<F>(nan_vec(size_t(N)));
  softmax_cross_entropy(kCpu, x.data(), losses.data(), tg.data(), N, V, kIgnore, dloss);
  if (grad_out) *grad_out = x;
  return losses;
}

TEST(CpuOps, SoftmaxCrossEntropyMatchesNaiveAndFiniteDifferences) {
  const int N = kN, V = kV;
  const auto tg = ce_targets(N, V);
  Vec logits = random_vec(size_t(N) * V, 102, -3.0, 3.0);
  Vec ref(N, 0.0);
  for (int n = 0; n < N; ++n) {
    if (tg[n] == kIgnore) continue;
    double mx = -1e300, s = 0;
    for (int v = 0; v < V; ++v) mx = std::max(mx, logits[n * V + v]);
    for (int v = 0; v < V; ++v) s += std::exp(logits[n * V + v] - mx);
    ref[n] = std::log(s) + mx - logits[n * V + tg[n]];
  }
  std::vector<double> untouched;
  expect_close("ce losses", run_ce<double>(logits, tg, N, V, 0.0f, &untouched), ref, kTolDoubleRef);
  expect_bitwise("ce logits untouched when dloss = 0", untouched, logits);
  expect_close("ce losses (float)", run_ce<float>(logits, tg, N, V, 0.0f), ref, kTolFloatVsDouble);

  std::vector<double> grad;
  const auto losses = run_ce<double>(logits, tg, N, V, kDloss, &grad);
  expect_close("ce losses (with gradient)", losses, ref, kTolDoubleRef);
  for (int n : {2, 7}) {
    EXPECT_EQ(losses[n], 0.0) << "ignored row " << n;
    for (int v = 0; v < V; ++v)
      ASSERT_EQ(grad[size_t(n) * V + v], 0.0) << "ignored row " << n << " col " << v;
  }
  expect_grad("ce dlogits", logits, grad, [&] {
    double l = 0;
    for (double x : run_ce<double>(logits, tg, N, V, 0.0f)) l += x;
    return double(kDloss) * l;
  });
  std::vector<float> grad_f;
  run_ce<float>(logits, tg, N, V, kDloss, &grad_f);
  expect_close("ce dlogits (float)", grad_f, grad, kTolFloatVsDouble);
}

TEST(CpuOps, SoftmaxCrossEntropyLargeVocabularyFloatVsDouble) {
  const int N = 6, V = 5003;  // wide rows, large logits: the float exp and the double sums at scale
  const auto tg = ce_targets(N, V);
  const Vec logits = random_vec(size_t(N) * V, 103, -20.0, 20.0);
  std::vector<double> grad;
  std::vector<float> grad_f;
  const auto losses = run_ce<double>(logits, tg, N, V, kDloss, &grad);
  expect_close("ce losses large V (float)", run_ce<float>(logits, tg, N, V, kDloss, &grad_f),
               to_double(losses), kTolFloatVsDouble);
  expect_close("ce dlogits large V (float)", grad_f, grad, kTolFloatVsDouble);
}

TEST(CpuOps, SoftmaxOutputsNeverDenormal) {
  // Logits spread over hundreds of units: most probabilities underflow; they must be exact zeros.
  const int N = 8, V = 3001;
  const auto tg = ce_targets(N, V);
  std::vector<float> grad;
  run_ce<float>(random_vec(size_t(N) * V, 105, -300.0, 300.0), tg, N, V, 1e-6f, &grad);
  EXPECT_FALSE(has_denormal(grad));
  const AttnShape s{1, 96, 2, 1, 16};
  const auto fwd = run_attention<float>(random_vec(s.qkv_size(), 106, -40.0, 40.0), s);
  EXPECT_FALSE(has_denormal(fwd.att));
}

TEST(CpuOps, SoftmaxCrossEntropyRejectsTargetOutsideVocabulary) {
  const int N = 4, V = kV;
  for (int32_t bad : {kV, -1, 1000}) {
    std::vector<int32_t> tg = {1, 2, bad, 3};
    Vec logits = random_vec(size_t(N) * V, 104), losses(N);
    try {
      softmax_cross_entropy(kCpu, logits.data(), losses.data(), tg.data(), N, V, kIgnore, kDloss);
      ADD_FAILURE() << "target " << bad << " accepted";
    } catch (const strata::Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("target " + std::to_string(bad)), std::string::npos) << msg;
      EXPECT_NE(msg.find("row 2"), std::string::npos) << msg;
    }
  }
}

// STRATA_CHECK reports and aborts (an internal invariant, not a user error).
TEST(CpuOpsDeathTest, PreconditionsAreChecked) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // OpenMP threads exist by now
  Vec x(8, 1.0);
  const double* null = nullptr;
  EXPECT_DEATH(rmsnorm_forward(kCpu, x.data(), x.data(), x.data(), null, 2, 4, kEps),
               "rmsnorm_forward: null");
  EXPECT_DEATH(matmul_forward(kCpu, x.data(), x.data(), x.data(), null, 0, 2, 2), "matmul_forward: N=0");
  EXPECT_DEATH(rope_forward(kCpu, x.data(), 1, 1, 1, 1, 3, kRopeBase, 0), "head size 3 is odd");
  EXPECT_DEATH(attention_forward(kCpu, x.data(), x.data(), x.data(), 1, 1, 3, 2, 1),
               "not a multiple of KVH=2");
}

// The kernel-set query works, and a suggested override is one of the two sets we force.
TEST(CpuOps, BlasCoreQuery) {
  EXPECT_FALSE(cpu_blas_core().empty());
  const std::string better = cpu_blas_better_core();
  EXPECT_TRUE(better.empty() || better == "SkylakeX" || better == "Haswell") << better;
}

// ---- determinism ------------------------------------------------------------------------------------------
// Shapes past the serial cutoff (cpu_detail::kMinParallelWork elements), so the OpenMP paths run.
constexpr int kDetN = 300, kDetC = 131;
static_assert(int64_t{kDetN} * kDetC >= cpu_detail::kMinParallelWork);

// All float outputs of the ops whose reductions are guaranteed independent of the thread count.
std::vector<std::vector<float>> run_reductions() {
  std::vector<std::vector<float>> r;
  const auto x = cast<float>(random_vec(size_t(kDetN) * kDetC, 201)),
             dy = cast<float>(random_vec(x.size(), 202));
  const auto w = cast<float>(random_vec(kDetC, 203, 0.5, 1.5)), b = cast<float>(random_vec(kDetC, 204));
  std::vector<float> out(x.size()), mean(kDetN), rstd(kDetN), dx(x.size(), 0.0f), dw(kDetC, 0.0f),
      db(kDetC, 0.0f);
  rmsnorm_forward(kCpu, out.data(), rstd.data(), x.data(), w.data(), kDetN, kDetC, kEps);
  rmsnorm_backward(kCpu, dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), kDetN, kDetC);
  r.insert(r.end(), {out, rstd, dx, dw});
  layernorm_forward(kCpu, out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), kDetN, kDetC,
                    kEps);
  layernorm_backward(kCpu, dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), mean.data(),
                     rstd.data(), kDetN, kDetC);
  r.insert(r.end(), {out, mean, rstd, dx, dw, db});
  // embedding backward: 300 tokens from a vocabulary of 37, so rows repeat many times
  const int T = 75, B = kDetN / T, V = 37;
  const auto tok = random_tokens(size_t(kDetN), V, 205);
  std::vector<float> dwte(size_t(V) * kDetC, 0.0f), dwpe(size_t(T) * kDetC, 0.0f);
  embedding_backward(kCpu, dwte.data(), dwpe.data(), dy.data(), tok.data(), B, T, kDetC);
  r.insert(r.end(), {dwte, dwpe});
  // matmul bias gradient (the BLAS products are not part of this guarantee)
  const int IC = 3;
  const auto inp = cast<float>(random_vec(size_t(kDetN) * IC, 206));
  const auto wm = cast<float>(random_vec(size_t(kDetC) * IC, 210));
  std::vector<float> dwm(wm.size(), 0.0f), dbm(kDetC, 0.0f);
  matmul_backward(kCpu, static_cast<float*>(nullptr), dwm.data(), dbm.data(), dy.data(), inp.data(),
                  wm.data(), kDetN, IC, kDetC);
  r.push_back(dbm);
  // softmax cross-entropy: rows are independent
  std::vector<float> logits = x, losses(kDetN);
  const auto tg = random_tokens(size_t(kDetN), kDetC, 207);
  softmax_cross_entropy(kCpu, logits.data(), losses.data(), tg.data(), kDetN, kDetC, kIgnore, kDloss);
  r.insert(r.end(), {logits, losses});
  // activations, rope: element-wise or row-wise
  std::vector<float> act(x.size() / 2), dact(x.size());
  swiglu_forward(kCpu, act.data(), x.data(), kDetN, kDetC / 2);
  swiglu_backward(kCpu, dact.data(), dy.data(), x.data(), kDetN, kDetC / 2);
  r.insert(r.end(), {act, dact});
  gelu_forward(kCpu, out.data(), x.data(), int64_t(x.size()));
  gelu_backward(kCpu, dx.data(), dy.data(), x.data(), int64_t(x.size()));
  r.insert(r.end(), {out, dx});
  const AttnShape s{2, 70, 4, 2, 16};  // above kMinParallelFlops: the parallel path
  auto qkv = cast<float>(random_vec(s.qkv_size(), 208));
  rope_forward(kCpu, qkv.data(), s.B, s.T, s.NH, s.KVH, s.HS, kRopeBase, 0);
  r.push_back(qkv);
  // attention: one (b, head) task per thread, BLAS single-threaded inside the region
  std::vector<float> ao(s.out_size()), att(s.att_size()), datt(s.att_size()), dqkv(s.qkv_size());
  const auto dao = cast<float>(random_vec(s.out_size(), 209));
  attention_forward(kCpu, ao.data(), att.data(), qkv.data(), s.B, s.T, s.NH, s.KVH, s.HS);
  attention_backward(kCpu, dqkv.data(), datt.data(), dao.data(), qkv.data(), att.data(), s.B, s.T, s.NH,
                     s.KVH, s.HS);
  r.insert(r.end(), {ao, att, dqkv});
  return r;
}

TEST(CpuOps, DeterministicRunToRunAndAcrossThreadCounts) {
  std::vector<std::vector<float>> one, two, again;
  with_threads(1, [&] { one = run_reductions(); });
  with_threads(2, [&] { two = run_reductions(); });
  with_threads(2, [&] { again = run_reductions(); });
  ASSERT_EQ(one.size(), two.size());
  for (size_t i = 0; i < one.size(); ++i) {
    expect_bitwise("output " + std::to_string(i) + ", 2 threads twice", two[i], again[i]);
    expect_bitwise("output " + std::to_string(i) + ", 1 vs 2 threads", one[i], two[i]);
  }
}

TEST(CpuOps, MatmulDeterministicRunToRun) {
  const int N = 96, IC = 130, OC = 70;
  const auto x = cast<float>(random_vec(size_t(N) * IC, 301)),
             w = cast<float>(random_vec(size_t(OC) * IC, 302));
  const auto b = cast<float>(random_vec(OC, 303)), dy = cast<float>(random_vec(size_t(N) * OC, 304));
  auto run = [&] {
    std::vector<float> out(size_t(N) * OC), dx(x.size()), dw(w.size(), 0.0f), db(OC, 0.0f);
    matmul_forward(kCpu, out.data(), x.data(), w.data(), b.data(), N, IC, OC);
    matmul_backward(kCpu, dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), N, IC, OC);
    return std::vector<std::vector<float>>{out, dx, dw, db};
  };
  const auto r1 = run(), r2 = run();
  for (size_t i = 0; i < r1.size(); ++i) expect_bitwise("matmul output " + std::to_string(i), r1[i], r2[i]);
}

}  // namespace
}  // namespace strata::ops
