// growth/guideline: the paper's growth-timing fit against its published check values, the base model, the
// per-phase FLOPs, the range warnings, input errors, and `strata plan` with --write (the schedule file is
// read back through CLI11's config parser as `strata train` reads it, and its grow stage through
// growth::parse_stage).
#include "growth/guideline.h"

#include <gtest/gtest.h>
#include <CLI/CLI.hpp>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "engine/check.h"
#include "engine/fileio.h"
#include "growth/spec.h"
#include "models/cli.h"
#include "tests/test_util.h"

namespace strata::growth {
namespace {

namespace fs = std::filesystem;
using strata::test::expect_one_line_error;
using strata::test::run_strata;

// The spec prints d in billions with two decimals; a value agrees when it rounds to the printed one.
constexpr double kPrintedHalfUlp = 0.005;
// Sums of two doubles against the budget they were split from: a few ulps.
constexpr double kSumRelTol = 1e-12;

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

bool has_warning(const GuidelinePlan& p, const std::string& fragment) {
  for (const auto& w : p.warnings)
    if (contains(w, fragment)) return true;
  return false;
}

GuidelineInput input(const std::string& preset, std::optional<double> tokens,
                     std::optional<double> flops = {}) {
  GuidelineInput in;
  in.target = models::preset(preset);
  in.tokens = tokens;
  in.flops = flops;
  return in;
}

// The spec's check values: nominal N, C = 6 N D.
TEST(Guideline, PaperCheckValues) {
  struct Check {
    double n, tokens, d_billions;
  };
  const Check checks[] = {
      {7e9, 2e12, 11.11},   // Llama2-7B
      {8e9, 15e12, 6.58},   // Llama3-8B
      {13e9, 2e12, 15.84},  // Llama2-13B
      {70e9, 2e12, 42.48},  // Llama2-70B
  };
  for (const Check& c : checks) {
    const double d = guideline_growth_tokens(c.n, 6.0 * c.n * c.tokens);
    EXPECT_NEAR(d / 1e9, c.d_billions, kPrintedHalfUlp) << "N=" << c.n << " D=" << c.tokens;
  }
}

TEST(Guideline, CheckValueThroughThePlanWithNominalN) {
  GuidelineInput in = input("llama-7b", 2e12);
  in.n_params = 7e9;
  const GuidelinePlan p = make_guideline_plan(in);
  EXPECT_DOUBLE_EQ(p.formula_flops, 6.0 * 7e9 * 2e12);
  EXPECT_NEAR(p.d / 1e9, 11.11, kPrintedHalfUlp);
  // Without --params N is the tensor table's count (6.74e9 for llama-7b): d shrinks as N^0.88.
  const GuidelinePlan counted = make_guideline_plan(input("llama-7b", 2e12));
  EXPECT_EQ(counted.n_params, 6'738'415'616.0);
  EXPECT_LT(counted.d, p.d);
  EXPECT_GT(counted.d, 0.9 * p.d);
}

TEST(Guideline, BaseModelIsTargetWithLOverGLayers) {
  const GuidelinePlan p = make_guideline_plan(input("llama-1.1b", 300e9));
  EXPECT_EQ(p.g, 4);
  EXPECT_EQ(p.base.n_layer, 6);  // the paper's base for g = 4
  EXPECT_EQ(p.base.d_model, p.target.d_model);
  EXPECT_EQ(p.base.n_head, p.target.n_head);
  EXPECT_EQ(p.base.n_kv_head, p.target.n_kv_head);
  EXPECT_EQ(p.base.d_ff, p.target.d_ff);
  EXPECT_EQ(p.base.vocab_size, p.target.vocab_size);
  EXPECT_EQ(make_guideline_plan(input("llama-3b", 200e9)).base.n_layer, 8);  // the paper's 3B base
  GuidelineInput g2 = input("llama-3b", 200e9);
  g2.g = 2;
  EXPECT_EQ(make_guideline_plan(g2).base.n_layer, 16);
  // Stacking the base g times with the schedule's stage gives back the target.
  const GuidelinePlan q = make_guideline_plan(input("llama-3b", 200e9));
  const models::ModelConfig grown = target_config(q.base, parse_stage(grow_spec(q)));
  EXPECT_EQ(grown.n_layer, q.target.n_layer);
  EXPECT_EQ(grown.d_model, q.target.d_model);
}

TEST(Guideline, PhasesSplitTheBudget) {
  for (const GuidelineInput& in : {input("llama-1.1b", 300e9), input("llama-410m", 400e9),
                                   input("llama-3b", {}, 4e21), input("gpt2-124m", 50e9)}) {
    const GuidelinePlan p = make_guideline_plan(in);
    const double f_target = models::train_flops_per_token(p.target, p.seq_len);
    const double f_base = models::train_flops_per_token(p.base, p.seq_len);
    ASSERT_GT(p.d, 0.0);
    ASSERT_TRUE(p.growth_happens) << p.target.name;
    EXPECT_EQ(p.seq_len, p.target.max_seq_len);
    EXPECT_NEAR(p.budget_flops, f_target * p.scratch_tokens, kSumRelTol * p.budget_flops);
    EXPECT_DOUBLE_EQ(p.small.tokens, p.d);
    EXPECT_DOUBLE_EQ(p.small.flops, f_base * p.d);
    EXPECT_NEAR(p.large.flops, f_target * p.large.tokens, kSumRelTol * p.budget_flops);
    EXPECT_NEAR(p.small.flops + p.large.flops, p.budget_flops, kSumRelTol * p.budget_flops) << p.target.name;
    // The grown run sees more tokens than scratch for the same compute (its first phase is cheaper).
    EXPECT_GT(p.small.tokens + p.large.tokens, p.scratch_tokens);
    EXPECT_LT(p.large.tokens, p.scratch_tokens);
  }
  // A FLOPs budget is used as the fit's C and as the budget; D follows from the target's FLOPs per token.
  const GuidelinePlan f = make_guideline_plan(input("llama-3b", {}, 4e21));
  EXPECT_EQ(f.formula_flops, 4e21);
  EXPECT_EQ(f.budget_flops, 4e21);
  EXPECT_DOUBLE_EQ(f.scratch_tokens, 4e21 / models::train_flops_per_token(f.target, 2048));
  // --seq-len changes Strata's count (the attention term), not the fit.
  GuidelineInput shorter = input("llama-1.1b", 300e9);
  shorter.seq_len = 1024;
  const GuidelinePlan s = make_guideline_plan(shorter);
  EXPECT_EQ(s.d, make_guideline_plan(input("llama-1.1b", 300e9)).d);
  EXPECT_LT(s.budget_flops, make_guideline_plan(input("llama-1.1b", 300e9)).budget_flops);
}

TEST(Guideline, NoWarningsInsideTheFit) {
  for (const char* preset : {"llama-410m", "llama-1.1b", "llama-3b"}) {
    const GuidelinePlan p = make_guideline_plan(input(preset, 300e9));
    EXPECT_TRUE(p.warnings.empty()) << preset << ": " << (p.warnings.empty() ? "" : p.warnings.front());
  }
}

TEST(Guideline, WarningsOutsideTheFit) {
  // 7B is above the fitted 410M..3B, and 6 N D at 2T tokens is above the budgets of the fitted runs.
  const GuidelinePlan big = make_guideline_plan(input("llama-7b", 2e12));
  EXPECT_TRUE(has_warning(big, "outside the fit's range")) << big.warnings.size();
  EXPECT_TRUE(has_warning(big, "FLOPs is outside"));
  // A CPU-sized model: far below the range, and the fit's d exceeds the whole budget.
  const GuidelinePlan tiny = make_guideline_plan(input("llama-tiny", 1e8));
  EXPECT_TRUE(has_warning(tiny, "outside the fit's range"));
  EXPECT_TRUE(has_warning(tiny, "growth never happens"));
  EXPECT_FALSE(tiny.growth_happens);
  EXPECT_EQ(tiny.large.tokens, 0.0);
  EXPECT_DOUBLE_EQ(tiny.small.flops, tiny.budget_flops);
  // A budget the small phase eats more than half of, but not all: for 1.1B at D = 12B the fit gives d ~ 27B,
  // and the 6-layer base costs ~0.29 of the target per token, so the small phase takes ~65% of the budget.
  const GuidelinePlan lopsided = make_guideline_plan(input("llama-1.1b", 12e9));
  ASSERT_TRUE(lopsided.growth_happens);
  EXPECT_GT(lopsided.small.flops, 0.5 * lopsided.budget_flops);
  EXPECT_TRUE(has_warning(lopsided, "more than half"));
  // A 1-layer base, g above the paper's range, a non-LLaMA family.
  GuidelineInput one = input("llama-tiny", 1e8);
  one.g = 4;
  EXPECT_TRUE(has_warning(make_guideline_plan(one), "1 layer"));
  GuidelineInput g8 = input("llama-mini", 1e8);
  g8.g = 8;
  EXPECT_TRUE(has_warning(make_guideline_plan(g8), "above the paper's optimum"));
  EXPECT_TRUE(has_warning(make_guideline_plan(input("gpt2-124m", 50e9)), "LLaMA-style models only"));
}

TEST(Guideline, MeasuredSpeedupOfTheNearestSize) {
  const MeasuredSpeedup& m = nearest_speedup(1.188e9, 300e9);
  EXPECT_STREQ(m.size, "1.1B");
  EXPECT_DOUBLE_EQ(m.speedup, 0.491);
  EXPECT_NEAR(m.compute_saving(), 1.0 - 1.0 / 1.491, 1e-15);
  EXPECT_STREQ(nearest_speedup(6.74e9, 300e9).where, "at 300B tokens (194B grown)");
  EXPECT_NEAR(nearest_speedup(6.74e9, 300e9).compute_saving(), 1.0 - 194.0 / 300.0, 1e-3);  // 54.6% rounded
  EXPECT_STREQ(nearest_speedup(3.7e8, 650e9).where, "at 700B tokens");
  EXPECT_STREQ(nearest_speedup(2.4e9, 150e9).where, "at 180B tokens");
}

TEST(Guideline, BadInputIsOneLineError) {
  expect_one_line_error([] { make_guideline_plan(input("llama-1.1b", {})); }, {"--tokens", "--flops"});
  expect_one_line_error([] { make_guideline_plan(input("llama-1.1b", 1e9, 1e21)); }, {"not both"});
  expect_one_line_error([] { make_guideline_plan(input("llama-1.1b", -5e9)); }, {"--tokens", "positive"});
  expect_one_line_error([] { make_guideline_plan(input("llama-1.1b", {}, 0.0)); }, {"--flops", "positive"});
  expect_one_line_error([] { make_guideline_plan(input("llama-1.1b", {}, std::nan(""))); }, {"--flops"});
  expect_one_line_error([] { make_guideline_plan(input("llama-1.1b", 1e300)); }, {"beyond"});
  expect_one_line_error([] { make_guideline_plan(input("llama-1.1b", {}, 5.0)); }, {"too small"});
  GuidelineInput g1 = input("llama-1.1b", 1e9);
  g1.g = 1;
  expect_one_line_error([&] { make_guideline_plan(g1); }, {"--g 1", "at least 2"});
  GuidelineInput g5 = input("llama-1.1b", 1e9);
  g5.g = 5;
  expect_one_line_error([&] { make_guideline_plan(g5); }, {"--g 5", "does not divide", "24"});
  GuidelineInput g48 = input("llama-1.1b", 1e9);
  g48.g = 48;
  expect_one_line_error([&] { make_guideline_plan(g48); }, {"--g 48"});
  GuidelineInput longer = input("llama-1.1b", 1e9);
  longer.seq_len = 4096;
  expect_one_line_error([&] { make_guideline_plan(longer); }, {"--seq-len 4096", "max_seq_len 2048"});
  GuidelineInput n = input("llama-1.1b", 1e9);
  n.n_params = -1.0;
  expect_one_line_error([&] { make_guideline_plan(n); }, {"--params"});
}

class PlanCli : public strata::test::TempDirTest {};

TEST_F(PlanCli, PrintsThePlan) {
  std::string out;
  ASSERT_EQ(run_strata("plan --model llama-1.1b --tokens 300e9", &out), 0) << out;
  for (const char* part : {"d = ", "6 layers", "small (before)", "large (after)", "6 N D", "1.1B",
                           "compute saving", "--n-layer 6", "--grow \"at=", "op=stack,g=4"})
    EXPECT_TRUE(contains(out, part)) << "lacks '" << part << "':\n" << out;
  EXPECT_FALSE(contains(out, "warning")) << out;
  // The paper's check value, reproduced from the command line with its nominal N.
  ASSERT_EQ(run_strata("plan --model llama-7b --tokens 2e12 --params 7e9", &out), 0) << out;
  EXPECT_TRUE(contains(out, "d = 11.11B tokens")) << out;
  EXPECT_TRUE(contains(out, "strata: warning: N = 7B parameters is outside")) << out;
}

TEST_F(PlanCli, BadInputExitsWithOneLine) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"plan --model llama-1.1b", "--tokens D or --flops C"},
      {"plan --model llama-1.1b --tokens 1e9 --flops 1e21", "not both"},
      {"plan --model llama-1.1b --tokens -1e9", "positive"},
      {"plan --model llama-1.1b --tokens 1e9 --g 1", "at least 2"},
      {"plan --model llama-1.1b --tokens 1e9 --g 5", "does not divide"},
      {"plan --model nope --tokens 1e9", "nope"},
  };
  for (const auto& [args, fragment] : cases) {
    std::string out;
    EXPECT_EQ(run_strata(args, &out), 1) << args << "\n" << out;
    EXPECT_EQ(out.rfind("strata: error: ", 0), 0u) << out;
    EXPECT_EQ(out.find('\n'), out.size() - 1) << "not one line: " << out;
    EXPECT_TRUE(contains(out, fragment)) << out;
  }
}

