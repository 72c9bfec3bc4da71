// `strata plan`: the paper's growth-timing guideline for a target model and a budget (growth/guideline.h):
// prints d, the base model, tokens and FLOPs per phase, the paper's measured saving for the nearest size and
// the `strata train` flags; warns outside the fit's range; optionally writes the schedule as a config file.
// With --gpus N, also (or, without a budget, only) the data-parallel communication cost of training the
// target on N GPUs (growth/comm_cost.h): bytes per rank, step time, scaling efficiency.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include "engine/check.h"
#include "engine/fileio.h"
#include "growth/cli.h"
#include "growth/comm_cost.h"
#include "growth/guideline.h"
#include "models/cli.h"

namespace strata::growth {
namespace {

struct PlanOptions {
  models::ModelOptions model;
  std::optional<double> tokens, flops, params;
  int g = kPaperGrowthFactor;
  int seq_len = 0;
  std::string write;
  // The communication report (--gpus and the options that need it).
  std::optional<int> gpus;
  CommCostInput comm;
  bool no_overlap = false;
};

void run_comm_cost(const PlanOptions& o) {
  CommCostInput in = o.comm;
  in.model = models::resolve_model(o.model);
  in.gpus = *o.gpus;
  in.seq_len = o.seq_len;
  in.overlap = !o.no_overlap;
  const CommCostPlan p = make_comm_cost_plan(in);
  std::fputs(format_comm_cost(p).c_str(), stdout);
  std::fflush(stdout);
}

void run_plan(const PlanOptions& o) {
  // --gpus alone: the communication report only; with a budget as well, both reports.
  if (o.gpus && !o.tokens && !o.flops) {
    STRATA_REQUIRE(o.write.empty(), "--write ", o.write, ": needs a budget, --tokens D or --flops C");
    run_comm_cost(o);
    return;
  }
  GuidelineInput in;
  in.target = models::resolve_model(o.model);
  in.g = o.g;
  in.seq_len = o.seq_len;
  in.tokens = o.tokens;
  in.flops = o.flops;
  in.n_params = o.params;
  const GuidelinePlan p = make_guideline_plan(in);
  STRATA_REQUIRE(o.write.empty() || p.growth_happens, "--write ", o.write,
                 ": growth at d = ", p.growth_tokens(),
                 " tokens never happens within the budget; nothing written");

  std::fputs(format_plan(p, o.model).c_str(), stdout);
  if (!o.write.empty()) {
    write_file_atomic(o.write, schedule_toml(p, o.model));
    std::printf("\n  wrote %s (strata --config %s train --data DIR ...)\n", o.write.c_str(), o.write.c_str());
  }
  std::fflush(stdout);
  for (const std::string& w : p.warnings) std::fprintf(stderr, "strata: warning: %s\n", w.c_str());
  if (o.gpus) {
    std::fputs("\n", stdout);
    run_comm_cost(o);
  }
}

}  // namespace

void add_plan_command(CLI::App& app) {
  auto o = std::make_shared<PlanOptions>();
  CLI::App* cmd = app.add_subcommand(
      "plan",
      "The paper's growth-timing guideline: when to grow (d), the base model, FLOPs per phase; with --gpus, "
      "the data-parallel communication cost");
  models::add_model_options(*cmd, o->model);
  cmd->add_option("--tokens", o->tokens,
                  "Budget as tokens D of the target trained from scratch (the fit's C = 6 N D)");
  cmd->add_option("--flops", o->flops, "Budget as training FLOPs C (instead of --tokens)");
  cmd->add_option("--g", o->g, "Growth factor: the base model has n_layer / g layers (the paper: 4)");
  cmd->add_option("--seq-len", o->seq_len,
                  "Sequence length T of the FLOPs count (0 = the model's max_seq_len)");
  cmd->add_option(
      "--params", o->params,
      "N in the fit (default: the target's total parameter count; e.g. 7e9 for the paper's nominal 7B)");
  cmd->add_option("--write", o->write,
                  "Write the schedule as a config file for `strata --config FILE train`");

  // Data-parallel communication cost (growth/comm_cost.h).
  CommCostInput& c = o->comm;
  CLI::Option* gpus = cmd->add_option(
      "--gpus", o->gpus,
      "Data-parallel GPUs R: print the communication cost per step (bytes per rank, step time, "
      "scaling efficiency); --tokens / --flops become optional");
  auto needs_gpus = [&](CLI::Option* opt) { opt->needs(gpus); };
  needs_gpus(
      cmd->add_option("--link-gbps", c.link_gbps,
                      "Inter-node bandwidth per GPU, Gbit/s (e.g. 400 for NDR InfiniBand); needed when "
                      "--gpus exceeds --gpus-per-node"));
  needs_gpus(cmd->add_option("--gpus-per-node", c.gpus_per_node,
                             "GPUs per node (a ring within one node runs at --intra-gbps)"));
  needs_gpus(cmd->add_option("--intra-gbps", c.intra_gbps,
                             "Intra-node (NVLink-class) bandwidth per GPU, Gbit/s (H100 NVLink: 3600)"));
  needs_gpus(
      cmd->add_option("--zero", c.zero_stage,
                      "ZeRO stage: 0 = gradient all-reduce, 1 = reduce-scatter + parameter all-gather"));
  needs_gpus(cmd->add_option("--global-batch-tokens", c.global_batch_tokens, "Tokens per optimizer step"));
  needs_gpus(cmd->add_option("--peak-tflops", c.peak_tflops, "Peak TFLOP/s per GPU (H100 SXM dense bf16)"));
  needs_gpus(cmd->add_option("--mfu", c.mfu, "Single-GPU model FLOPs utilisation assumed, in (0, 1]"));
  needs_gpus(cmd->add_option("--grad-bytes", c.grad_bytes, "Bytes per communicated gradient element"));
  needs_gpus(
      cmd->add_option("--param-bytes", c.param_bytes, "Bytes per all-gathered parameter element (ZeRO-1)"));
  needs_gpus(cmd->add_option("--latency-us", c.latency_us, "Latency per ring hop, microseconds"));
  needs_gpus(cmd->add_flag("--no-overlap", o->no_overlap,
                           "The gradient reduction does not overlap the backward pass"));
  cmd->callback([o] { run_plan(*o); });
}

}  // namespace strata::growth
