// growth/guideline.cpp: the growth-timing guideline calculator (see guideline.h for the conventions).
#include "growth/guideline.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "engine/check.h"

namespace strata::growth {
namespace {

constexpr double kMaxBudgetTokens = 1e15;

// The fit's coefficients (the spec's "Guidelines").
constexpr double kLogNSlope = 0.88;
constexpr double kLogCNumerator = 163.27;
constexpr double kIntercept = -5.74;

std::string sci(double x) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3e", x);
  return buf;
}

std::string percent(double x) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f%%", 100.0 * x);
  return buf;
}

std::string shape(const models::ModelConfig& c) {
  return cat(c.n_layer, " layers, C=", c.d_model, " NH=", c.n_head, " KVH=", c.n_kv_head, " F=", c.d_ff,
             " V=", c.vocab_size);
}

double total_params(const models::ModelConfig& c) {
  return static_cast<double>(models::count_parameters(c).total());
}

// A float as TOML / a flag value: shortest text that reads back as the same float.
std::string float_text(float v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.9g", static_cast<double>(v));
  return buf;
}

// The model-selection options that reproduce the target with n_layer = `layers`, as (key, value text) pairs:
// the preset and every override the user gave.
std::vector<std::pair<std::string, std::string>> model_keys(const models::ModelOptions& o, int layers) {
  std::vector<std::pair<std::string, std::string>> kv;
  kv.emplace_back("model", o.preset);
  kv.emplace_back("n-layer", std::to_string(layers));
  auto add_int = [&](const char* key, const std::optional<int>& v) {
    if (v) kv.emplace_back(key, std::to_string(*v));
  };
  auto add_float = [&](const char* key, const std::optional<float>& v) {
    if (v) kv.emplace_back(key, float_text(*v));
  };
  add_int("d-model", o.d_model);
  add_int("n-head", o.n_head);
  add_int("n-kv-head", o.n_kv_head);
  add_int("d-ff", o.d_ff);
  add_int("vocab-size", o.vocab_size);
  add_int("max-seq-len", o.max_seq_len);
  add_float("norm-eps", o.norm_eps);
  add_float("rope-base", o.rope_base);
  return kv;
}

}  // namespace

std::string human_number(double x) {
  static const struct {
    double scale;
    const char* suffix;
  } kUnits[] = {{1e12, "T"}, {1e9, "B"}, {1e6, "M"}, {1e3, "K"}};
  char buf[48];
  for (const auto& u : kUnits) {
    if (std::fabs(x) >= u.scale) {
      std::snprintf(buf, sizeof(buf), "%.4g%s", x / u.scale, u.suffix);
      return buf;
    }
  }
  std::snprintf(buf, sizeof(buf), "%.4g", x);
  return buf;
}

double guideline_growth_tokens(double n_params, double flops) {
  STRATA_CHECK(n_params > 0.0 && flops > 1.0, "N=", n_params, " C=", flops);
  return std::pow(10.0, kLogNSlope * std::log10(n_params) + kLogCNumerator / std::log10(flops) + kIntercept);
}

double fit_min_params() {
  return std::min(410e6, total_params(models::preset("llama-410m")));
}

double fit_max_params() {
  return std::max(3e9, total_params(models::preset("llama-3b")));
}

const std::vector<MeasuredSpeedup>& paper_speedups() {
  // The spec's "Results" and "Headline speedups". The 1.1B comparison is given in FLOPs; its token count
  // follows from C = 6 N D with the nominal N.
  static const std::vector<MeasuredSpeedup> all = {
      {"410M", 410e6, 400e9, 0.531, "at 400B tokens"},
      {"410M", 410e6, 700e9, 0.310, "at 700B tokens"},
      {"1.1B", 1.1e9, 8e20 / (6.0 * 1.1e9), 0.491, "at 8e20 FLOPs"},
      {"3B", 3e9, 180e9, 0.486, "at 180B tokens"},
      {"3B", 3e9, 240e9, 0.545, "at 240B tokens"},
      {"7B", 7e9, 160e9, 0.408, "at 160B tokens"},
      {"7B", 7e9, 220e9, 0.553, "at 220B tokens"},
      {"7B", 7e9, 280e9, 0.538, "at 280B tokens"},
      {"7B", 7e9, 300e9, 0.546, "at 300B tokens (194B grown)"},
  };
  return all;
}