// Reads a schedule file the way `strata --config FILE train` does: CLI11's TOML reader, a [train] section,
// unknown keys an error, the model options of `strata train`.
struct ReadBack {
  models::ModelOptions model;
  int seq_len = 0;
  int64_t tokens = 0;
  std::vector<std::string> grow;
};
ReadBack read_schedule(const std::string& path) {
  ReadBack r;
  CLI::App app{"schedule reader", "strata"};
  app.set_config("--config");
  app.allow_config_extras(CLI::config_extras_mode::error);
  CLI::App* train = app.add_subcommand("train");
  models::add_model_options(*train, r.model);
  train->add_option("--seq-len", r.seq_len);
  train->add_option("--tokens", r.tokens);
  train->add_option("--grow", r.grow);
  const std::vector<std::string> args = {"strata", "--config", path, "train"};
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  app.parse(static_cast<int>(argv.size()), argv.data());
  return r;
}

TEST_F(PlanCli, WritesAScheduleThatReadsBack) {
  const std::string file = path("grow.toml");
  std::string out;
  ASSERT_EQ(run_strata("plan --model llama-1.1b --tokens 300e9 --write " + file, &out), 0) << out;
  const std::string text = read_file(file);
  for (const char* part :
       {"[train]\n", "model = \"llama-1.1b\"\n", "n-layer = 6\n", "seq-len = 2048\n", "grow = [\"at="})
    EXPECT_TRUE(contains(text, part)) << "lacks '" << part << "':\n" << text;

  const GuidelinePlan p = make_guideline_plan(input("llama-1.1b", 300e9));
  const ReadBack r = read_schedule(file);
  const models::ModelConfig base = models::resolve_model(r.model);
  EXPECT_EQ(base.n_layer, 6);
  EXPECT_EQ(base.d_model, p.target.d_model);
  EXPECT_EQ(r.seq_len, 2048);
  EXPECT_EQ(r.tokens, p.total_tokens());
  ASSERT_EQ(r.grow.size(), 1u);
  const Stage s = parse_stage(r.grow[0]);
  EXPECT_EQ(s.op, Op::kStack);
  EXPECT_EQ(s.g, 4);
  EXPECT_EQ(s.unit, Unit::kTokens);
  EXPECT_EQ(s.at, static_cast<double>(p.growth_tokens()));
  EXPECT_EQ(target_config(base, s).n_layer, 24);
  // The printed flags say the same.
  EXPECT_TRUE(contains(out, "--tokens " + std::to_string(p.total_tokens()))) << out;
  EXPECT_TRUE(contains(out, "--grow \"" + r.grow[0] + "\"")) << out;
}

