// growth/comm_cost: the data-parallel communication-cost calculator against hand-computed numbers (ring
// volumes per rank, collective and step times, the efficiency), its monotonicity, the 90% bandwidth, input
// errors, and `strata plan --gpus N --link-gbps X`.
#include "growth/comm_cost.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "engine/check.h"
#include "models/model_config.h"
#include "tests/test_util.h"

namespace strata::growth {
namespace {

using strata::test::expect_one_line_error;
using strata::test::run_strata;

// Sums and products of a handful of doubles against the same arithmetic written out: a few ulps.
constexpr double kRelTol = 1e-12;
// The 90% bandwidth is found by bisection; the plan at that bandwidth must be at 90% within this.
constexpr double kEfficiencyTol = 1e-3;

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

void expect_volume(const CommVolume& v, double rs, double ag, double ar) {
  EXPECT_DOUBLE_EQ(v.reduce_scatter, rs);
  EXPECT_DOUBLE_EQ(v.all_gather, ag);
  EXPECT_DOUBLE_EQ(v.all_reduce, ar);
  EXPECT_DOUBLE_EQ(v.total(), rs + ag + ar);
}

// N = 1000 parameters, grad_bytes 2, param_bytes 4 (different, so the all-gather shows which one it uses).
TEST(CommVolume, HandComputedRing) {
  // R = 1: no communication in either stage.
  expect_volume(dp_bytes_per_rank(1000, 1, 0, 2, 4), 0, 0, 0);
  expect_volume(dp_bytes_per_rank(1000, 1, 1, 2, 4), 0, 0, 0);
  // R = 2, (R-1)/R = 1/2. ZeRO-0: all-reduce 2 * 1/2 * 1000 * 2 = 2000.
  expect_volume(dp_bytes_per_rank(1000, 2, 0, 2, 4), 0, 0, 2000);
  // ZeRO-1: reduce-scatter 1/2 * 1000 * 2 = 1000, all-gather 1/2 * 1000 * 4 = 2000.
  expect_volume(dp_bytes_per_rank(1000, 2, 1, 2, 4), 1000, 2000, 0);
  // R = 4, 3/4. ZeRO-0: 2 * 3/4 * 2000 = 3000. ZeRO-1: 3/4 * 2000 = 1500, 3/4 * 4000 = 3000.
  expect_volume(dp_bytes_per_rank(1000, 4, 0, 2, 4), 0, 0, 3000);
  expect_volume(dp_bytes_per_rank(1000, 4, 1, 2, 4), 1500, 3000, 0);
  // R = 8, 7/8. ZeRO-0: 2 * 7/8 * 2000 = 3500. ZeRO-1: 7/8 * 2000 = 1750, 7/8 * 4000 = 3500.
  expect_volume(dp_bytes_per_rank(1000, 8, 0, 2, 4), 0, 0, 3500);
  expect_volume(dp_bytes_per_rank(1000, 8, 1, 2, 4), 1750, 3500, 0);
}

// A ring all-reduce is a reduce-scatter followed by an all-gather of the same buffer: with grad_bytes ==
// param_bytes both stages send the same bytes per step (ZeRO-1 saves memory, not communication).
TEST(CommVolume, Zero1EqualsZero0WhenElementSizesMatch) {
  for (int world : {1, 2, 3, 8, 16, 1000})
    for (double n : {1.0, 124439808.0, 6.74e9})
      for (double bytes : {2.0, 4.0}) {
        const double z0 = dp_bytes_per_rank(n, world, 0, bytes, bytes).total();
        const double z1 = dp_bytes_per_rank(n, world, 1, bytes, bytes).total();
        EXPECT_NEAR(z1, z0, kRelTol * z0) << "world " << world << " n " << n;
      }
}

TEST(CommVolume, BadInputs) {
  expect_one_line_error([] { dp_bytes_per_rank(1000, 0, 0, 2, 2); }, {"--gpus 0", "at least 1"});
  expect_one_line_error([] { dp_bytes_per_rank(1000, 2, 2, 2, 2); }, {"--zero 2", "0", "1"});
  expect_one_line_error([] { dp_bytes_per_rank(0, 2, 0, 2, 2); }, {"parameter count", "positive"});
  expect_one_line_error([] { dp_bytes_per_rank(1000, 2, 0, 0, 2); }, {"--grad-bytes 0"});
  expect_one_line_error([] { dp_bytes_per_rank(1000, 2, 1, 2, -1); }, {"--param-bytes -1"});
  expect_one_line_error([] { dp_bytes_per_rank(NAN, 2, 1, 2, 2); }, {"parameter count"});
}

CommCostInput gpt2_input(int gpus, std::optional<double> link_gbps) {
  CommCostInput in;
  in.model = models::preset("gpt2-124m");
  in.gpus = gpus;
  in.link_gbps = link_gbps;
  return in;
}

// gpt2-124m on 16 GPUs (2 nodes of 8) at 100 Gbit/s, the defaults otherwise (ZeRO-1, bf16, 524288 tokens,
// T = 1024, 989.4 TFLOP/s x 45%, 10 us per hop, overlap).
TEST(CommCostPlan, HandComputedGpt2On16Gpus) {
  const CommCostPlan p = make_comm_cost_plan(gpt2_input(16, 100.0));
  // N: wte 50257 x 768 = 38597376, wpe 1024 x 768 = 786432, per layer 12 C^2 + 13 C = 7087872 (x 12 =
  // 85054464), final LayerNorm 2 x 768 = 1536; the head is tied: 124439808.
  EXPECT_EQ(p.n_params, 124439808.0);
  // F = 6 N_matmul + 12 L C T: N_matmul = N - wpe (the tied head counted once as a product) = 123653376,
  // 6 x 123653376 = 741920256, 12 x 12 x 768 x 1024 = 113246208: 855166464.
  EXPECT_EQ(p.flops_per_token, 855166464.0);
  EXPECT_TRUE(p.inter_node);
  EXPECT_EQ(p.bandwidth_gbps, 100.0);
  // Each collective: 15/16 x 124439808 x 2 = 233324640 bytes.
  EXPECT_DOUBLE_EQ(p.volume.reduce_scatter, 233324640.0);
  EXPECT_DOUBLE_EQ(p.volume.all_gather, 233324640.0);
  EXPECT_EQ(p.volume.all_reduce, 0.0);
  // 100 Gbit/s = 12.5e9 bytes/s: 233324640 / 12.5e9 = 18.6659712 ms, plus 15 hops x 10 us = 0.15 ms.
  EXPECT_NEAR(p.grad_comm_s, 18.8159712e-3, kRelTol);
  EXPECT_NEAR(p.gather_comm_s, 18.8159712e-3, kRelTol);
  // Compute: 855166464 x 524288 / (16 x 989.4e12 x 0.45) = 448353515077632 / 7.12368e15 = 62.93847 ms.
  const double compute = 855166464.0 * 524288.0 / (16 * 989.4e12 * 0.45);
  EXPECT_NEAR(p.compute_s, compute, kRelTol);
  EXPECT_NEAR(p.compute_s, 62.93847e-3, 1e-8);
  // The reduce-scatter (18.8 ms) fits in the backward pass (2/3 x 62.9 = 42.0 ms): all hidden. The all-gather's
  // first stage, the embeddings (wte + wpe = 39383808 of N: f = 0.3164888), is exposed: 5.95504 ms; the rest,
  // 12.86093 ms, fits in the next forward pass (1/3 x 62.9 = 20.98 ms). Step = 62.93847 + 5.95504 =
  // 68.89351 ms, efficiency = 62.93847 / 68.89351 = 0.91356.
  const double f = 39383808.0 / 124439808.0;
  EXPECT_NEAR(p.front_share, f, kRelTol);
  EXPECT_NEAR(p.hidden_s, p.grad_comm_s, kRelTol);
  EXPECT_NEAR(p.gather_hidden_s, (1 - f) * 18.8159712e-3, kRelTol);
  EXPECT_NEAR(p.exposed_s(), f * 18.8159712e-3, kRelTol);
  EXPECT_NEAR(p.step_s, compute + f * 18.8159712e-3, kRelTol);
  EXPECT_NEAR(p.efficiency, compute / (compute + f * 18.8159712e-3), kRelTol);
  EXPECT_NEAR(p.efficiency, 0.91356, 1e-5);
  EXPECT_NEAR(p.tokens_per_s, 524288.0 / p.step_s, 1e-6);
  // 90%: step = compute / 0.9, so the exposed stage may take compute / 9 = 6.99316 ms: the whole all-gather
  // 6.99316 / f = 22.0961 ms (its other stages, 15.10 ms, still fit in the forward pass), of which 0.15 ms hops:
  // B = 233324640 bytes / 21.9461 ms = 10.632e9 bytes/s = 85.05 Gbit/s (the reduce-scatter stays hidden).
  ASSERT_TRUE(p.gbps_for_90.has_value());
  const double b90 = 233324640.0 * 8 / (compute / 9 / f - 0.15e-3) / 1e9;
  EXPECT_NEAR(*p.gbps_for_90, b90, 1e-6 * b90);
  EXPECT_NEAR(b90, 85.05, 0.01);
  // Without overlap both collectives are exposed: 62.93847 + 2 x 18.81597 = 100.5704 ms.
  CommCostInput serial = gpt2_input(16, 100.0);
  serial.overlap = false;
  const CommCostPlan q = make_comm_cost_plan(serial);
  EXPECT_EQ(q.hidden_s, 0.0);
  EXPECT_EQ(q.gather_hidden_s, 0.0);
  EXPECT_NEAR(q.step_s, compute + 2 * 18.8159712e-3, kRelTol);
}

// ZeRO-0 on one node: the all-reduce runs over NVLink (3600 Gbit/s = 450e9 bytes/s) and hides completely
// behind the backward pass; without overlap it is all exposed.
TEST(CommCostPlan, Zero0OneNodeOverlap) {
  CommCostInput in = gpt2_input(8, std::nullopt);
  in.zero_stage = 0;
  CommCostPlan p = make_comm_cost_plan(in);
  EXPECT_FALSE(p.inter_node);
  EXPECT_EQ(p.bandwidth_gbps, 3600.0);
  // 2 x 7/8 x 124439808 x 2 = 435539328 bytes; / 450e9 = 0.967865 ms, plus 2 x 7 hops x 10 us = 0.14 ms.
  EXPECT_DOUBLE_EQ(p.volume.all_reduce, 435539328.0);
  EXPECT_NEAR(p.grad_comm_s, 435539328.0 / 450e9 + 0.14e-3, kRelTol);
  EXPECT_EQ(p.gather_comm_s, 0.0);
  EXPECT_NEAR(p.hidden_s, p.grad_comm_s, kRelTol);
  EXPECT_EQ(p.efficiency, 1.0);
  in.overlap = false;
  p = make_comm_cost_plan(in);
  EXPECT_EQ(p.hidden_s, 0.0);
  EXPECT_NEAR(p.step_s, p.compute_s + p.grad_comm_s, kRelTol);
  EXPECT_LT(p.efficiency, 1.0);
}

TEST(CommCostPlan, EfficiencyOneAtOneGpu) {
  for (int zero : {0, 1}) {
    CommCostInput in = gpt2_input(1, std::nullopt);
    in.zero_stage = zero;
    const CommCostPlan p = make_comm_cost_plan(in);
    EXPECT_EQ(p.volume.total(), 0.0);
    EXPECT_EQ(p.comm_s(), 0.0);
    EXPECT_EQ(p.efficiency, 1.0);
    EXPECT_EQ(p.step_s, p.compute_s);
    EXPECT_FALSE(p.gbps_for_90.has_value());
  }
}

TEST(CommCostPlan, EfficiencyFallsWithGpusRisesWithLink) {
  for (int zero : {0, 1}) {
    // At a fixed link, each doubling of the GPUs lowers the efficiency (the table and separate plans agree).
    // ZeRO-1's all-gather always has an exposed first stage (the embeddings): strictly lower each time. ZeRO-0's all-reduce stays hidden while
    // it fits in the backward pass (100% up to 16 GPUs here): lower or equal, and lower in the end.
    CommCostInput in = gpt2_input(64, 100.0);
    in.zero_stage = zero;
    const CommCostPlan table = make_comm_cost_plan(in);
    ASSERT_EQ(table.scaling.size(), 7u);  // 1, 2, 4, ..., 64
    double previous = 1.0;
    for (const StepEstimate& e : table.scaling) {
      in.gpus = e.gpus;
      const CommCostPlan p = make_comm_cost_plan(in);
      EXPECT_NEAR(p.efficiency, e.efficiency, kRelTol) << e.gpus;
      if (zero == 1 && e.gpus > 1)
        EXPECT_LT(e.efficiency, previous) << "zero " << zero << ", " << e.gpus << " GPUs";
      else
        EXPECT_LE(e.efficiency, previous) << "zero " << zero << ", " << e.gpus << " GPUs";
      previous = e.efficiency;
    }
    EXPECT_LT(table.scaling.back().efficiency, 0.9) << "zero " << zero;
    // At fixed GPUs (64: the all-reduce no longer fits in the backward pass up to 400 Gbit/s), a faster link
    // raises it.
    in.gpus = 64;
    previous = 0.0;
    for (double link : {10.0, 25.0, 50.0, 100.0, 200.0, 400.0}) {
      in.link_gbps = link;
      const double eff = make_comm_cost_plan(in).efficiency;
      EXPECT_GT(eff, previous) << "zero " << zero << ", " << link << " Gbit/s";
      previous = eff;
    }
  }
}

TEST(CommCostPlan, NinetyPercentBandwidthGivesNinetyPercent) {
  struct Case {
    const char* model;
    int gpus, zero;
    bool overlap;
  };
  for (const Case& k :
       {Case{"gpt2-124m", 16, 1, true}, Case{"gpt2-124m", 64, 0, true}, Case{"llama-1.1b", 64, 1, true},
        Case{"llama-1.1b", 128, 0, false}, Case{"llama-1.1b", 4, 0, false}}) {
    CommCostInput in;
    in.model = models::preset(k.model);
    in.gpus = k.gpus;
    in.zero_stage = k.zero;
    in.overlap = k.overlap;
    in.link_gbps = 100.0;
    const CommCostPlan p = make_comm_cost_plan(in);
    ASSERT_TRUE(p.gbps_for_90.has_value()) << k.model << " " << k.gpus;
    if (p.inter_node)
      in.link_gbps = *p.gbps_for_90;
    else
      in.intra_gbps = *p.gbps_for_90;
    EXPECT_NEAR(make_comm_cost_plan(in).efficiency, 0.9, kEfficiencyTol) << k.model << " " << k.gpus;
  }
}

// Hop latencies alone can keep a step below 90%: then there is no bandwidth to quote.
TEST(CommCostPlan, LatencyBoundHasNoNinetyPercentBandwidth) {
  CommCostInput in = gpt2_input(64, 100.0);
  in.latency_us = 1e4;  // 63 hops x 10 ms for the all-gather alone, far beyond the ~16 ms compute
  const CommCostPlan p = make_comm_cost_plan(in);
  EXPECT_FALSE(p.gbps_for_90.has_value());
  EXPECT_TRUE(contains(format_comm_cost(p), "unreachable"));
}

TEST(CommCostPlan, ScalingTableRows) {
  // Without a link, one node's worth of rows and a note.
  CommCostPlan p = make_comm_cost_plan(gpt2_input(4, std::nullopt));
  ASSERT_EQ(p.scaling.size(), 4u);  // 1, 2, 4, 8
  EXPECT_EQ(p.scaling.back().gpus, 8);
  EXPECT_TRUE(contains(p.scaling_note, "--link-gbps"));
  // A count that is not a power of two gets its own row; the table goes on to max(gpus, 64).
  p = make_comm_cost_plan(gpt2_input(24, 100.0));
  std::vector<int> rows;
  for (const StepEstimate& e : p.scaling) rows.push_back(e.gpus);
  EXPECT_EQ(rows, (std::vector<int>{1, 2, 4, 8, 16, 24, 32, 64}));
  EXPECT_TRUE(p.scaling_note.empty());
  // Beyond one sequence per GPU (524288 / 1024 = 512), the table stops with a note.
  p = make_comm_cost_plan(gpt2_input(512, 100.0));
  EXPECT_EQ(p.scaling.back().gpus, 512);
  CommCostInput in = gpt2_input(16, 100.0);
  in.global_batch_tokens = 32 * 1024;
  p = make_comm_cost_plan(in);
  EXPECT_EQ(p.scaling.back().gpus, 32);
  EXPECT_TRUE(contains(p.scaling_note, "--global-batch-tokens"));
}

TEST(CommCostPlan, BadInputs) {
  auto expect = [](void (*edit)(CommCostInput&), const std::vector<std::string>& fragments) {
    CommCostInput in = gpt2_input(16, 100.0);
    edit(in);
    expect_one_line_error([&] { make_comm_cost_plan(in); }, fragments);
  };
  expect([](CommCostInput& in) { in.gpus = 0; }, {"--gpus 0", "at least 1"});
  expect([](CommCostInput& in) { in.link_gbps = 0.0; }, {"--link-gbps 0", "positive"});
  expect([](CommCostInput& in) { in.link_gbps = -5.0; }, {"--link-gbps -5"});
  expect([](CommCostInput& in) { in.link_gbps.reset(); }, {"--link-gbps", "needed for --gpus 16"});
  expect([](CommCostInput& in) { in.gpus_per_node = 0; }, {"--gpus-per-node 0"});
  expect([](CommCostInput& in) { in.intra_gbps = 0; }, {"--intra-gbps 0"});
  expect([](CommCostInput& in) { in.zero_stage = 3; }, {"--zero 3", "0", "1"});
  expect([](CommCostInput& in) { in.grad_bytes = 0; }, {"--grad-bytes 0"});
  expect([](CommCostInput& in) { in.param_bytes = INFINITY; }, {"--param-bytes inf"});
  expect([](CommCostInput& in) { in.mfu = 0; }, {"--mfu 0", "(0, 1]"});
  expect([](CommCostInput& in) { in.mfu = 1.5; }, {"--mfu 1.5", "(0, 1]"});
  expect([](CommCostInput& in) { in.peak_tflops = -1; }, {"--peak-tflops -1"});
  expect([](CommCostInput& in) { in.latency_us = -1; }, {"--latency-us -1"});
  expect([](CommCostInput& in) { in.seq_len = 2048; }, {"--seq-len 2048", "max_seq_len 1024"});
  expect([](CommCostInput& in) { in.seq_len = -1; }, {"--seq-len -1"});
  expect([](CommCostInput& in) { in.global_batch_tokens = 0; }, {"--global-batch-tokens 0"});
  // 16 GPUs x 1024 tokens = 16384 at least.
  expect([](CommCostInput& in) { in.global_batch_tokens = 16383; },
         {"--global-batch-tokens 16383", "less than one sequence", ">= 16384"});
}

TEST(PlanCommCli, ReportsVolumesAndEfficiency) {
  std::string out;
  ASSERT_EQ(run_strata("plan --model gpt2-124m --gpus 16 --link-gbps 100", &out), 0) << out;
  // The volumes of HandComputedGpt2On16Gpus: 233324640 bytes per collective, 466649280 in all.
  for (const char* part :
       {"ZeRO-1", "reduce-scatter", "all-gather", "233.3 MB", "466.6 MB", "18.82 ms", "62.94 ms", "68.89 ms",
        "91.4%", "85.05 Gbit/s", "(R-1)/R x N x grad_bytes", "overlaps the next forward pass", "<- --gpus"})
    EXPECT_TRUE(contains(out, part)) << "lacks '" << part << "':\n" << out;
  EXPECT_FALSE(contains(out, "Growth plan")) << out;  // no budget: the communication report only

  ASSERT_EQ(
      run_strata("plan --model gpt2-124m --gpus 8 --zero 0 --no-overlap --global-batch-tokens 65536", &out),
      0)
      << out;
  // 2 x 7/8 x 124439808 x 2 = 435539328 bytes.
  for (const char* part : {"ZeRO-0", "all-reduce", "435.5 MB", "not overlapped", "intra-node"})
    EXPECT_TRUE(contains(out, part)) << "lacks '" << part << "':\n" << out;
}

TEST(PlanCommCli, BothReportsWithABudget) {
  std::string out;
  ASSERT_EQ(run_strata("plan --model llama-1.1b --tokens 300e9 --gpus 64 --link-gbps 400", &out), 0) << out;
  EXPECT_TRUE(contains(out, "Growth plan")) << out;
  EXPECT_TRUE(contains(out, "Data-parallel communication")) << out;
  EXPECT_LT(out.find("Growth plan"), out.find("Data-parallel communication")) << out;
}

TEST(PlanCommCli, BadInputExitsWithOneLine) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"plan --model gpt2-124m --gpus 16", "--link-gbps"},
      {"plan --model gpt2-124m --gpus 16 --link-gbps 0", "--link-gbps 0"},
      {"plan --model gpt2-124m --gpus 4 --zero 2", "--zero 2"},
      {"plan --model gpt2-124m --gpus 4 --mfu 2", "--mfu 2"},
      {"plan --model gpt2-124m --gpus 4 --write x.toml", "--write"},
  };
  std::string out;
  for (const auto& [args, fragment] : cases) {
    EXPECT_EQ(run_strata(args, &out), 1) << args << "\n" << out;
    EXPECT_EQ(out.rfind("strata: error: ", 0), 0u) << out;
    EXPECT_EQ(out.find('\n'), out.size() - 1) << "not one line: " << out;
    EXPECT_TRUE(contains(out, fragment)) << out;
  }
  // A communication option without --gpus is a parse error (exit 2), and no budget without --gpus is the
  // guideline's error as before.
  EXPECT_EQ(run_strata("plan --model gpt2-124m --link-gbps 100", &out), 2) << out;
  EXPECT_TRUE(contains(out, "--gpus")) << out;
  EXPECT_EQ(run_strata("plan --model gpt2-124m", &out), 1) << out;
  EXPECT_TRUE(contains(out, "--tokens D or --flops C")) << out;
}

}  // namespace
}  // namespace strata::growth