const MeasuredSpeedup& nearest_speedup(double n_params, double scratch_tokens) {
  const auto& all = paper_speedups();
  auto log_dist = [](double a, double b) { return std::fabs(std::log10(a) - std::log10(b)); };
  double best_n = all.front().nominal_params;
  for (const auto& m : all)
    if (log_dist(m.nominal_params, n_params) < log_dist(best_n, n_params)) best_n = m.nominal_params;
  const MeasuredSpeedup* best = nullptr;
  for (const auto& m : all) {
    if (m.nominal_params != best_n) continue;
    if (!best || log_dist(m.scratch_tokens, scratch_tokens) < log_dist(best->scratch_tokens, scratch_tokens))
      best = &m;
  }
  return *best;
}

int64_t GuidelinePlan::growth_tokens() const {
  return static_cast<int64_t>(std::llround(d));
}

int64_t GuidelinePlan::total_tokens() const {
  return static_cast<int64_t>(std::llround(small.tokens + large.tokens));
}

GuidelinePlan make_guideline_plan(const GuidelineInput& in) {
  STRATA_REQUIRE(in.tokens || in.flops, "strata plan: give a budget, --tokens D or --flops C");
  STRATA_REQUIRE(!(in.tokens && in.flops), "strata plan: give one budget, --tokens or --flops, not both");
  const double budget = in.tokens ? *in.tokens : *in.flops;
  const char* budget_flag = in.tokens ? "--tokens" : "--flops";
  STRATA_REQUIRE(std::isfinite(budget) && budget > 0.0, budget_flag, " ", budget,
                 ": must be a positive number");
  STRATA_REQUIRE(in.g >= 2, "--g ", in.g, ": the growth factor must be at least 2");
  const models::ModelConfig& t = in.target;
  STRATA_REQUIRE(t.n_layer % in.g == 0, "--g ", in.g, " does not divide the target's ", t.n_layer,
                 " layers (the base model has n_layer / g layers)");
  const int seq_len = in.seq_len > 0 ? in.seq_len : t.max_seq_len;
  STRATA_REQUIRE(in.seq_len >= 0, "--seq-len ", in.seq_len, ": must be positive");
  STRATA_REQUIRE(seq_len <= t.max_seq_len, "--seq-len ", seq_len, " exceeds the model's max_seq_len ",
                 t.max_seq_len);
  if (in.n_params)
    STRATA_REQUIRE(std::isfinite(*in.n_params) && *in.n_params > 0.0, "--params ", *in.n_params,
                   ": must be a positive number");

  GuidelinePlan p;
  p.target = t;
  p.g = in.g;
  p.seq_len = seq_len;
  p.base = t;
  p.base.n_layer = t.n_layer / in.g;
  p.base.name = cat(t.name, "/", p.base.n_layer, "L");
  p.base.validate();
  p.n_params = in.n_params ? *in.n_params : total_params(t);
  p.flops_given = in.flops.has_value();

  const double f_target = models::train_flops_per_token(t, seq_len);
  const double f_base = models::train_flops_per_token(p.base, seq_len);
  if (in.tokens) {
    p.scratch_tokens = *in.tokens;
    p.formula_flops = 6.0 * p.n_params * p.scratch_tokens;
    p.budget_flops = f_target * p.scratch_tokens;
  } else {
    p.formula_flops = *in.flops;
    p.budget_flops = *in.flops;
    p.scratch_tokens = *in.flops / f_target;
  }
  // Token counts are whole int64 numbers in the schedule; 1e15 (a thousand times the largest public runs)
  // keeps every count of the plan far from overflow.
  STRATA_REQUIRE(p.scratch_tokens <= kMaxBudgetTokens, "strata plan: the budget is ", p.scratch_tokens,
                 " tokens of the target, beyond the ", kMaxBudgetTokens, " this calculator handles");
  STRATA_REQUIRE(p.formula_flops > 10.0, "strata plan: a budget of ", p.formula_flops,
                 " FLOPs is too small for the fit (log10(C) must be positive)");
  p.d = guideline_growth_tokens(p.n_params, p.formula_flops);

  p.small = {p.base, p.d, f_base, f_base * p.d};
  const double rest = p.budget_flops - p.small.flops;
  p.growth_happens = rest > 0.0;
  if (!p.growth_happens) {
    // The small model never reaches d within the budget: it trains for the whole budget and never grows.
    p.small.tokens = p.budget_flops / f_base;
    p.small.flops = p.budget_flops;
  }
  p.large = {t, p.growth_happens ? rest / f_target : 0.0, f_target, std::max(rest, 0.0)};

  // Warnings: outside the fit, or a plan that spends the budget badly.
  auto& w = p.warnings;
  if (p.n_params < fit_min_params() || p.n_params > fit_max_params())
    w.push_back(cat("N = ", human_number(p.n_params), " parameters is outside the fit's range ",
                    human_number(fit_min_params()), "..", human_number(fit_max_params()),
                    " (the paper's 410M..3B targets): d is an extrapolation"));
  if (p.formula_flops < kFitMinFlops || p.formula_flops > kFitMaxFlops)
    w.push_back(cat("C = ", sci(p.formula_flops), " FLOPs is outside ", sci(kFitMinFlops), "..",
                    sci(kFitMaxFlops),
                    ", around the budgets of the paper's runs at the fitted sizes: d is an extrapolation"));
  if (!p.growth_happens)
    w.push_back(cat("the small phase alone (", human_number(p.d), " tokens of the ", p.base.n_layer,
                    "-layer base) costs more than the whole budget: growth never happens"));
  else if (p.small.flops > kMaxSmallPhaseShare * p.budget_flops)
    w.push_back(cat("the small phase takes ", percent(p.small.flops / p.budget_flops),
                    " of the budget (more than half): the large model gets little training"));
  if (p.base.n_layer == 1)
    w.push_back("the base model has 1 layer: the paper finds a 1-layer base hurts (use a smaller g)");
  if (p.g > kPaperGrowthFactor)
    w.push_back(cat("g = ", p.g, " is above the paper's optimum range 2..4 (it uses g = 4)"));
  if (t.family != models::Family::kLlama)
    w.push_back(cat("the target is a ", models::family_name(t.family),
                    " model: the paper fitted and measured LLaMA-style models only"));
  return p;
}

