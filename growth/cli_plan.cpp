// `strata plan`: the paper's growth-timing guideline for a target model and a budget (growth/guideline.h):
// prints d, the base model, tokens and FLOPs per phase, the paper's measured saving for the nearest size and
// the `strata train` flags; warns outside the fit's range; optionally writes the schedule as a config file.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include "engine/check.h"
#include "engine/fileio.h"
#include "growth/cli.h"
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
};

void run_plan(const PlanOptions& o) {
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
}

}  // namespace

void add_plan_command(CLI::App& app) {
  auto o = std::make_shared<PlanOptions>();
  CLI::App* cmd = app.add_subcommand(
      "plan", "The paper's growth-timing guideline: when to grow (d), the base model, FLOPs per phase");
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
  cmd->callback([o] { run_plan(*o); });
}

}  // namespace strata::growth
