// The model runner's invariants: gradient accumulation over k micro-batches equals one k-times larger batch;
// the KV-cache generator reproduces the full forward's logits; ignored targets do not contribute; runs are
// deterministic; bad token ids are errors. (The numerics against PyTorch are in reference_test.cpp.)
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "engine/model.h"
#include "engine/optim.h"
#include "tests/test_util.h"
#include "tests/tolerances.h"

namespace strata {
namespace {

using test::kAccumTol;  // tolerances: tests/tolerances.h
using test::kCacheTol;
using test::kLossSumTol;

models::ModelConfig config(models::Family f) {
  models::ModelConfig c = models::preset(f == models::Family::kLlama ? "llama-tiny" : "gpt2-tiny");
  c.n_layer = 2;
  c.d_model = 24;
  c.n_head = 4;
  c.n_kv_head = f == models::Family::kLlama ? 2 : 4;
  c.d_ff = f == models::Family::kLlama ? 40 : 96;
  c.vocab_size = 37;
  c.max_seq_len = 16;
  return c;
}

// Max |a-b| / max |b| over a buffer.
double rel_err(const float* a, const float* b, int64_t n) {
  double err = 0, scale = 0;
  for (int64_t i = 0; i < n; ++i) {
    err = std::max(err, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  EXPECT_GT(scale, 0.0);
  return err / scale;
}

class ModelTest : public ::testing::TestWithParam<models::Family> {};

TEST_P(ModelTest, AccumulatedMicroBatchesEqualOneLargeBatch) {
  const models::ModelConfig cfg = config(GetParam());
  const int B = 2, T = 7, k = 3;
  const auto in = test::random_tokens(static_cast<size_t>(k) * B * T, cfg.vocab_size, 1);
  const auto tg = test::random_tokens(in.size(), cfg.vocab_size, 2);
  Model big(cfg, k * B, T), small(cfg, B, T);
  init_params(big.params(), 5);
  init_params(small.params(), 5);
  big.zero_grad();
  const float big_loss = big.forward(in.data(), tg.data());
  big.backward(1.0f);
  small.zero_grad();
  double small_loss = 0;
  for (int i = 0; i < k; ++i) {
    small_loss += small.forward(in.data() + i * B * T, tg.data() + i * B * T) / k;
    small.backward(1.0f / k);
  }
  EXPECT_NEAR(small_loss, big_loss, kLossSumTol * std::abs(big_loss));
  EXPECT_LT(rel_err(small.grads().data(), big.grads().data(), big.grads().numel()), kAccumTol);
}

TEST_P(ModelTest, GeneratorWithKvCacheMatchesFullForward) {
  const models::ModelConfig cfg = config(GetParam());
  const int T = 11;
  Model m(cfg, 1, T);
  init_params(m.params(), 9);
  const auto in = test::random_tokens(T, cfg.vocab_size, 3);
  m.forward(in.data(), nullptr);
  Generator gen(m.params());
  // A prompt of 4 tokens, then one token at a time: every step's logits equal the full forward's row.
  const float* logits = gen.append(in.data(), 4);
  EXPECT_LT(rel_err(logits, m.logits() + 3 * cfg.vocab_size, cfg.vocab_size), kCacheTol);
  for (int t = 4; t < T; ++t) {
    logits = gen.append(&in[static_cast<size_t>(t)], 1);
    EXPECT_LT(rel_err(logits, m.logits() + static_cast<int64_t>(t) * cfg.vocab_size, cfg.vocab_size),
              kCacheTol)
        << "position " << t;
  }
  EXPECT_EQ(gen.position(), T);
}

TEST_P(ModelTest, IgnoredTargetsDoNotContribute) {
  const models::ModelConfig cfg = config(GetParam());
  const int B = 2, T = 6;
  Model m(cfg, B, T);
  init_params(m.params(), 4);
  const auto in = test::random_tokens(B * T, cfg.vocab_size, 5);
  auto tg = test::random_tokens(B * T, cfg.vocab_size, 6);
  m.forward(in.data(), tg.data());
  std::vector<float> losses(m.losses(), m.losses() + B * T);
  tg[3] = kIgnoreIndex;
  tg[8] = kIgnoreIndex;
  const float loss = m.forward(in.data(), tg.data());
  EXPECT_EQ(m.num_valid_targets(), B * T - 2);
  double expect = 0;
  for (int i = 0; i < B * T; ++i)
    if (i != 3 && i != 8) expect += losses[static_cast<size_t>(i)];
  EXPECT_NEAR(loss, expect / (B * T - 2), kLossSumTol * expect / (B * T - 2));
  EXPECT_EQ(m.losses()[3], 0.0f);
  // All ignored: loss 0 and a zero gradient.
  std::vector<int32_t> none(B * T, kIgnoreIndex);
  m.zero_grad();
  EXPECT_EQ(m.forward(in.data(), none.data()), 0.0f);
  m.backward();
  EXPECT_EQ(grad_norm(m.grads()), 0.0);
}

TEST_P(ModelTest, ForwardBackwardIsDeterministic) {
  const models::ModelConfig cfg = config(GetParam());
  Model a(cfg, 3, 8), b(cfg, 3, 8);
  init_params(a.params(), 1);
  init_params(b.params(), 1);
  const auto in = test::random_tokens(24, cfg.vocab_size, 7), tg = test::random_tokens(24, cfg.vocab_size, 8);
  for (Model* m : {&a, &b}) {
    m->zero_grad();
    m->forward(in.data(), tg.data());
    m->backward();
  }
  EXPECT_TRUE(std::equal(a.grads().data(), a.grads().data() + a.grads().numel(), b.grads().data()));
}

TEST_P(ModelTest, OutOfRangeTokensAreErrors) {
  const models::ModelConfig cfg = config(GetParam());
  Model m(cfg, 1, 4);
  std::vector<int32_t> in{1, 2, cfg.vocab_size, 3};
  test::expect_one_line_error([&] { m.forward(in.data(), nullptr); },
                              {"input token", "outside the vocabulary"});
  test::expect_one_line_error([&] { Model(cfg, 1, cfg.max_seq_len + 1); },
                              {"sequence length", "max_seq_len"});
}

INSTANTIATE_TEST_SUITE_P(Families, ModelTest,
                         ::testing::Values(models::Family::kLlama, models::Family::kGpt2),
                         [](const auto& p) { return std::string(models::family_name(p.param)); });

}  // namespace
}  // namespace strata
