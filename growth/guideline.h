// growth/guideline.h: the paper's growth-timing guideline (`strata plan`): given a target model and a budget,
// when to grow (d), from which base (L / g layers), what each phase costs, and what the paper measured.
//
// The fit (Du et al. 2024, section "Guidelines" of the spec), d in tokens, N parameters, C FLOPs:
//   log10(d) = 0.88 log10(N) + 163.27 / log10(C) - 5.74
// It was fitted on 410M..3B LLaMA targets with C = 6 N D (D the scratch run's tokens).
//
// Conventions of this calculator:
//   N   the target's total parameter count from the tensor table (models::count_parameters, embeddings and
//       the untied LM head included), unless given explicitly. The paper quotes nominal sizes (its check
//       values use N = 7e9 for Llama2-7B, whose count is 6.74e9); d scales as N^0.88, so the two differ by a
//       few percent at most for the paper's presets.
//   C   with a token budget D, C = 6 N D (the fit's convention). With a FLOPs budget, C as given.
//   Budget   equal compute to a scratch run of the target: C_total = F(target) * D, with F the training FLOPs
//       per token of models::train_flops_per_token (6 N_matmul + 12 L C T). With a FLOPs budget,
//       C_total = C and D = C / F(target).
//   Phases   small: the base model (target with L / g layers) for d tokens, C_small = F(base) * d;
//            large: the target for (C_total - C_small) / F(target) tokens. The phases sum to C_total.
// The expected saving is not an output of the fit: the calculator quotes the paper's measured speedup for the
// nearest size.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "models/cli.h"
#include "models/model_config.h"

namespace strata::growth {

// 11.11B, 300B, 2T, 124.4M: four significant digits and a K/M/B/T suffix (both reports of `strata plan`).
std::string human_number(double x);

// The fit itself: d (tokens) for N parameters and C FLOPs. Requires N > 0 and C > 1.
double guideline_growth_tokens(double n_params, double flops);

// The range the fit is trusted in. Parameters: the paper's 410M..3B targets, as nominal sizes or as counted
// by the tensor table (llama-410m counts 0.37e9, llama-3b 2.4e9), whichever is wider: [0.37e9, 3e9].
// FLOPs: the paper's runs at the fitted sizes use 8e20 (1.1B, operator comparison) to 4.3e21 (3B, 240B
// tokens); the band allows about a decade below and a factor ~2 above, [1e20, 1e22].
double fit_min_params();
double fit_max_params();
inline constexpr double kFitMinFlops = 1e20;
inline constexpr double kFitMaxFlops = 1e22;
inline constexpr int kPaperGrowthFactor = 4;  // the paper's choice (optimum between 2 and 4)
// The small phase should leave most of the budget to the large model; above this share it is a warning.
inline constexpr double kMaxSmallPhaseShare = 0.5;

// A speedup the paper measured (at equal training loss, sp = FLOPs_scratch / FLOPs_grown - 1, g = 4).
struct MeasuredSpeedup {
  const char* size;       // "410M", "1.1B", "3B", "7B"
  double nominal_params;  // 410e6 ...
  double scratch_tokens;  // tokens of the scratch run compared against (1.1B: from its 8e20 FLOPs, 6 N D)
  double speedup;         // 0.531 = 53.1%
  const char* where;      // "at 400B tokens", "at 8e20 FLOPs"
  double compute_saving() const { return 1.0 - 1.0 / (1.0 + speedup); }
};
const std::vector<MeasuredSpeedup>& paper_speedups();
// The measurement of the size nearest to n_params (in log N), and among its measurements the one nearest
// to scratch_tokens (in log D).
const MeasuredSpeedup& nearest_speedup(double n_params, double scratch_tokens);

struct GuidelineInput {
  models::ModelConfig target;
  int g = kPaperGrowthFactor;
  int seq_len = 0;               // 0 = the target's max_seq_len
  std::optional<double> tokens;  // exactly one of tokens / flops
  std::optional<double> flops;
  std::optional<double> n_params;  // N in the fit; default: the target's total parameter count
};

struct Phase {
  models::ModelConfig model;
  double tokens = 0.0;
  double flops_per_token = 0.0;  // models::train_flops_per_token at the plan's seq_len
  double flops = 0.0;
};

struct GuidelinePlan {
  models::ModelConfig target, base;
  int g = 0;
  int seq_len = 0;
  double n_params = 0.0;              // N in the fit
  double formula_flops = 0.0;         // C in the fit (6 N D, or the FLOPs budget)
  bool flops_given = false;           // budget given in FLOPs (else tokens)
  double scratch_tokens = 0.0;        // D: tokens of a scratch run of the target with the budget
  double budget_flops = 0.0;          // C_total = F(target) * D
  double d = 0.0;                     // the fit's growth timing, tokens
  Phase small, large;                 // large.tokens = 0 when the small phase spends the whole budget
  bool growth_happens = true;         // C_small < C_total
  std::vector<std::string> warnings;  // one line each, without a "warning:" prefix

  int64_t growth_tokens() const;  // d rounded to whole tokens (the `at=` of the schedule)
  int64_t total_tokens() const;   // the grown run's tokens over both phases, rounded
};

// Validates the input (one-line strata::Errors: no budget or both, a non-positive or non-finite budget,
// g < 2, g not dividing n_layer, seq_len beyond the model) and computes the plan with its warnings.
GuidelinePlan make_guideline_plan(const GuidelineInput& in);

// The growth stage for `strata train --grow`: "at=<d> tokens,op=stack,g=<g>".
std::string grow_spec(const GuidelinePlan& p);
// The flags for `strata train` that run the plan (model selection with the base's n-layer, seq-len,
// tokens, grow), from the options that selected the target: "--model llama-1.1b --n-layer 6 ...".
std::string train_flags(const GuidelinePlan& p, const models::ModelOptions& model);
// The same as a config file for `strata --config FILE train ...`: a commented [train] section.
std::string schedule_toml(const GuidelinePlan& p, const models::ModelOptions& model);
// The human-readable report `strata plan` prints (without the warnings).
std::string format_plan(const GuidelinePlan& p, const models::ModelOptions& model);

}  // namespace strata::growth
