// LR schedules against their closed forms, AdamW against a double-precision re-derivation of PyTorch's
// update, and gradient clipping against its definition.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <random>

#include "engine/optim.h"
#include "engine/schedule.h"
#include "models/model_config.h"
#include "tests/test_util.h"
#include "tests/tolerances.h"

namespace strata {
namespace {

using test::kAdamTol;
using test::kClippedNormTol;
using test::kNormTol;  // tolerances: tests/tolerances.h
using test::kScheduleTol;

TEST(Schedule, CosineWarmupThenDecayToMin) {
  Schedule s;
  s.kind = ScheduleKind::kCosine;
  s.max_lr = 1e-3;
  s.min_lr_frac = 0.1;
  s.warmup_steps = 10;
  s.total_steps = 110;
  s.validate();
  EXPECT_NEAR(s.lr(0), 1e-4, kScheduleTol);
  EXPECT_NEAR(s.lr(9), 1e-3, kScheduleTol);
  EXPECT_NEAR(s.lr(10), 1e-3, kScheduleTol);                 // p = 0
  EXPECT_NEAR(s.lr(60), 1e-4 + 0.9e-3 * 0.5, kScheduleTol);  // p = 1/2
  const double p = 99.0 / 100.0;
  EXPECT_NEAR(s.lr(109), 1e-4 + 0.9e-3 * 0.5 * (1 + std::cos(std::numbers::pi * p)), kScheduleTol);
  EXPECT_NEAR(s.lr(5000), s.lr(109), kScheduleTol);  // past the end: the last rate
  for (long i = 11; i < 110; ++i) EXPECT_LT(s.lr(i), s.lr(i - 1));
}

TEST(Schedule, ConstantAndWsd) {
  Schedule s;
  s.max_lr = 2e-3;
  s.warmup_steps = 4;
  s.total_steps = 20;
  s.kind = ScheduleKind::kConstant;
  EXPECT_NEAR(s.lr(1), 1e-3, kScheduleTol);
  EXPECT_NEAR(s.lr(15), 2e-3, kScheduleTol);
  s.kind = ScheduleKind::kWsd;
  s.decay_frac = 0.25;  // the last 5 steps decay: 15..19
  s.min_lr_frac = 0.0;
  s.validate();
  EXPECT_NEAR(s.lr(14), 2e-3, kScheduleTol);
  EXPECT_NEAR(s.lr(15), 2e-3 * 4 / 5, kScheduleTol);
  EXPECT_NEAR(s.lr(19), 0.0, kScheduleTol);
}

TEST(Schedule, BadFieldsAreOneLineErrors) {
  Schedule s;
  s.total_steps = 10;
  s.warmup_steps = 11;
  test::expect_one_line_error([&] { s.validate(); }, {"--warmup", "11"});
  s.warmup_steps = 9;
  s.kind = ScheduleKind::kWsd;
  s.decay_frac = 0.5;
  test::expect_one_line_error([&] { s.validate(); }, {"wsd", "overlaps"});
  test::expect_one_line_error([] { parse_schedule_kind("linear"); }, {"linear", "cosine, constant, wsd"});
}

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

TEST(AdamW, MatchesReferenceUpdateWithDecayOnMatricesOnly) {
  const ParamLayout layout(tiny());
  ParamBuffer p(layout), g(layout);
  init_params(p, 7);
  const size_t n = static_cast<size_t>(p.numel());
  std::vector<double> ref_p(n), m(n, 0.0), v(n, 0.0);
  for (size_t i = 0; i < n; ++i) ref_p[i] = p.data()[i];
  AdamWConfig cfg;
  cfg.weight_decay = 0.1;
  AdamW opt(layout, cfg);
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal;
  const double lrs[] = {1e-2, 5e-3, 2e-3};
  for (int t = 1; t <= 3; ++t) {
    for (int64_t i = 0; i < g.numel(); ++i) g.data()[i] = static_cast<float>(normal(rng));
    opt.step(p, g, lrs[t - 1]);
    for (const ParamEntry& e : layout.entries()) {
      for (int64_t i = e.offset; i < e.offset + e.numel(); ++i) {
        const size_t k = static_cast<size_t>(i);
        const double gi = g.data()[i], lr = lrs[t - 1];
        if (e.spec.weight_decay) ref_p[k] *= 1 - lr * cfg.weight_decay;
        m[k] = cfg.beta1 * m[k] + (1 - cfg.beta1) * gi;
        v[k] = cfg.beta2 * v[k] + (1 - cfg.beta2) * gi * gi;
        const double mh = m[k] / (1 - std::pow(cfg.beta1, t)), vh = v[k] / (1 - std::pow(cfg.beta2, t));
        ref_p[k] -= lr * mh / (std::sqrt(vh) + cfg.eps);
      }
    }
  }
  EXPECT_EQ(opt.t(), 3);
  double max_err = 0, norm = 0;
  for (int64_t i = 0; i < p.numel(); ++i) {
    max_err = std::max(max_err, std::abs(p.data()[i] - ref_p[static_cast<size_t>(i)]));
    norm += ref_p[static_cast<size_t>(i)] * ref_p[static_cast<size_t>(i)];
  }
  EXPECT_GT(norm, 0.0);
  EXPECT_LT(max_err, kAdamTol);
  // Norm gains (no decay) moved by the Adam term only; with lr 1e-2 and |update| <= lr they stay near 1.
  EXPECT_NEAR(p.tensor("attn_norm")[0], 1.0f, 0.05f);
}

TEST(Clip, ScaleBringsTheNormToMaxAndFoldsIntoAdamW) {
  const ParamLayout layout(tiny());
  ParamBuffer g(layout);
  double sq = 0;
  for (int64_t i = 0; i < g.numel(); ++i) {
    g.data()[i] = static_cast<float>((i % 7) - 3) * 0.5f;
    sq += static_cast<double>(g.data()[i]) * g.data()[i];
  }
  const double norm = grad_norm(g);
  EXPECT_NEAR(norm, std::sqrt(sq), kNormTol * std::sqrt(sq));
  const float scale = clip_scale(norm, 1.0);
  ParamBuffer clipped(layout);
  for (int64_t i = 0; i < g.numel(); ++i) clipped.data()[i] = g.data()[i] * scale;
  EXPECT_NEAR(grad_norm(clipped), 1.0, kClippedNormTol);
  // Below the threshold (the clipped gradient, norm 1, against 10), or with clipping off, nothing changes.
  EXPECT_EQ(clip_scale(grad_norm(clipped), 10.0), 1.0f);
  EXPECT_EQ(clip_scale(norm, 0.0), 1.0f);
  // The trainer folds the scale into the update: bit for bit the same as updating with clipped gradients.
  ParamBuffer p1(layout), p2(layout);
  init_params(p1, 3);
  init_params(p2, 3);
  AdamW folded(layout, AdamWConfig{}), separate(layout, AdamWConfig{});
  folded.step(p1, g, 1e-2, scale);
  separate.step(p2, clipped, 1e-2);
  EXPECT_TRUE(std::equal(p1.data(), p1.data() + p1.numel(), p2.data()));
}

TEST(InitParams, FollowsTheTableAndIsSeeded) {
  const ParamLayout layout(tiny());
  ParamBuffer a(layout), b(layout), c(layout);
  init_params(a, 1);
  init_params(b, 1);
  init_params(c, 2);
  EXPECT_TRUE(std::equal(a.data(), a.data() + a.numel(), b.data()));
  EXPECT_FALSE(std::equal(a.data(), a.data() + a.numel(), c.data()));
  for (const ParamEntry& e : layout.entries()) {
    const float* x = a.data() + e.offset;
    if (e.spec.init.kind == models::InitKind::kOnes) {
      for (int64_t i = 0; i < e.numel(); ++i) ASSERT_EQ(x[i], 1.0f) << e.spec.name;
    } else if (e.spec.init.kind == models::InitKind::kNormal) {
      double s = 0, s2 = 0;
      for (int64_t i = 0; i < e.numel(); ++i) {
        s += x[i];
        s2 += static_cast<double>(x[i]) * x[i];
      }
      const double n = static_cast<double>(e.numel()), sd = std::sqrt(s2 / n - (s / n) * (s / n));
      // Sample std of n normals: relative error ~ 1/sqrt(2n); allow 5 sigma.
      EXPECT_NEAR(sd, e.spec.init.std, 5.0 * e.spec.init.std / std::sqrt(2.0 * n)) << e.spec.name;
    }
  }
}

}  // namespace
}  // namespace strata
