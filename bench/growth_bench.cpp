// bench/growth_bench.cpp: the cost of one growth on llama-1.1b-shaped buffers (width 2048, 32 heads, 4 KV
// heads, FFN 5632, vocab 32000), printed beside the cost of one training step of the grown model.
//
// It builds the small model (--from-layers, default 2) with parameters, gradients, AdamW moments and
// activations for (B, T), takes one training step so every buffer is touched, then grows it in place by
// --grow (default G_stack g=4: 2 -> 8 layers; the paper's 6 -> 24 is --from-layers 6 and needs about 30 GB)
// and times:
//   growth      grow_in_place: plan, new parameters filled from the old, optimizer reset or mapped, model
//               re-planned (gradients and activations of the new model allocated)
//   learn step  (op=learn only) what a G_learn step adds to the forward and backward: the learned matrices'
//               gradient, their Adam step and the grown weights materialised again (median of --steps)
//   train step  one forward + backward + AdamW step of the grown model on a (B, T) batch (the median of
//               --steps steps after the first one, which is printed apart: it also pays the first touch of
//               the new gradients, moments (under optimizer=reset, allocated as untouched zero pages) and
//               activations)
// and measures the peak resident set during the growth (VmHWM after resetting it through
// /proc/self/clear_refs) against the old + new model state (parameters, gradients and two moments: 16
// bytes per parameter for each model) plus both models' activations. Prints both ratios.
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/check.h"
#include "engine/model.h"
#include "engine/optim.h"
#include "engine/params.h"
#include "growth/apply.h"
#include "growth/plan.h"
#include "kernels/cpu/blas_runtime.h"
#include "models/model_config.h"

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// "VmHWM" / "VmRSS" of /proc/self/status in MiB.
double status_mib(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key, 0) == 0) return std::stod(line.substr(line.find(':') + 1)) / 1024.0;
  return -1.0;
}

bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  return static_cast<bool>(f);
}

double train_step(strata::Model& m, strata::AdamW& opt, const std::vector<int32_t>& in,
                  const std::vector<int32_t>& tg) {
  const auto t0 = Clock::now();
  m.zero_grad();
  m.forward(in.data(), tg.data());
  m.backward();
  opt.step(m.params(), m.grads(), 1e-4, strata::clip_scale(strata::grad_norm(m.grads()), 1.0));
  return seconds_since(t0);
}

// Bytes of the activations Model plans for (B, T) (engine/model.cpp's Acts, counted the same way).
double activation_mib(const strata::models::ModelConfig& c, int B, int T) {
  const double N = static_cast<double>(B) * T, L = c.n_layer, C = c.d_model, HS = c.head_dim();
  const double QKV = (c.n_head + 2.0 * c.n_kv_head) * HS,
               H1 = c.family == strata::models::Family::kLlama ? 2.0 * c.d_ff : c.d_ff;
  const double att = static_cast<double>(B) * c.n_head * T * T;
  double floats =
      (L + 1) * N * C + L * N * C * 3 + 4 * L * N + L * N * QKV + L * att + L * N * H1 + L * N * c.d_ff;
  floats += N * C + 2 * N + N * c.vocab_size + N + 3 * N * C + N * QKV + N * C + att + N * H1 + N * c.d_ff;
  return floats * 4 / (1024.0 * 1024.0);
}

}  // namespace

