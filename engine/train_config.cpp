#include "engine/train_config.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "engine/check.h"
#include "models/model_config_json.h"

namespace strata {

void TrainConfig::finalize() {
  model.validate();
  STRATA_REQUIRE(batch_size >= 1, "--batch-size must be at least 1 (got ", batch_size, ")");
  STRATA_REQUIRE(seq_len >= 1 && seq_len <= model.max_seq_len, "--seq-len ", seq_len,
                 " must be in [1, the model's max_seq_len ", model.max_seq_len, "]");
  STRATA_REQUIRE(world >= 1, "world size must be at least 1 (got ", world, ")");
  const int64_t micro = int64_t{batch_size} * seq_len * world;
  if (global_batch_tokens == 0) global_batch_tokens = micro;
  STRATA_REQUIRE(global_batch_tokens > 0 && global_batch_tokens % micro == 0, "--global-batch-tokens ",
                 global_batch_tokens, " must be a positive multiple of batch-size x seq-len",
                 world > 1 ? " x ranks" : "", " = ", micro, world > 1 ? cat(" (", world, " ranks)") : "");
  STRATA_REQUIRE(zero_stage == 0 || zero_stage == 1, "--zero must be 0 or 1 (got ", zero_stage, ")");
  STRATA_REQUIRE(comm_timeout > 0 && std::isfinite(comm_timeout), "--comm-timeout must be positive seconds (got ",
                 comm_timeout, ")");
  STRATA_REQUIRE(!nccl_loopback || (device == "cuda" && world == 1),
                 "--nccl-loopback: measures the NCCL data-parallel path on one GPU; it needs --device cuda and one "
                 "process (got --device ", device, ", ", world, " rank", world == 1 ? "" : "s", ")");
  STRATA_REQUIRE(parse_recompute(recompute, &recompute_mode), "--recompute '", recompute,
                 "': expected none, norm, mlp or all");
  STRATA_REQUIRE(recompute_mode == Recompute::kNone || device == "cuda", "--recompute ", recompute,
                 ": activation recomputation is a CUDA-backend option (--device cuda); the CPU backend "
                 "keeps every activation");
  STRATA_REQUIRE(attention == "flash" || attention == "cudnn", "--attention '", attention,
                 "': expected flash or cudnn");
  STRATA_REQUIRE(attention == "flash" || device == "cuda", "--attention ", attention,
                 ": cuDNN's attention is a CUDA-backend option (--device cuda)");
  STRATA_REQUIRE(steps >= 0 && tokens >= 0 && flops >= 0,
                 "--steps, --tokens and --flops must not be negative");
  STRATA_REQUIRE(steps > 0 || tokens > 0 || flops > 0, "give the run length: --steps, --tokens or --flops");
  STRATA_REQUIRE(steps == 0 || tokens == 0 || tokens == steps * global_batch_tokens,
                 "--steps and --tokens disagree (", steps, " steps x ", global_batch_tokens,
                 " tokens != ", tokens, "); give one");
  if (steps == 0 && tokens > 0) steps = (tokens + global_batch_tokens - 1) / global_batch_tokens;
  // A FLOPs budget determines the steps; steps given as well (a resumed run's config holds both) must agree.
  const int64_t given_steps = flops > 0 ? steps : 0;
  if (flops > 0) steps = 0;
  resolve_growth();
  STRATA_REQUIRE(given_steps == 0 || given_steps == steps, "--flops ", flops, " ends the run after ", steps,
                 " steps, but --steps / --tokens say ", given_steps, "; give one");
  tokens = steps * global_batch_tokens;
  schedule.total_steps = steps;
  schedule.validate();
  for (size_t k = 0; k < grow.size(); ++k) {
    GrowthPoint& p = growth_points[k];
    const growth::Stage& st = grow[k];
    STRATA_REQUIRE(p.phase_end < steps, "--grow '", st.text, "': its learn phase ends at step ", p.phase_end,
                   ", not before the end of the run (", steps, " steps)");
    p.schedule = schedule;
    p.schedule.total_steps = steps - p.phase_end;
    if (st.warmup >= 0) p.schedule.warmup_steps = st.warmup;
    p.schedule.warmup_steps = std::min(p.schedule.warmup_steps, p.schedule.total_steps);
    p.schedule.validate();
  }
  adamw.validate();
  STRATA_REQUIRE(grad_clip >= 0, "--grad-clip must be >= 0 (got ", grad_clip, ")");
  STRATA_REQUIRE(log_every >= 1, "--log-every must be at least 1 (got ", log_every, ")");
  STRATA_REQUIRE(eval_every >= 0 && sample_every >= 0 && ckpt_every >= 0,
                 "--eval-every, --sample-every and --ckpt-every must be >= 0");
  STRATA_REQUIRE(eval_batches >= 0, "--eval-batches must be >= 0 (got ", eval_batches, ")");
  STRATA_REQUIRE(sample_tokens >= 0, "--sample-tokens must be >= 0 (got ", sample_tokens, ")");
  STRATA_REQUIRE(temperature >= 0, "--temperature must be >= 0 (got ", temperature, ")");
  STRATA_REQUIRE(top_k >= 0, "--top-k must be >= 0 (got ", top_k, ")");
  STRATA_REQUIRE(keep_last >= 0, "--keep-last must be >= 0 (got ", keep_last, ")");
  STRATA_REQUIRE(stop_at >= 0, "--stop-at must be >= 0 (got ", stop_at, ")");
  STRATA_REQUIRE(peak_tflops >= 0 && std::isfinite(peak_tflops),
                 "--peak-tflops must be a positive number of TFLOP/s (got ", peak_tflops, ")");
  STRATA_REQUIRE(!out_dir.empty(), "--out must not be empty");
  // A:B step ranges (1-based, within the run), for flags that need --device cuda.
  auto step_range = [&](const char* flag, const std::string& text, const char* why, long& first, long& last) {
    first = last = 0;
    if (text.empty()) return;
    long a = 0, b = 0;
    char tail = 0;
    STRATA_REQUIRE(std::sscanf(text.c_str(), "%ld:%ld%c", &a, &b, &tail) == 2 && a >= 1 && a <= b, flag, " '",
                   text, "': expected A:B with 1 <= A <= B (steps, 1-based)");
    STRATA_REQUIRE(b <= steps, flag, " '", text, "': the run has ", steps, " steps");
    STRATA_REQUIRE(device == "cuda", flag, " ", why, ": it needs --device cuda");
    first = a;
    last = b;
  };
  step_range("--profile-steps", profile_steps, "brackets steps with cudaProfilerStart/Stop", profile_first,
             profile_last);
  step_range("--op-times", op_times, "times the CUDA ops with CUDA events", op_times_first, op_times_last);
}

void TrainConfig::resolve_growth() {
  // Places every stage and, for a FLOPs budget, the end of the run, phase by phase: within a phase the
  // architecture and so the FLOPs per step are fixed, so each point is a division, not a walk over steps.
  growth_points.clear();
  models::ModelConfig arch = model;
  double done_flops = 0.0;  // cumulative FLOPs after s steps
  long s = 0;
  long busy_until = 0;  // the previous stage's learn/mask phase
  const double G = static_cast<double>(global_batch_tokens);
  // Steps from s until cumulative FLOPs (per_step each) reach `target`: the smallest n with
  // done + n * per_step >= target.
  auto steps_to = [&](double target, double per_step) -> long {
    if (done_flops >= target) return 0;
    double n = std::ceil((target - done_flops) / per_step);
    if (n > 1 && done_flops + (n - 1) * per_step >= target) n -= 1;
    STRATA_REQUIRE(n < 9e15, "the FLOPs budget ", target, " needs more than 9e15 steps");
    return static_cast<long>(n);
  };
  for (size_t k = 0; k < grow.size(); ++k) {
    const growth::Stage& st = grow[k];
    const double per_step = models::train_flops_per_token(arch, seq_len) * G;
    long at = 0;  // the step after which the stage is due
    switch (st.unit) {
      case growth::Unit::kSteps:
        at = static_cast<long>(st.at);
        break;
      case growth::Unit::kTokens:
        at = static_cast<long>(std::ceil(st.at / G));
        break;
      case growth::Unit::kFlops:
        at = s + steps_to(st.at, per_step);
        break;
    }
    at = std::max(at, s);
    STRATA_REQUIRE(at > 0, "--grow '", st.text, "': the point is before the first step");
    STRATA_REQUIRE(steps == 0 || at < steps, "--grow '", st.text, "': its point (after step ", at,
                   ") is not before the end of the run (", steps, " steps)");
    if (steps == 0 && flops > 0) {
      const long end = s + steps_to(flops, per_step);
      STRATA_REQUIRE(at < end, "--grow '", st.text, "': its point (after step ", at,
                     ") is not before the end of the run (the FLOPs budget ends it after step ", end, ")");
    }
    STRATA_REQUIRE(at >= busy_until, "--grow '", st.text, "': its point (after step ", at,
                   ") comes before the previous stage's phase ends (step ", busy_until,
                   "); grow later or shorten learn_steps / mask_steps");
    done_flops += static_cast<double>(at - s) * per_step;
    s = at;
    GrowthPoint p;
    p.step = s;
    p.from = arch;
    p.to = growth::target_config(arch, st);  // errors when the stage does not fit
    p.phase_end = s + (st.op == growth::Op::kLearn ? st.learn_steps : 0);
    busy_until = s + (st.op == growth::Op::kLearn    ? st.learn_steps
                      : st.op == growth::Op::kRandom ? st.mask_steps
                                                     : 1);
    arch = p.to;
    growth_points.push_back(p);
  }
  if (steps == 0) steps = s + steps_to(flops, models::train_flops_per_token(arch, seq_len) * G);
}

double TrainConfig::lr_at(long step) const {
  for (size_t k = growth_points.size(); k-- > 0;)
    if (grow[k].schedule == growth::SchedulePolicy::kRestart && growth_points[k].phase_end <= step)
      return growth_points[k].schedule.lr(step - growth_points[k].phase_end);
  return schedule.lr(step);
}

const models::ModelConfig& TrainConfig::model_at(long step) const {
  for (size_t k = growth_points.size(); k-- > 0;)
    if (growth_points[k].step <= step) return growth_points[k].to;
  return model;
}

nlohmann::json TrainConfig::to_json() const {
  nlohmann::json grow_json = nlohmann::json::array();
  for (const growth::Stage& st : grow) grow_json.push_back(st.to_json());
  return {{"model", models::model_config_to_json(model)},
          {"data_dir", data_dir},
          {"tokenizer", tokenizer},
          {"batch_size", batch_size},
          {"seq_len", seq_len},
          {"global_batch_tokens", global_batch_tokens},
          {"steps", steps},
          {"tokens", tokens},
          {"flops", flops},
          {"grow", grow_json},
          {"schedule",
           {{"kind", schedule_kind_name(schedule.kind)},
            {"max_lr", schedule.max_lr},
            {"min_lr_frac", schedule.min_lr_frac},
            {"warmup_steps", schedule.warmup_steps},
            {"decay_frac", schedule.decay_frac}}},
          {"adamw",
           {{"beta1", adamw.beta1},
            {"beta2", adamw.beta2},
            {"eps", adamw.eps},
            {"weight_decay", adamw.weight_decay}}},
          {"grad_clip", grad_clip},
          {"seed", seed},
          {"shuffle", shuffle},
          {"log_every", log_every},
          {"eval_every", eval_every},
          {"eval_batches", eval_batches},
          {"sample_every", sample_every},
          {"sample_tokens", sample_tokens},
          {"sample_prompt", sample_prompt},
          {"temperature", temperature},
          {"top_k", top_k},
          {"out_dir", out_dir},
          {"ckpt_every", ckpt_every},
          {"keep_last", keep_last},
          {"threads", threads}};
}

namespace {

template <typename T>
void get(const nlohmann::json& j, const char* key, T& out) {
  STRATA_REQUIRE(j.is_object() && j.contains(key), "run config: missing field '", key, "'");
  try {
    out = j.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    STRATA_FAIL("run config: field '", key, "' has the wrong type (", j.at(key).dump(), ")");
  }
}

}  // namespace

TrainConfig TrainConfig::from_json(const nlohmann::json& j) {
  TrainConfig c;
  STRATA_REQUIRE(j.is_object() && j.contains("model"), "run config: missing field 'model'");
  c.model = models::model_config_from_json(j.at("model"));
  get(j, "data_dir", c.data_dir);
  get(j, "tokenizer", c.tokenizer);
  get(j, "batch_size", c.batch_size);
  get(j, "seq_len", c.seq_len);
  get(j, "global_batch_tokens", c.global_batch_tokens);
  get(j, "steps", c.steps);
  get(j, "tokens", c.tokens);
  // Absent in runs written before growth existed.
  c.flops = j.value("flops", 0.0);
  const nlohmann::json g = j.value("grow", nlohmann::json::array());
  STRATA_REQUIRE(g.is_array(), "run config: field 'grow' must be an array of stage strings");
  for (const auto& st : g) c.grow.push_back(growth::Stage::from_json(st));
  nlohmann::json s, a;
  get(j, "schedule", s);
  std::string kind;
  get(s, "kind", kind);
  c.schedule.kind = parse_schedule_kind(kind);
  get(s, "max_lr", c.schedule.max_lr);
  get(s, "min_lr_frac", c.schedule.min_lr_frac);
  get(s, "warmup_steps", c.schedule.warmup_steps);
  get(s, "decay_frac", c.schedule.decay_frac);
  get(j, "adamw", a);
  get(a, "beta1", c.adamw.beta1);
  get(a, "beta2", c.adamw.beta2);
  get(a, "eps", c.adamw.eps);
  get(a, "weight_decay", c.adamw.weight_decay);
  get(j, "grad_clip", c.grad_clip);
  get(j, "seed", c.seed);
  get(j, "shuffle", c.shuffle);
  get(j, "log_every", c.log_every);
  get(j, "eval_every", c.eval_every);
  get(j, "eval_batches", c.eval_batches);
  get(j, "sample_every", c.sample_every);
  get(j, "sample_tokens", c.sample_tokens);
  get(j, "sample_prompt", c.sample_prompt);
  get(j, "temperature", c.temperature);
  get(j, "top_k", c.top_k);
  get(j, "out_dir", c.out_dir);
  get(j, "ckpt_every", c.ckpt_every);
  get(j, "keep_last", c.keep_last);
  get(j, "threads", c.threads);
  return c;
}

}  // namespace strata
