// bench/train_bench.cpp: CPU training throughput of the engine for one model preset, the same step that
// bench/torch_train_bench.py times in PyTorch (bench/train_bench.sh runs both and prints ratios).
//
// One step = zero_grad, forward with targets, backward, clip to 1.0 (folded into the AdamW update, as in the trainer), AdamW step (lr 1e-4, so the
// loss stays finite however long it runs) on one fixed random (B,T) batch (seeded uniform tokens over the
// preset's vocabulary) from init_params. --warmup untimed steps, then --steps timed ones; reports tokens/s
// (B*T per step, from the median and the best step), the median time of each phase, and the peak resident
// set (getrusage ru_maxrss: the whole process, parameters, gradients, moments and activations). Threads: the
// OpenMP runtime's (set OMP_NUM_THREADS, and OPENBLAS_NUM_THREADS for the matrix products).
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "engine/check.h"
#include "engine/model.h"
#include "engine/optim.h"
#include "engine/params.h"
#include "kernels/cpu/blas_runtime.h"
#include "models/model_config.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double peak_rss_mb() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;  // Linux: kilobytes
}

std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v ? v : fallback;
}

}  // namespace

int main(int argc, char** argv) {
  strata::ops::cpu_blas_fix_core(argv);  // OpenBLAS' kernel set for this CPU (see kernels/cpu/blas_runtime.h)
  CLI::App app{"CPU training throughput of one model preset", "strata_train_bench"};
  std::string preset = "llama-mini";
  int B = 4, T = 64, warmup = 2, steps = 5;
  uint64_t seed = 1234;
  bool json = false;
  app.add_option("--model", preset, "Model preset (strata model --list)");
  app.add_option("--batch", B, "Sequences per step")->check(CLI::PositiveNumber);
  app.add_option("--seq", T, "Sequence length")->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "Untimed steps first")->check(CLI::NonNegativeNumber);
  app.add_option("--steps", steps, "Timed steps")->check(CLI::PositiveNumber);
  app.add_option("--seed", seed, "Seed of the initial weights and the batch");
  app.add_flag("--json", json, "Print one JSON object instead of text");
  CLI11_PARSE(app, argc, argv);

  try {
    const strata::models::ModelConfig cfg = strata::models::preset(preset);
    STRATA_REQUIRE(T <= cfg.max_seq_len, "--seq ", T, " exceeds the model's max_seq_len ", cfg.max_seq_len);
    const auto t_build = Clock::now();
    strata::Model model(cfg, B, T);
    strata::init_params(model.params(), seed);
    strata::AdamWConfig oc;
    strata::AdamW opt(model.params().layout(), oc);
    const double build_s = seconds_since(t_build);

    std::mt19937_64 rng(seed + 1);
    std::vector<int32_t> inputs(static_cast<size_t>(B) * T), targets(inputs.size());
    for (auto& x : inputs) x = static_cast<int32_t>(rng() % static_cast<uint64_t>(cfg.vocab_size));
    for (auto& y : targets) y = static_cast<int32_t>(rng() % static_cast<uint64_t>(cfg.vocab_size));

    std::vector<double> step_s, fwd_s, bwd_s, opt_s;
    float first_loss = 0, last_loss = 0;
    for (int i = 0; i < warmup + steps; ++i) {
      const auto t0 = Clock::now();
      model.zero_grad();
      const float loss = model.forward(inputs.data(), targets.data());
      const auto t1 = Clock::now();
      model.backward();
      const auto t2 = Clock::now();
      const double norm = strata::grad_norm(model.grads());  // clipping folded into AdamW, as the trainer does
      opt.step(model.params(), model.grads(), 1e-4, strata::clip_scale(norm, 1.0));
      const auto t3 = Clock::now();
      STRATA_REQUIRE(std::isfinite(loss), "non-finite loss at step ", i);
      if (i == 0) first_loss = loss;
      last_loss = loss;
      if (i < warmup) continue;
      step_s.push_back(std::chrono::duration<double>(t3 - t0).count());
      fwd_s.push_back(std::chrono::duration<double>(t1 - t0).count());
      bwd_s.push_back(std::chrono::duration<double>(t2 - t1).count());
      opt_s.push_back(std::chrono::duration<double>(t3 - t2).count());
    }
    const double tokens = static_cast<double>(B) * T;
    const double med = median(step_s), best = *std::min_element(step_s.begin(), step_s.end());
    const int64_t n_params = model.params().numel();
    const double flops = strata::models::train_flops_per_token(cfg, T) * tokens;
    if (json) {
      nlohmann::json j = {{"impl", "strata"},
                          {"model", preset},
                          {"params", n_params},
                          {"B", B},
                          {"T", T},
                          {"threads", env_or("OMP_NUM_THREADS", "default")},
                          {"blas_core", strata::ops::cpu_blas_core()},
                          {"warmup", warmup},
                          {"steps", steps},
                          {"tokens_per_s", tokens / med},
                          {"tokens_per_s_best", tokens / best},
                          {"step_ms", 1e3 * med},
                          {"forward_ms", 1e3 * median(fwd_s)},
                          {"backward_ms", 1e3 * median(bwd_s)},
                          {"optimizer_ms", 1e3 * median(opt_s)},
                          {"gflops_per_s", flops / med / 1e9},
                          {"build_s", build_s},
                          {"first_loss", first_loss},
                          {"last_loss", last_loss},
                          {"peak_rss_mb", peak_rss_mb()}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf(
          "strata %s (%.1f M params), B=%d T=%d, OMP_NUM_THREADS=%s, OpenBLAS %s, %d timed steps after %d\n",
          preset.c_str(), static_cast<double>(n_params) / 1e6, B, T,
          env_or("OMP_NUM_THREADS", "default").c_str(), strata::ops::cpu_blas_core().c_str(), steps, warmup);
      std::printf("  %.0f tokens/s (median step %.1f ms; best %.0f tokens/s), %.1f GFLOP/s\n", tokens / med,
                  1e3 * med, tokens / best, flops / med / 1e9);
      std::printf("  forward %.1f ms, backward %.1f ms, clip + AdamW %.1f ms (medians)\n",
                  1e3 * median(fwd_s), 1e3 * median(bwd_s), 1e3 * median(opt_s));
      std::printf("  loss %.4f -> %.4f, peak RSS %.0f MB\n", first_loss, last_loss, peak_rss_mb());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "strata_train_bench: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
