#include "engine/train_config.h"

#include "engine/check.h"
#include "models/model_config_json.h"

namespace strata {

void TrainConfig::finalize() {
  model.validate();
  STRATA_REQUIRE(batch_size >= 1, "--batch-size must be at least 1 (got ", batch_size, ")");
  STRATA_REQUIRE(seq_len >= 1 && seq_len <= model.max_seq_len, "--seq-len ", seq_len,
                 " must be in [1, the model's max_seq_len ", model.max_seq_len, "]");
  const int64_t micro = int64_t{batch_size} * seq_len;
  if (global_batch_tokens == 0) global_batch_tokens = micro;
  STRATA_REQUIRE(global_batch_tokens > 0 && global_batch_tokens % micro == 0, "--global-batch-tokens ",
                 global_batch_tokens, " must be a positive multiple of batch-size x seq-len = ", micro);
  STRATA_REQUIRE(steps >= 0 && tokens >= 0, "--steps and --tokens must not be negative");
  STRATA_REQUIRE(steps > 0 || tokens > 0, "give the run length: --steps or --tokens");
  STRATA_REQUIRE(steps == 0 || tokens == 0 || tokens == steps * global_batch_tokens,
                 "--steps and --tokens disagree (", steps, " steps x ", global_batch_tokens,
                 " tokens != ", tokens, "); give one");
  if (steps == 0) steps = (tokens + global_batch_tokens - 1) / global_batch_tokens;
  tokens = steps * global_batch_tokens;
  schedule.total_steps = steps;
  schedule.validate();
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
  STRATA_REQUIRE(!out_dir.empty(), "--out must not be empty");
}

nlohmann::json TrainConfig::to_json() const {
  return {{"model", models::model_config_to_json(model)},
          {"data_dir", data_dir},
          {"tokenizer", tokenizer},
          {"batch_size", batch_size},
          {"seq_len", seq_len},
          {"global_batch_tokens", global_batch_tokens},
          {"steps", steps},
          {"tokens", tokens},
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