std::string grow_spec(const GuidelinePlan& p) {
  return cat("at=", p.growth_tokens(), " tokens,op=stack,g=", p.g);
}

std::string train_flags(const GuidelinePlan& p, const models::ModelOptions& model) {
  std::string s;
  for (const auto& [key, value] : model_keys(model, p.base.n_layer)) s += cat("--", key, " ", value, " ");
  return s + cat("--seq-len ", p.seq_len, " --tokens ", p.total_tokens(), " --grow \"", grow_spec(p), "\"");
}

std::string schedule_toml(const GuidelinePlan& p, const models::ModelOptions& model) {
  std::string s;
  s += cat("# Growth schedule written by `strata plan` (the paper's growth-timing guideline, G_stack).\n",
           "# Use: strata --config THIS_FILE train --data DIR [other train options]\n", "# Trains the ",
           p.base.n_layer, "-layer base of ", p.target.name, " for d = ", human_number(p.d), " tokens, stacks it ",
           p.g, "x into the\n# ", p.target.n_layer, "-layer target, and stops at ",
           human_number(static_cast<double>(p.total_tokens())), " tokens in all: the compute of ",
           human_number(p.scratch_tokens), " tokens of the target\n# from scratch (", sci(p.budget_flops),
           " FLOPs at T=", p.seq_len, "). The vocabulary follows the data's manifest unless vocab-size\n",
           "# is set; the plan assumed V=", p.target.vocab_size, ".\n");
  for (const std::string& w : p.warnings) s += cat("# warning: ", w, "\n");
  s += "[train]\n";
  for (const auto& [key, value] : model_keys(model, p.base.n_layer)) {
    const bool is_text = key == "model";
    s += is_text ? cat(key, " = \"", value, "\"\n") : cat(key, " = ", value, "\n");
  }
  s += cat("seq-len = ", p.seq_len, "\n");
  s += cat("tokens = ", p.total_tokens(), "\n");
  s += cat("grow = [\"", grow_spec(p), "\"]\n");
  return s;
}