TEST_F(PlanCli, CustomShapeKeepsItsOverrides) {
  const std::string file = path("custom.toml");
  std::string out;
  const std::string shape = "--model llama-mini --d-model 512 --n-head 8 --n-kv-head 8 --n-layer 16";
  ASSERT_EQ(run_strata("plan " + shape + " --flops 1e20 --g 2 --write " + file, &out), 0) << out;
  const ReadBack r = read_schedule(file);
  const models::ModelConfig base = models::resolve_model(r.model);
  EXPECT_EQ(r.model.preset, "llama-mini");
  EXPECT_EQ(base.n_layer, 8);
  EXPECT_EQ(base.d_model, 512);
  EXPECT_EQ(base.n_head, 8);
  EXPECT_EQ(base.n_kv_head, 8);
  EXPECT_EQ(r.seq_len, 512);
  EXPECT_TRUE(contains(out, "--model llama-mini --n-layer 8 --d-model 512 --n-head 8 --n-kv-head 8")) << out;
  // `strata train` itself accepts every key: with no data it gets as far as looking for the shards. (A small
  // model, since train builds the model before it opens the data; a large global batch, since it places the
  // growth points by walking the run's steps.)
  ASSERT_EQ(
      run_strata("--config " + file + " train --global-batch-tokens 4096000 --data " + path("no_data"), &out),
      1)
      << out;
  EXPECT_TRUE(contains(out, "train_*.bin")) << out;
}

TEST_F(PlanCli, WriteRefusesAScheduleThatNeverGrows) {
  const std::string file = path("never.toml");
  std::string out;
  EXPECT_EQ(run_strata("plan --model llama-tiny --tokens 1e8 --write " + file, &out), 1) << out;
  EXPECT_TRUE(contains(out, "never happens")) << out;
  EXPECT_FALSE(fs::exists(file));
  // Without --write the plan is printed with the warning, and no flags to paste.
  ASSERT_EQ(run_strata("plan --model llama-tiny --tokens 1e8", &out), 0) << out;
  EXPECT_TRUE(contains(out, "strata: warning: the small phase alone")) << out;
  EXPECT_TRUE(contains(out, "no schedule")) << out;
  EXPECT_FALSE(contains(out, "--grow")) << out;
}

}  // namespace
}  // namespace strata::growth
