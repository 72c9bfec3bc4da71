// tests/kernels/cpu_adamw_test.cpp: the CPU optimizer ops (kernels/cpu/adamw.cpp) against the engine's AdamW
// (engine/optim.cpp), the reference the CUDA kernels are in turn tested against.
//
//   - adamw_update<Cpu, float> over a model's tensor table vs AdamW::step on the same data for three steps
//     (decay on the tensors the table decays, a folded clip scale): the moments bitwise equal, the parameters
//     to fp32 rounding of the folded step scalars;
//   - the double instantiation agrees with the float one;
//   - grad_norm_squared vs the engine's grad_norm squared, and independent of the thread count.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "engine/optim.h"
#include "engine/params.h"
#include "kernels/ops.h"
#include "models/model_config.h"
#include "tests/tolerances.h"

namespace strata {
namespace {

using test::kAdamTol;  // tolerances: tests/tolerances.h
using test::kNormTol;

constexpr ops::Cpu kCpu;

models::ModelConfig tiny() {
  models::ModelConfig c = models::preset("llama-tiny");
  c.n_layer = 2;
  c.d_model = 16;
  c.n_head = 2;
  c.n_kv_head = 1;
  c.d_ff = 24;
  c.vocab_size = 11;
  return c;
}

void fill_normal(ParamBuffer& b, std::mt19937_64& rng) {
  std::normal_distribution<float> normal;
  for (int64_t i = 0; i < b.numel(); ++i) b.data()[i] = normal(rng);
}

// One AdamWTensor per entry of the layout, pointing into the given flat buffers.
template <class F>
std::vector<ops::AdamWTensor<F>> table(const ParamLayout& layout, F* p, const F* g, float* m, float* v,
                                       float wd) {
  std::vector<ops::AdamWTensor<F>> out;
  for (const ParamEntry& e : layout.entries()) {
    ops::AdamWTensor<F> t;
    t.param = p + e.offset;
    t.grad = g + e.offset;
    t.m = m + e.offset;
    t.v = v + e.offset;
    t.n = e.numel();
    t.weight_decay = e.spec.weight_decay ? wd : 0.0f;
    out.push_back(t);
  }
  return out;
}

// The step scalars for step t of the engine's AdamW with config cfg (its bias corrections, in double, rounded
// to the float fields of AdamWStep).
ops::AdamWStep step_of(const AdamWConfig& cfg, long t, double lr, float grad_scale) {
  ops::AdamWStep s;
  s.lr = static_cast<float>(lr);
  s.beta1 = static_cast<float>(cfg.beta1);
  s.beta2 = static_cast<float>(cfg.beta2);
  s.eps = static_cast<float>(cfg.eps);
  s.bias_correction1 = static_cast<float>(1.0 - std::pow(cfg.beta1, static_cast<double>(t)));
  s.bias_correction2 = static_cast<float>(1.0 - std::pow(cfg.beta2, static_cast<double>(t)));
  s.grad_scale = grad_scale;
  return s;
}

TEST(CpuAdamW, MatchesEngineStepWithDecayOnTheTableTensorsOnly) {
  const ParamLayout layout(tiny());
  ParamBuffer p(layout), g(layout);
  init_params(p, 7);
  ParamBuffer q = p;  // the op's copy
  std::vector<float> m(static_cast<size_t>(p.numel()), 0.0f), v(m);
  AdamWConfig cfg;
  cfg.weight_decay = 0.1;
  AdamW engine(layout, cfg);
  auto tensors =
      table<float>(layout, q.data(), g.data(), m.data(), v.data(), static_cast<float>(cfg.weight_decay));
  int decayed = 0;
  for (const auto& t : tensors) decayed += t.weight_decay != 0.0f;
  ASSERT_GT(decayed, 0);
  ASSERT_LT(decayed, static_cast<int>(tensors.size()));  // both kinds are exercised
  std::mt19937_64 rng(3);
  // Rates exact in float, so lr itself is not a difference between the two; a clip scale folded in.
  const double lrs[] = {1.0 / 128, 1.0 / 256, 3.0 / 1024};
  const float scales[] = {1.0f, 0.75f, 0.5f};
  for (int t = 1; t <= 3; ++t) {
    fill_normal(g, rng);
    engine.step(p, g, lrs[t - 1], scales[t - 1]);
    ops::adamw_update(kCpu, tensors.data(), static_cast<int>(tensors.size()),
                      step_of(cfg, t, lrs[t - 1], scales[t - 1]));
  }
  // The moments do not depend on the folded scalars: the same fp32 operations, bit for bit.
  EXPECT_TRUE(std::equal(m.begin(), m.end(), engine.m().data()));
  EXPECT_TRUE(std::equal(v.begin(), v.end(), engine.v().data()));
  double max_err = 0, max_ref = 0, max_moved = 0;
  const ParamBuffer p0 = [&] {
    ParamBuffer b(layout);
    init_params(b, 7);
    return b;
  }();
  for (int64_t i = 0; i < p.numel(); ++i) {
    max_err = std::max(max_err, std::abs(static_cast<double>(q.data()[i]) - p.data()[i]));
    max_ref = std::max(max_ref, std::abs(static_cast<double>(p.data()[i])));
    max_moved = std::max(max_moved, std::abs(static_cast<double>(p.data()[i]) - p0.data()[i]));
  }
  EXPECT_GT(max_moved, 1e-3);  // the steps did move the parameters
  EXPECT_LE(max_err, kAdamTol * max_ref);
}

TEST(CpuAdamW, DoubleAgreesWithFloat) {
  const ParamLayout layout(tiny());
  ParamBuffer p(layout), g(layout);
  init_params(p, 5);
  std::mt19937_64 rng(11);
  fill_normal(g, rng);
  const size_t n = static_cast<size_t>(p.numel());
  std::vector<double> pd(p.data(), p.data() + n), gd(g.data(), g.data() + n);
  std::vector<float> mf(n, 0.0f), vf(n, 0.0f), md(n, 0.0f), vd(n, 0.0f);
  auto tf = table<float>(layout, p.data(), g.data(), mf.data(), vf.data(), 0.1f);
  auto td = table<double>(layout, pd.data(), gd.data(), md.data(), vd.data(), 0.1f);
  const AdamWConfig cfg;
  for (int t = 1; t <= 3; ++t) {
    const ops::AdamWStep s = step_of(cfg, t, 1e-2, 0.9f);
    ops::adamw_update(kCpu, tf.data(), static_cast<int>(tf.size()), s);
    ops::adamw_update(kCpu, td.data(), static_cast<int>(td.size()), s);
  }
  double max_err = 0, max_ref = 0;
  for (size_t i = 0; i < n; ++i) {
    max_err = std::max(max_err, std::abs(p.data()[i] - pd[i]));
    max_ref = std::max(max_ref, std::abs(pd[i]));
  }
  EXPECT_GT(max_ref, 0.0);
  EXPECT_LE(max_err, kAdamTol * max_ref);
}

TEST(CpuAdamW, MasterWeightsAreRejected) {
  float p = 1, g = 1, m = 0, v = 0, master = 1;
  ops::AdamWTensor<float> t{&p, &master, &g, &m, &v, 1, 0.0f};
  EXPECT_DEATH(ops::adamw_update(kCpu, &t, 1, ops::AdamWStep{}), "has master weights");
}

TEST(CpuGradNorm, MatchesEngineNormAndIgnoresThreadCount) {
  const ParamLayout layout(tiny());
  ParamBuffer g(layout);
  std::mt19937_64 rng(9);
  fill_normal(g, rng);
  // Uneven tensors, one over a chunk (2^16) so the chunked order is exercised, and an empty one.
  std::vector<float> big(70001);
  std::normal_distribution<float> normal;
  for (auto& x : big) x = normal(rng);
  std::vector<ops::ConstSpan<float>> spans;
  for (const ParamEntry& e : layout.entries()) spans.push_back({g.data() + e.offset, e.numel()});
  spans.push_back({big.data(), static_cast<int64_t>(big.size())});
  spans.push_back({nullptr, 0});
  double ref = grad_norm(g);
  ref *= ref;
  double big_sq = 0;
  for (float x : big) big_sq += static_cast<double>(x) * x;
  ref += big_sq;

  std::vector<double> as_double;
  std::vector<ops::ConstSpan<double>> dspans;
  for (const auto& s : spans) as_double.insert(as_double.end(), s.ptr, s.ptr + s.n);
  size_t at = 0;
  for (const auto& s : spans) dspans.push_back({as_double.data() + at, s.n}), at += static_cast<size_t>(s.n);
  double got_d = 0;
  ops::grad_norm_squared(kCpu, &got_d, dspans.data(), static_cast<int>(dspans.size()));
  EXPECT_NEAR(got_d, ref, kNormTol * ref);
  // The float op sums in double too: its result is the double one, rounded once.
  float got_f = 0;
  ops::grad_norm_squared(kCpu, &got_f, spans.data(), static_cast<int>(spans.size()));
  EXPECT_EQ(got_f, static_cast<float>(got_d));
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  double one_thread = 0;
  ops::grad_norm_squared(kCpu, &one_thread, dspans.data(), static_cast<int>(dspans.size()));
  omp_set_num_threads(std::max(threads, 2));
  double two_threads = 0;
  ops::grad_norm_squared(kCpu, &two_threads, dspans.data(), static_cast<int>(dspans.size()));
  omp_set_num_threads(threads);
  EXPECT_EQ(one_thread, two_threads);
  EXPECT_EQ(one_thread, got_d);
}

}  // namespace
}  // namespace strata