int main(int argc, char** argv) {
  strata::ops::cpu_blas_fix_core(argv);
  CLI::App app{"Growth cost on llama-1.1b-shaped buffers vs one training step of the grown model",
               "growth_bench"};
  int from_layers = 2, B = 1, T = 128, steps = 2;
  std::string grow = "at=1 steps,op=stack,g=4";
  app.add_option("--from-layers", from_layers, "Layers of the small model");
  app.add_option("--grow", grow, "The growth stage (growth/spec.h syntax)");
  app.add_option("--batch-size", B, "B of the training step");
  app.add_option("--seq-len", T, "T of the training step");
  app.add_option("--steps", steps, "Timed training steps of the grown model (median)");
  bool fresh = false;
  app.add_flag("--fresh", fresh,
               "Reference instead of a growth: build the grown architecture from init and time its first and "
               "later steps (the first-touch cost any new model pays)");
  CLI11_PARSE(app, argc, argv);
  try {
    strata::models::ModelConfig small = strata::models::preset("llama-1.1b");
    small.n_layer = from_layers;
    const strata::growth::GrowthPlan plan =
        strata::growth::make_plan(small, strata::growth::parse_stage(grow));
    const auto pc_small = strata::models::count_parameters(plan.from),
               pc_big = strata::models::count_parameters(plan.to);
    std::mt19937 rng(7);
    std::vector<int32_t> in(static_cast<size_t>(B) * T), tg(in.size());
    for (auto* v : {&in, &tg})
      for (auto& t : *v) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(small.vocab_size));

    if (fresh) {
      strata::Model big(plan.to, B, T);
      strata::init_params(big.params(), 1);
      strata::AdamW big_opt(strata::ParamLayout(plan.to), strata::AdamWConfig{});
      const double first = train_step(big, big_opt, in, tg);
      std::vector<double> t;
      for (int i = 0; i < steps; ++i) t.push_back(train_step(big, big_opt, in, tg));
      std::sort(t.begin(), t.end());
      std::printf("growth_bench --fresh: llama-1.1b shape, L=%d built from init, B=%d T=%d\n",
                  plan.to.n_layer, B, T);
      std::printf("  first step                      %9.3f s\n  later steps (median of %d)      %9.3f s\n",
                  first, steps, t[t.size() / 2]);
      return 0;
    }
    strata::Model model(plan.from, B, T);
    strata::init_params(model.params(), 1);
    strata::AdamW opt(strata::ParamLayout(plan.from), strata::AdamWConfig{});
    train_step(model, opt, in, tg);  // touches every buffer of the small model
    // G_learn: its state is built from the small model's weights before the growth (as the trainer does).
    std::unique_ptr<strata::growth::LearnedGrowth> learned;
    if (plan.stage.op == strata::growth::Op::kLearn)
      learned = strata::growth::make_learned_growth(plan, model.params(), 0.9, 0.95, 1e-8, 42);
    const double rss_before = status_mib("VmRSS:");
    const bool peak_ok = reset_peak_rss();
    const auto t0 = Clock::now();
    strata::growth::grow_in_place(plan, model, opt, 42);
    const double growth_s = seconds_since(t0);
    const double peak = status_mib("VmHWM:");
    const double first_s =
        train_step(model, opt, in, tg);  // first touch of new gradients, moments, activations
    std::vector<double> times;
    for (int i = 0; i < steps; ++i) times.push_back(train_step(model, opt, in, tg));
    std::sort(times.begin(), times.end());
    const double step_s = times[times.size() / 2];
    // A learn step's own work beside the forward and backward it shares with a training step: the learned
    // matrices' gradient from the model's, their Adam step, and the grown weights materialised again.
    double learn_s = 0.0;
    if (learned) {
      std::vector<double> lt;
      for (int i = 0; i < steps; ++i) {
        const auto l0 = Clock::now();
        learned->step(model.grads(), 1e-3);
        learned->materialise(model.params());
        lt.push_back(seconds_since(l0));
      }
      std::sort(lt.begin(), lt.end());
      learn_s = lt[lt.size() / 2];
    }

    const double mib = 1024.0 * 1024.0;
    const double old_state = 16.0 * static_cast<double>(pc_small.total()) / mib;
    const double new_state = 16.0 * static_cast<double>(pc_big.total()) / mib;
    const double acts = activation_mib(plan.from, B, T) + activation_mib(plan.to, B, T);
    std::printf("growth_bench: llama-1.1b shape, %s: L %d -> %d, %.1fM -> %.1fM parameters, B=%d T=%d\n",
                strata::growth::op_name(plan.stage.op), plan.from.n_layer, plan.to.n_layer,
                static_cast<double>(pc_small.total()) / 1e6, static_cast<double>(pc_big.total()) / 1e6, B, T);
    std::printf("  growth (grow_in_place)          %9.3f s\n", growth_s);
    std::printf("  one training step, grown model  %9.3f s   (median of %d)\n", step_s, steps);
    std::printf(
        "  first step after the growth     %9.3f s   (first touch of the new gradients, moments, "
        "activations)\n",
        first_s);
    std::printf("  growth / step                   %9.3f   (target < 1)\n", growth_s / step_s);
    if (learned)
      std::printf(
          "  G_learn step's own work         %9.3f s   (%.3f x the training step: gradient of the learned "
          "matrices, Adam, materialise; median of %d)\n",
          learn_s, learn_s / step_s, steps);
    std::printf("  RSS before growth               %9.0f MiB\n", rss_before);
    if (peak_ok)
      std::printf("  peak RSS during growth          %9.0f MiB\n", peak);
    else
      std::printf(
          "  peak RSS during growth          (cannot reset VmHWM: /proc/self/clear_refs not writable)\n");
    std::printf("  old + new state + activations   %9.0f MiB   (%.0f + %.0f + %.0f)\n",
                old_state + new_state + acts, old_state, new_state, acts);
    if (peak_ok)
      std::printf("  peak / (old + new)              %9.3f   (target <= 1)\n",
                  peak / (old_state + new_state + acts));
  } catch (const strata::Error& e) {
    std::fprintf(stderr, "growth_bench: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
