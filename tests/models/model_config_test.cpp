// models/model_config: parameter counts against published ones, the tensor table's layout and init rules,
// validation errors, overrides, and the `strata model` command.
#include "models/model_config.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "engine/check.h"
#include "models/cli.h"
#include "tests/test_util.h"

namespace strata::models {
namespace {

// Published totals (Hugging Face model cards / the GPT-2 paper's released checkpoints and Meta's Llama 2, the
// TinyLlama 1.1B release): an independent reference for the tensor table.
TEST(ModelConfig, ParameterCountsMatchPublishedModels) {
  EXPECT_EQ(count_parameters(preset("gpt2-124m")).total(), 124'439'808);
  EXPECT_EQ(count_parameters(preset("gpt2-350m")).total(), 354'823'168);
  EXPECT_EQ(count_parameters(preset("gpt2-774m")).total(), 774'030'080);
  EXPECT_EQ(count_parameters(preset("gpt2-1.5b")).total(), 1'557'611'200);
  EXPECT_EQ(count_parameters(preset("llama-7b")).total(), 6'738'415'616);  // = Llama-2-7B's shape
  ModelOptions tiny_llama;  // TinyLlama-1.1B: the paper's 1.1B shape with 22 layers
  tiny_llama.preset = "llama-1.1b";
  tiny_llama.n_layer = 22;
  EXPECT_EQ(count_parameters(resolve_model(tiny_llama)).total(), 1'100'048'384);
}

TEST(ModelConfig, EmbeddingSplit) {
  // GPT-2 small: token 50257 x 768 + position 1024 x 768 = 39,383,808; the rest is the 85 M of the blocks.
  const ParamCount g = count_parameters(preset("gpt2-124m"));
  EXPECT_EQ(g.embedding, 39'383'808);
  EXPECT_EQ(g.non_embedding, 85'056'000);
  // LLaMA: the untied LM head counts as embedding: 2 x 32000 x 4096.
  EXPECT_EQ(count_parameters(preset("llama-7b")).embedding, 2LL * 32000 * 4096);
}

TEST(ModelConfig, FlopsPerToken) {
  // gpt2-124m, T = 1024: N_matmul = 85,056,000 + 50257 x 768 (the tied head) = 123,653,376;
  // 6 N = 741,920,256; 12 L C T = 12 x 12 x 768 x 1024 = 113,246,208; sum 855,166,464.
  EXPECT_DOUBLE_EQ(train_flops_per_token(preset("gpt2-124m"), 1024), 855'166'464.0);
  // The attention term grows linearly in T.
  const ModelConfig l = preset("llama-1.1b");
  EXPECT_DOUBLE_EQ(train_flops_per_token(l, 4096) - train_flops_per_token(l, 2048), 12.0 * 24 * 2048 * 2048);
}

const TensorSpec& find(const std::vector<TensorSpec>& t, const std::string& name) {
  for (const auto& s : t)
    if (s.name == name) return s;
  throw std::runtime_error("no tensor " + name);
}

TEST(ModelConfig, LlamaTensorTable) {
  const ModelConfig c = preset("llama-1.1b");  // GQA: 32 heads, 4 KV heads of 64
  const auto t = tensor_table(c);
  const TensorSpec& qkv = find(t, "attn_qkv");
  EXPECT_TRUE(qkv.per_layer);
  EXPECT_EQ(qkv.shape, (std::vector<int64_t>{(32 + 2 * 4) * 64, 2048}));
  EXPECT_EQ(find(t, "mlp_gate_up").shape, (std::vector<int64_t>{2 * 5632, 2048}));
  EXPECT_EQ(find(t, "mlp_down").shape, (std::vector<int64_t>{2048, 5632}));
  EXPECT_FALSE(find(t, "lm_head").per_layer);
  // Small init sqrt(2 / 5C) and residual outputs 1 / (sqrt(C) L).
  EXPECT_NEAR(qkv.init.std, std::sqrt(2.0 / (5 * 2048)), 1e-12);
  EXPECT_NEAR(find(t, "attn_out").init.std, 1.0 / std::sqrt(2048.0) / 24, 1e-12);
  EXPECT_NEAR(find(t, "mlp_down").init.std, 1.0 / std::sqrt(2048.0) / 24, 1e-12);
  EXPECT_EQ(find(t, "attn_norm").init.kind, InitKind::kOnes);
  // Weight decay on matrices only.
  for (const auto& s : t) EXPECT_EQ(s.weight_decay, s.shape.size() == 2) << s.name;
  EXPECT_EQ(std::count_if(t.begin(), t.end(),
                          [](const TensorSpec& s) { return s.name.find("bias") != std::string::npos; }),
            0);
}

TEST(ModelConfig, Gpt2TensorTable) {
  const auto t = tensor_table(preset("gpt2-124m"));
  EXPECT_EQ(find(t, "pos_embedding").shape, (std::vector<int64_t>{1024, 768}));
  EXPECT_EQ(find(t, "attn_qkv_bias").shape, (std::vector<int64_t>{3 * 768}));
  EXPECT_EQ(find(t, "attn_qkv_bias").init.kind, InitKind::kZeros);
  EXPECT_DOUBLE_EQ(find(t, "mlp_up").init.std, 0.02);
  EXPECT_NEAR(find(t, "attn_out").init.std, 0.02 / std::sqrt(24.0), 1e-12);
  for (const auto& s : t) {
    EXPECT_NE(s.name, "lm_head");  // tied to tok_embedding
    EXPECT_EQ(s.weight_decay, s.shape.size() == 2) << s.name;
  }
}

TEST(ModelConfig, EveryPresetIsValidAndNamedOnce) {
  std::set<std::string> names;
  for (const auto& c : presets()) {
    EXPECT_NO_THROW(c.validate()) << c.name;
    EXPECT_TRUE(names.insert(c.name).second) << c.name;
    EXPECT_GT(count_parameters(c).non_embedding, 0) << c.name;
  }
  EXPECT_EQ(names.size(), 12u);
}

TEST(ModelConfig, InvalidShapesAreOneLineErrors) {
  using strata::test::expect_one_line_error;
  ModelConfig c = preset("llama-tiny");
  c.n_head = 5;
  expect_one_line_error([&] { c.validate(); }, {"llama-tiny", "n_head 5 does not divide d_model 128"});
  c = preset("llama-tiny");
  c.n_kv_head = 3;
  expect_one_line_error([&] { c.validate(); }, {"n_kv_head 3", "divide n_head 4"});
  c = preset("gpt2-tiny");
  c.n_kv_head = 2;
  expect_one_line_error([&] { c.validate(); }, {"GPT-2", "grouped-query"});
  c = preset("llama-tiny");
  c.n_layer = 0;
  expect_one_line_error([&] { c.validate(); }, {"n_layer must be at least 1"});
  expect_one_line_error([] { preset("llama-13b"); },
                        {"unknown model preset 'llama-13b'", "llama-7b", "gpt2-tiny"});
}

TEST(ModelConfig, OverridesApplyAndValidate) {
  ModelOptions o;
  o.preset = "gpt2-tiny";
  o.n_head = 8;  // GPT-2: KV heads follow
  o.n_layer = 6;
  const ModelConfig c = resolve_model(o);
  EXPECT_EQ(c.name, "gpt2-tiny+overrides");
  EXPECT_EQ(c.n_layer, 6);
  EXPECT_EQ(c.n_kv_head, 8);
  o.d_model = 100;  // 8 heads do not divide 100
  strata::test::expect_one_line_error([&] { resolve_model(o); }, {"n_head 8 does not divide d_model 100"});
  EXPECT_EQ(resolve_model(ModelOptions{}).name, "llama-tiny");
}

TEST(ModelCli, PrintsCountsAndRejectsUnknownPresets) {
  std::string out;
  ASSERT_EQ(strata::test::run_strata("model --model gpt2-124m", &out), 0) << out;
  EXPECT_NE(out.find("total 124439808"), std::string::npos) << out;
  EXPECT_NE(out.find("attn_qkv"), std::string::npos) << out;
  ASSERT_EQ(strata::test::run_strata("model --list", &out), 0) << out;
  for (const auto& c : presets()) EXPECT_NE(out.find(c.name), std::string::npos) << c.name;
  EXPECT_EQ(strata::test::run_strata("model --model nope", &out), 1) << out;
  EXPECT_EQ(out.rfind("strata: error: unknown model preset 'nope'", 0), 0u) << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  EXPECT_EQ(strata::test::run_strata("model --model llama-tiny --n-head 3", &out), 1) << out;
  EXPECT_NE(out.find("n_head 3 does not divide d_model 128"), std::string::npos) << out;
}

}  // namespace
}  // namespace strata::models