std::string format_plan(const GuidelinePlan& p, const models::ModelOptions& model) {
  char line[256];
  std::string s;
  s += "Growth plan (the paper's guideline: G_stack, one growth, Du et al. 2024)\n\n";
  s += cat("  target      ", p.target.name, ": ", shape(p.target), "; ", human_number(total_params(p.target)),
           " parameters\n");
  s += cat("  base        ", p.base.name, ": ", p.base.n_layer, " layers (target / g, g = ", p.g, "); ",
           human_number(total_params(p.base)), " parameters\n");
  s +=
      cat("  N (fit)     ", sci(p.n_params),
          p.n_params == total_params(p.target) ? " (the target's total parameter count)" : " (from --params)",
          "\n");
  if (p.flops_given)
    s += cat("  budget      ", sci(p.formula_flops), " FLOPs, also the fit's C\n", "              = ",
             human_number(p.scratch_tokens), " tokens of the target from scratch at ", sci(p.large.flops_per_token),
             " FLOPs/token (6 N_matmul + 12 L C T, T = ", p.seq_len, ")\n");
  else
    s += cat("  budget      ", human_number(p.scratch_tokens),
             " tokens of the target from scratch; C (fit) = 6 N D = ", sci(p.formula_flops), " FLOPs\n",
             "              Strata's count: ", sci(p.budget_flops),
             " FLOPs (6 N_matmul + 12 L C T per token, T = ", p.seq_len, ")\n");
  s += cat("\n  growth timing  log10(d) = 0.88 log10(N) + 163.27 / log10(C) - 5.74\n",
           "                 d = ", human_number(p.d), " tokens",
           p.growth_happens ? cat(" (", p.growth_tokens(), ")") : std::string(), "\n\n");

  std::snprintf(line, sizeof(line), "  %-14s %-22s %12s %12s %12s %8s\n", "phase", "model", "tokens",
                "FLOPs/token", "FLOPs", "share");
  s += line;
  auto row = [&](const char* name, const Phase& ph) {
    std::snprintf(line, sizeof(line), "  %-14s %-22s %12s %12s %12s %8s\n", name,
                  cat(ph.model.n_layer, ph.model.n_layer == 1 ? " layer" : " layers").c_str(),
                  human_number(ph.tokens).c_str(), sci(ph.flops_per_token).c_str(), sci(ph.flops).c_str(),
                  percent(ph.flops / p.budget_flops).c_str());
    s += line;
  };
  row("small (before)", p.small);
  row("large (after)", p.large);
  std::snprintf(line, sizeof(line), "  %-14s %-22s %12s %12s %12s %8s\n", "total", "",
                human_number(p.small.tokens + p.large.tokens).c_str(), "",
                sci(p.small.flops + p.large.flops).c_str(),
                percent((p.small.flops + p.large.flops) / p.budget_flops).c_str());
  s += line;
  s += cat("  (equal compute to the scratch run: the grown run sees ", human_number(p.small.tokens + p.large.tokens),
           " tokens where scratch sees ", human_number(p.scratch_tokens), ")\n");

  // The saving is measured, not predicted: quote every measurement, marking the nearest.
  const MeasuredSpeedup& m = nearest_speedup(p.n_params, p.scratch_tokens);
  s += "\n  expected saving  not an output of the fit; the paper's measured speedups (equal loss, g = 4),\n"
       "                   sp = FLOPs_scratch / FLOPs_grown - 1, compute saving = 1 - 1/(1 + sp):\n";
  for (const auto& o : paper_speedups()) {
    std::snprintf(line, sizeof(line), "                   %-5s %-28s sp %6s  saving %6s%s\n", o.size, o.where,
                  percent(o.speedup).c_str(), percent(o.compute_saving()).c_str(),
                  &o == &m ? "   <- nearest size and budget" : "");
    s += line;
  }
  if (p.growth_happens)
    s += cat("\n  strata train ", train_flags(p, model), "\n");
  else
    s += "\n  no schedule: the budget ends before the small model reaches d (a larger budget or a smaller "
         "g)\n";
  return s;
}

}  // namespace strata::growth
