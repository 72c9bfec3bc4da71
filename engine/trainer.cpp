// engine/trainer.cpp: the training loop. One optimizer step = `accumulation` micro-batches of B x T tokens
// (forward, backward with 1/k scaling), global-norm clipping, the scheduled learning rate, one AdamW update.
#include "engine/trainer.h"

#include <lzma.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <sstream>

#include "data/loader.h"
#include "engine/check.h"
#include "engine/checkpoint.h"
#include "engine/comm.h"
#include "engine/fileio.h"
#include "engine/optim.h"
#include "engine/parallel.h"
#include "engine/peak_flops.h"
#include "engine/sampler.h"
#include "engine/train_backend.h"
#include "growth/apply.h"
#include "growth/comm_cost.h"
#include "growth/plan.h"
#include "models/model_config_json.h"

namespace strata {
namespace fs = std::filesystem;

std::vector<std::string> split_shards(const std::string& data_dir, const std::string& split) {
  std::vector<std::string> out;
  std::error_code ec;
  if (!fs::is_directory(data_dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(data_dir)) {
    const std::string n = e.path().filename().string();
    if (e.is_regular_file() && n.starts_with(split + "_") && n.ends_with(".bin"))
      out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

namespace {

// Mean loss and bits per byte over `batches` batches of `loader` (from its start; 0 = one epoch); eval_batch
// returns one batch's mean loss and sets its count of non-ignored targets. Under data parallelism rank r of
// `world` evaluates batches r, r + world, ... and the caller sums the results over the ranks.
template <class EvalBatch>
EvalResult evaluate_batches(int B, int T, data::DataLoader& loader, int batches, const data::Tokenizer& tok,
                            EvalBatch&& eval_batch, int rank = 0, int world = 1) {
  loader.reset();
  const int n = batches > 0 ? static_cast<int>(std::min<uint64_t>(batches, loader.batches_per_epoch()))
                            : static_cast<int>(loader.batches_per_epoch());
  std::vector<int32_t> in(static_cast<size_t>(B) * T), tg(in.size());
  EvalResult r;
  double nats = 0.0;
  for (int b = 0; b < n; ++b) {
    loader.next(in.data(), tg.data());
    if (b % world != rank) continue;
    int64_t valid = 0;
    const float loss = eval_batch(in.data(), tg.data(), &valid);
    nats += static_cast<double>(loss) * static_cast<double>(valid);
    r.tokens += valid;
    for (int32_t t : tg)
      if (t != kIgnoreIndex && static_cast<uint32_t>(t) < tok.vocab_size())
        r.bytes += static_cast<int64_t>(tok.token_bytes(static_cast<data::TokenId>(t)).size());
  }
  r.batches = n;
  r.nats = nats;
  r.loss = r.tokens ? nats / static_cast<double>(r.tokens) : 0.0;
  r.bits_per_byte = r.bytes ? nats / std::log(2.0) / static_cast<double>(r.bytes) : 0.0;
  return r;
}

data::DataLoader eval_loader(int B, int T, int V, const std::vector<std::string>& shards) {
  data::LoaderOptions lo;
  lo.batch_size = B;
  lo.seq_len = T;
  lo.shuffle = false;
  lo.vocab_size = static_cast<uint32_t>(V);
  return data::DataLoader(shards, lo);
}

}  // namespace

data::DataLoader eval_loader(const Model& model, const std::vector<std::string>& shards) {
  return eval_loader(model.batch(), model.seq_len(), model.config().vocab_size, shards);
}

EvalResult evaluate(Model& model, data::DataLoader& loader, int batches, const data::Tokenizer& tok) {
  return evaluate_batches(model.batch(), model.seq_len(), loader, batches, tok,
                          [&](const int32_t* in, const int32_t* tg, int64_t* valid) {
                            const float loss = model.evaluate(in, tg);
                            *valid = model.num_valid_targets();
                            return loss;
                          });
}

nlohmann::json data_manifest(const std::string& data_dir) {
  const std::string path = (fs::path(data_dir) / "manifest.json").string();
  if (!file_exists(path)) return nullptr;
  auto m = nlohmann::json::parse(read_file(path), nullptr, false);
  return m.is_object() ? m : nlohmann::json();
}

namespace {

using Clock = std::chrono::steady_clock;

// SIGINT / SIGTERM during training: the step in flight finishes, a checkpoint is written, and the run ends
// with status 128 + signal. A second signal gets the default action (the handler resets itself).
std::atomic<int> g_stop_signal{0};
extern "C" void on_stop_signal(int sig) {
  g_stop_signal.store(sig);
  note_stop_signal(sig);
  std::signal(sig, SIG_DFL);
}

struct StopSignals {
  using Handler = void (*)(int);
  Handler old_int, old_term;
  StopSignals()
      : old_int(std::signal(SIGINT, on_stop_signal)), old_term(std::signal(SIGTERM, on_stop_signal)) {
    g_stop_signal.store(0);
  }
  ~StopSignals() {
    std::signal(SIGINT, old_int);
    std::signal(SIGTERM, old_term);
  }
};
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string human(double x) {
  char b[32];
  if (x >= 1e12)
    std::snprintf(b, sizeof b, "%.2fT", x / 1e12);
  else if (x >= 1e9)
    std::snprintf(b, sizeof b, "%.2fG", x / 1e9);
  else if (x >= 1e6)
    std::snprintf(b, sizeof b, "%.2fM", x / 1e6);
  else if (x >= 1e3)
    std::snprintf(b, sizeof b, "%.1fK", x / 1e3);
  else
    std::snprintf(b, sizeof b, "%.0f", x);
  return b;
}

std::string duration(double s) {
  char b[32];
  const long t = std::lround(s);
  if (t >= 3600)
    std::snprintf(b, sizeof b, "%ldh%02ldm", t / 3600, t / 60 % 60);
  else
    std::snprintf(b, sizeof b, "%ldm%02lds", t / 60, t % 60);
  return b;
}

// --op-times: the per-op GPU time summed over the window's steps, as a table and as one metrics row.
// window_s: the wall time of those steps, each measured until the device finished it.
nlohmann::json op_times_report(const std::map<std::string, OpTiming>& totals, long first, long last,
                               double window_s) {
  std::vector<OpTiming> ops;
  double sum_ms = 0.0;
  for (const auto& [name, t] : totals) {
    ops.push_back(t);
    sum_ms += t.ms;
  }
  std::stable_sort(ops.begin(), ops.end(), [](const OpTiming& a, const OpTiming& b) { return a.ms > b.ms; });
  const double steps = static_cast<double>(last - first + 1), step_ms = 1e3 * window_s / steps;
  std::printf("GPU time per op, steps %ld-%ld (CUDA events around each op; per step):\n", first, last);
  std::printf("  %-26s %8s %10s %7s\n", "op", "calls", "ms", "share");
  nlohmann::json rows = nlohmann::json::array();
  for (const OpTiming& t : ops) {
    std::printf("  %-26s %8.1f %10.3f %6.1f%%\n", t.op.c_str(), static_cast<double>(t.calls) / steps,
                t.ms / steps, 100.0 * t.ms / std::max(sum_ms, 1e-12));
    rows.push_back({{"op", t.op},
                    {"calls_per_step", static_cast<double>(t.calls) / steps},
                    {"ms_per_step", t.ms / steps}});
  }
  std::printf(
      "  ops sum %.3f ms per step; the step %.3f ms (wall, to the device's end): %.1f%% in ops; the rest is "
      "copies, memsets, collectives, host work and the gaps between ops\n",
      sum_ms / steps, step_ms, 100.0 * (sum_ms / steps) / std::max(step_ms, 1e-12));
  std::fflush(stdout);
  return {{"type", "op_times"},
          {"first_step", first},
          {"last_step", last},
          {"ops", rows},
          {"ops_ms_per_step", sum_ms / steps},
          {"step_ms", step_ms}};
}

// metrics.jsonl: one JSON object per line, flushed as written. On resume the rows after the checkpoint's
// step are dropped first, so an interrupted-and-resumed run has the same rows as an uninterrupted one.
class MetricsLog {
 public:
  MetricsLog(const std::string& path, long keep_through_step) {
    std::string kept;
    if (keep_through_step >= 0 && file_exists(path)) {
      std::istringstream in(read_file(path));
      for (std::string line; std::getline(in, line);) {
        if (line.empty()) continue;
        const auto j = nlohmann::json::parse(line, nullptr, false);
        if (!j.is_discarded() && j.contains("step") && j["step"].get<long>() <= keep_through_step)
          kept += line + "\n";
      }
    }
    write_file_atomic(path, kept);
    f_ = std::fopen(path.c_str(), "a");
    STRATA_REQUIRE(f_ != nullptr, "cannot open ", path, " for appending");
  }
  ~MetricsLog() {
    if (f_) std::fclose(f_);
  }
  void write(const nlohmann::json& j) {
    const std::string s = j.dump() + "\n";
    std::fwrite(s.data(), 1, s.size(), f_);
    std::fflush(f_);
  }

 private:
  std::FILE* f_ = nullptr;
};

std::string tokenizer_from_manifest(const std::string& data_dir) {
  const nlohmann::json m = data_manifest(data_dir);
  STRATA_REQUIRE(!m.is_null(), "data folder ", data_dir,
                 " has no readable manifest.json (run `strata prepare --out ", data_dir,
                 "`, or give --tokenizer)");
  STRATA_REQUIRE(m.contains("tokenizer") && m["tokenizer"].is_string(), data_dir,
                 "/manifest.json: no \"tokenizer\" field");
  return m["tokenizer"].get<std::string>();
}

void print_config(const TrainConfig& c, size_t train_shards, uint64_t train_tokens, size_t val_shards,
                  int threads) {
  const models::ParamCount p = models::count_parameters(c.model);
  const auto& m = c.model;
  std::printf("strata train\n");
  auto row = [](const char* k, const std::string& v) { std::printf("  %-22s %s\n", k, v.c_str()); };
  row("model",
      cat(m.name, " (", models::family_name(m.family), "): L=", m.n_layer, " C=", m.d_model, " NH=", m.n_head,
          " KVH=", m.n_kv_head, " F=", m.d_ff, " V=", m.vocab_size, " Tmax=", m.max_seq_len));
  row("parameters",
      cat(human(static_cast<double>(p.total())), " (embedding ", human(static_cast<double>(p.embedding)),
          ", non-embedding ", human(static_cast<double>(p.non_embedding)), ")"));
  row("FLOPs/token", human(models::train_flops_per_token(m, c.seq_len)));
  row("data", cat(c.data_dir, ": ", train_shards, " train shards (", human(static_cast<double>(train_tokens)),
                  " tokens), ", val_shards, " val shards"));
  row("tokenizer", c.tokenizer);
  row("batch", cat(c.batch_size, " x ", c.seq_len, " tokens x ", c.accumulation(),
                   " accumulation = ", c.global_batch_tokens, " tokens/step"));
  row("steps",
      cat(c.steps, " (", human(static_cast<double>(c.tokens)), " tokens, ",
          cat(static_cast<double>(c.tokens) / static_cast<double>(std::max<uint64_t>(1, train_tokens))),
          " epochs)"));
  row("schedule", cat(schedule_kind_name(c.schedule.kind), ", lr ", c.schedule.max_lr, ", warmup ",
                      c.schedule.warmup_steps, ", min lr ", c.schedule.min_lr_frac, " x max",
                      c.schedule.kind == ScheduleKind::kWsd ? cat(", decay ", c.schedule.decay_frac) : ""));
  row("AdamW", cat("betas (", c.adamw.beta1, ", ", c.adamw.beta2, "), eps ", c.adamw.eps, ", weight decay ",
                   c.adamw.weight_decay, ", grad clip ", c.grad_clip));
  for (size_t k = 0; k < c.grow.size(); ++k) {
    const GrowthPoint& gp = c.growth_points[k];
    row(k == 0 ? "growth" : "",
        cat("after step ", gp.step, ": ", c.grow[k].to_string(), " -> L=", gp.to.n_layer,
            " C=", gp.to.d_model, " F=", gp.to.d_ff, " (",
            human(static_cast<double>(models::count_parameters(gp.to).total())), " parameters)"));
  }
  row("seed", cat(c.seed, c.shuffle ? " (shuffled)" : " (natural order)"));
  row("eval", cat("every ", c.eval_every, " steps, ", c.eval_batches, " batches"));
  row("out", cat(c.out_dir, " (checkpoint every ", c.ckpt_every, " steps, keep ", c.keep_last, ")"));
  row("threads", cat(threads));
  std::fflush(stdout);
}

// The first difference between two JSON values, as "path: a vs b" ("" when equal).
std::string json_difference(const nlohmann::json& a, const nlohmann::json& b, const std::string& path) {
  if (a == b) return {};
  if (a.is_object() && b.is_object()) {
    for (const auto& [k, v] : a.items()) {
      if (!b.contains(k)) return cat(path, k, ": ", v.dump(), " vs (absent)");
      if (std::string d = json_difference(v, b[k], cat(path, k, ".")); !d.empty()) return d;
    }
    for (const auto& [k, v] : b.items())
      if (!a.contains(k)) return cat(path, k, ": (absent) vs ", v.dump());
  }
  std::string p = path;
  if (!p.empty() && p.back() == '.') p.pop_back();
  return cat(p.empty() ? "value" : p, ": ", a.dump(), " vs ", b.dump());
}

// Every rank must train the same run: the same config, device, ZeRO stage, resume point and data (the
// loader's fingerprint: token counts and shard sizes). A difference is an AgreedError on every rank
// naming the first rank that differs from rank 0, its host, and the first differing field.
void check_same_config_on_every_rank(Communicator& comm, const TrainConfig& cfg, const std::string& resume,
                                     bool overwrite, const data::LoaderState& loader, long resume_step) {
  comm.set_activity("comparing the run's config across ranks");
  nlohmann::json mine = {{"config", cfg.to_json()},
                         {"device", cfg.device},
                         {"zero", cfg.zero_stage},
                         {"resume", resume},
                         {"resume_step", resume_step},
                         {"overwrite", overwrite},
                         {"data", loader.to_json()}};
  // The position is the same on every rank; only the fingerprint matters here.
  mine["data"].erase("epoch");
  mine["data"].erase("next_sample");
  const std::vector<std::string> all = comm.all_gather_strings(mine.dump());
  const std::vector<std::string> hosts = comm.all_gather_strings(host_name());
  const nlohmann::json first = nlohmann::json::parse(all[0]);
  for (size_t r = 1; r < all.size(); ++r) {
    if (all[r] == all[0]) continue;
    throw AgreedError(cat("rank ", r, " (host ", hosts[r], ") was started with a different run than rank 0 (host ",
                          hosts[0], "): ", json_difference(nlohmann::json::parse(all[r]), first, ""),
                          " (rank ", r, " vs rank 0); every rank must get the same command line, config file "
                          "and data"));
  }
}

// Every rank must hold the same weights (a CRC-64 of the buffer): after initialisation or a resume (step < 0),
// and at every checkpoint (replicas that drifted apart would be a reduction that missed some gradients).
void check_same_weights_on_every_rank(Communicator& comm, const ParamBuffer& params, long step) {
  comm.set_activity("comparing the weights across ranks");
  const uint64_t crc = lzma_crc64(reinterpret_cast<const uint8_t*>(params.data()),
                                  static_cast<size_t>(params.numel()) * sizeof(float), 0);
  const std::vector<std::string> all = comm.all_gather_strings(crc64_hex(crc));
  for (size_t r = 1; r < all.size(); ++r) {
    if (all[r] == all[0]) continue;
    if (step < 0)
      throw AgreedError(cat("rank ", r, " starts from different weights than rank 0 (CRC-64 ", all[r], " vs ",
                            all[0], "): the ranks read different checkpoint files, or initialised differently"));
    throw AgreedError(cat("after step ", step, " rank ", r, " holds different weights than rank 0 (CRC-64 ",
                          all[r], " vs ", all[0], "): the replicas diverged; no checkpoint written"));
  }
}

// A loader position saved by a run of another rank count: the global sample index carries over when it is a
// whole number of this world's global micro-batches (the global batch in tokens is the same, so it is, unless
// --batch-size changed); otherwise the resume is refused.
data::LoaderState loader_state_for_world(data::LoaderState s, int world, const std::string& ckpt) {
  if (s.world == world) return s;
  const uint64_t per = static_cast<uint64_t>(s.batch_size) * static_cast<uint64_t>(world);
  STRATA_REQUIRE(per > 0 && s.next_sample % per == 0, "checkpoint ", ckpt, " was written by ", s.world,
                 " ranks at sample ", s.next_sample, ", which is not a whole number of global batches of ",
                 world, " ranks x ", s.batch_size, " sequences; resume it with ", s.world, " ranks");
  s.world = world;
  return s;
}

}  // namespace

int run_training(const TrainConfig& cfg_in, const std::string& resume_ckpt, bool overwrite) {
  TrainConfig cfg = cfg_in;
  Communicator& comm = world_communicator();
  comm.set_timeout(cfg.comm_timeout);
  comm.set_activity("starting the run");
  const bool lead = comm.rank() == 0;  // rank 0 prints, writes metrics and the run's files
  const int world = comm.world();
  STRATA_CHECK(cfg.world == world, "the config was finalized for ", cfg.world, " ranks, the world has ", world);
  const int threads = set_compute_threads(cfg.threads);
  // Data and tokenizer.
  const std::vector<std::string> train_shards = split_shards(cfg.data_dir, "train");
  STRATA_REQUIRE(!train_shards.empty(), "data folder ", cfg.data_dir,
                 " holds no train_*.bin shards (run `strata prepare --out ", cfg.data_dir, "`)");
  const std::vector<std::string> val_shards = split_shards(cfg.data_dir, "val");
  if (cfg.tokenizer.empty()) cfg.tokenizer = tokenizer_from_manifest(cfg.data_dir);
  const data::Tokenizer tok = data::Tokenizer::load(cfg.tokenizer);
  STRATA_REQUIRE(tok.vocab_size() <= static_cast<uint32_t>(cfg.model.vocab_size), "tokenizer ", cfg.tokenizer,
                 " has ", tok.vocab_size(), " tokens but the model's vocab_size is ", cfg.model.vocab_size);

  data::LoaderOptions lo;
  lo.batch_size = cfg.batch_size;
  lo.seq_len = cfg.seq_len;
  lo.seed = cfg.seed;
  lo.shuffle = cfg.shuffle;
  lo.vocab_size = static_cast<uint32_t>(cfg.model.vocab_size);
  lo.rank = comm.rank();
  lo.world = world;
  data::DataLoader loader(train_shards, lo);

  // Model, optimizer, counters: fresh or from the checkpoint (whose architecture is the one trained at its
  // step: growth may have happened).
  std::optional<CheckpointInfo> resume_info;
  if (!resume_ckpt.empty()) resume_info = read_checkpoint_info(resume_ckpt);
  const models::ModelConfig& start_arch = resume_info ? resume_info->model : cfg.model;
  if (world > 1)
    check_same_config_on_every_rank(comm, cfg, resume_ckpt, overwrite, loader.state(),
                                    resume_info ? resume_info->step : -1);
  std::unique_ptr<TrainBackend> backend =
      make_backend(cfg.device, start_arch, cfg.batch_size, cfg.seq_len, cfg.adamw, cfg.seed,
                   DataParallelSetup{&comm, cfg.zero_stage, cfg.nccl_loopback},
                   CudaRunOptions{cfg.recompute_mode, cfg.attention == "cudnn"});
  TrainBackend& be = *backend;
  long step = 0;
  double flops = 0.0, elapsed_before = 0.0;
  uint64_t tokens_seen = 0;
  // Growth: the next stage to run, what has run, and the state of a stage still in its phase.
  size_t next_stage = 0;
  nlohmann::json growth_history = nlohmann::json::array();
  growth::GrowthMask mask;
  std::unique_ptr<growth::LearnedGrowth> learned;  // set during a G_learn phase (of stage next_stage - 1)
  // The seed of stage k's random draws (new weights, noise, G_learn's initial expansion matrices).
  auto growth_seed = [&](size_t k) { return cfg.seed ^ (0x9E3779B97F4A7C15ull * (k + 1)); };
  if (resume_info) {
    const CheckpointInfo& info = *resume_info;
    STRATA_REQUIRE(info.has_optimizer(), "checkpoint ", resume_ckpt,
                   " has no optimizer state (optimizer.safetensors) and cannot be resumed");
    load_checkpoint_params(resume_ckpt, be.host_params());
    const nlohmann::json& t = info.trainer;
    try {
      be.load_optimizer(info, t.at("optimizer_t").get<long>());
      step = t.at("step").get<long>();
      tokens_seen = t.at("tokens").get<uint64_t>();
      flops = t.at("flops").get<double>();
      elapsed_before = t.value("elapsed_s", 0.0);
      loader.restore(loader_state_for_world(data::LoaderState::from_json(t.at("loader")), world, resume_ckpt));
      if (t.contains("growth")) {
        growth_history = t.at("growth").at("history");
        next_stage = t.at("growth").at("done").get<size_t>();
      }
    } catch (const nlohmann::json::exception& e) {
      STRATA_FAIL("checkpoint ", resume_ckpt, ": bad trainer state (", e.what(), ")");
    }
    STRATA_REQUIRE(step <= cfg.steps, "checkpoint ", resume_ckpt, " is at step ", step, ", past the run's ",
                   cfg.steps, " steps");
    // The stages that ran must be the first stages of this run's list; the rest must still lie ahead.
    STRATA_REQUIRE(next_stage <= cfg.grow.size() && next_stage == growth_history.size(), "checkpoint ",
                   resume_ckpt, " has run ", growth_history.size(), " growth stages, but the run lists ",
                   cfg.grow.size());
    for (size_t k = 0; k < next_stage; ++k)
      STRATA_REQUIRE(growth_history[k].at("spec").get<std::string>() == cfg.grow[k].to_string() &&
                         growth_history[k].at("step").get<long>() == cfg.growth_points[k].step,
                     "--grow: stage ", k + 1, " ran as '", growth_history[k].at("spec").get<std::string>(),
                     "' after step ", growth_history[k].at("step").get<long>(),
                     " in this run; it cannot change on --resume");
    for (size_t k = next_stage; k < cfg.grow.size(); ++k)
      STRATA_REQUIRE(cfg.growth_points[k].step >= step, "--grow '", cfg.grow[k].text,
                     "': the growth point (after step ", cfg.growth_points[k].step,
                     ") has already passed: the checkpoint is at step ", step);
    STRATA_REQUIRE(
        models::model_config_to_json(cfg.model_at(step)) == models::model_config_to_json(info.model) ||
            (next_stage < cfg.grow.size() && cfg.growth_points[next_stage].step == step),
        "checkpoint ", resume_ckpt, ": its architecture does not match the run's growth schedule");
    // A stage still in its phase: rebuild its mask / learned mixing.
    if (next_stage > 0) {
      const size_t k = next_stage - 1;
      const GrowthPoint& gp = cfg.growth_points[k];
      const growth::GrowthPlan plan = growth::make_plan(gp.from, cfg.grow[k]);
      if (cfg.grow[k].op == growth::Op::kRandom)
        mask = growth::GrowthMask(plan.masks, gp.step, cfg.grow[k].mask_steps);
      if (cfg.grow[k].op == growth::Op::kLearn && step < gp.phase_end) {
        learned = growth::make_learned_growth(plan, ParamBuffer(ParamLayout(gp.from)), cfg.adamw.beta1,
                                              cfg.adamw.beta2, cfg.adamw.eps, growth_seed(k));
        learned->load(open_checkpoint_file(resume_ckpt, "growth.safetensors"),
                      info.trainer.at("growth").at("learn_t").get<long>());
      }
    }
  } else {
    STRATA_REQUIRE(overwrite || list_checkpoints(cfg.out_dir).empty(), "--out ", cfg.out_dir,
                   " already holds checkpoints; continue it with --resume ", cfg.out_dir,
                   ", or pass --overwrite to start over");
    init_params(be.host_params(), cfg.seed);
  }
  // Every growth still ahead must fit the device's memory at its peak (the CUDA backend), checked before
  // anything is written.
  for (size_t k = next_stage; k < cfg.grow.size(); ++k)
    be.check_growth_fits(growth::make_plan(cfg.growth_points[k].from, cfg.grow[k]),
                         cat("--grow '", cfg.grow[k].text, "'"));
  if (world > 1) check_same_weights_on_every_rank(comm, be.host_params(), -1);
  be.upload_from_host();
  if (resume_info) be.load_checkpoint_extras(resume_ckpt, *resume_info);
  // A growth phase the checkpoint is in: the backend's side of it (the weights are the checkpoint's already).
  if (mask.active(step)) be.set_growth_mask(mask);
  if (learned) be.begin_learned_growth(*learned);
  std::optional<MetricsLog> metrics;
  if (lead) {
    if (resume_ckpt.empty() && overwrite) {
      // Starting over: the old run's checkpoints would otherwise outrank the new ones on --resume.
      for (const auto& [old_step, dir] : list_checkpoints(cfg.out_dir)) fs::remove_all(dir);
    }
    fs::create_directories(cfg.out_dir);
    write_file_atomic((fs::path(cfg.out_dir) / "config.json").string(), cfg.to_json().dump(2) + "\n");
    metrics.emplace((fs::path(cfg.out_dir) / "metrics.jsonl").string(), resume_ckpt.empty() ? -1 : step);
  }
  comm.barrier();
  std::optional<data::DataLoader> val_loader;  // opened (and its tokens checked) once for every evaluation
  if (!val_shards.empty())
    val_loader.emplace(eval_loader(be.batch(), be.seq_len(), be.config().vocab_size, val_shards));
  const std::string device_name = be.device_name();
  // The CPU has no datasheet peak: MFU is reported there only against a given --peak-tflops.
  const std::optional<PeakFlops> peak = resolve_peak(cfg.peak_tflops, device_name);
  if (lead) {
    print_config(cfg, train_shards.size(), loader.total_tokens(), val_shards.size(), threads);
    std::printf("  %-22s %s\n", "device",
                device_name.empty() ? be.name() : cat(be.name(), ": ", device_name).c_str());
    if (const std::string mem = be.memory_summary(); !mem.empty())
      std::printf("  %-22s %s\n", "GPU memory", mem.c_str());
    std::printf("  %-22s %s\n", "MFU peak",
                peak ? cat(peak->tflops, " TFLOP/s per device, ", peak->label).c_str()
                     : (device_name.empty() ? "none on the CPU backend (give --peak-tflops to report MFU)"
                                            : "unknown for this device (give --peak-tflops to report MFU)"));
    std::printf("  %-22s %s\n", "ranks",
                world == 1 ? (cfg.nccl_loopback ? "1, data-parallel path on NCCL's loopback (ZeRO-0's overlapped "
                                                  "all-reduce; --nccl-loopback)"
                                                : "1 (no launcher)")
                           : cat(world, " (", comm.kind(), ", hosts ", comm.hosts(), "), ZeRO-", cfg.zero_stage,
                                 cfg.zero_stage == 1 ? ": AdamW state and master weights sharded"
                                                     : ": replicated state, gradient all-reduce",
                                 ", collective timeout ", cfg.comm_timeout, " s")
                                 .c_str());
    if (world > 1) {
      // What each step sends, by the ring formula (growth/comm_cost.h): over the flat buffer on the CPU (fp32;
      // its shards are contiguous ranges, alignment gaps included), over the tensors' bf16 elements on the
      // GPU (its layer-wise shards leave the gaps out); the metrics' comm_bytes is what the communicators
      // counted.
      const bool gpu = std::string(be.name()) == "cuda";
      double n = static_cast<double>(be.host_params().numel());
      if (gpu) {
        n = 0;
        for (const ParamEntry& e : be.host_params().layout().entries()) n += static_cast<double>(e.numel());
      }
      std::printf("  %-22s %s\n", "communication",
                  cat(human(growth::dp_bytes_per_rank(n, world, cfg.zero_stage, gpu ? 2 : 4, gpu ? 2 : 4).total()),
                      "B sent per rank per step (", cfg.zero_stage == 1 ? "reduce-scatter + all-gather" : "all-reduce",
                      " of ", human(n), gpu ? " bf16 elements, NCCL)" : " fp32 elements, MPI)")
                      .c_str());
    }
    if (val_shards.empty()) std::printf("  (no val_*.bin shards: validation is skipped)\n");
    if (step > 0) std::printf("resumed from %s at step %ld\n", resume_ckpt.c_str(), step);
    std::fflush(stdout);
  }

  double flops_per_token = models::train_flops_per_token(be.config(), cfg.seq_len);
  const int accum = cfg.accumulation();
  // Live progress lines on a terminal; under mpirun stdout is forwarded (a pseudo-terminal with OpenMPI) and
  // gets plain lines.
  const bool tty = world == 1 && isatty(fileno(stdout)) != 0;
  std::vector<int32_t> in(static_cast<size_t>(cfg.batch_size) * cfg.seq_len), tg(in.size());
  const auto t_start = Clock::now();
  const long first_step = step;
  double last_loss = 0.0;
  EvalResult last_eval;
  bool have_eval = false;

  auto trainer_state = [&](double elapsed) {
    return nlohmann::json{
        {"config", cfg.to_json()},
        {"step", step},
        {"tokens", tokens_seen},
        {"flops", flops},
        {"optimizer_t", be.optimizer_t()},
        {"growth",
         {{"done", next_stage}, {"history", growth_history}, {"learn_t", learned ? learned->t() : 0}}},
        {"loader", loader.state().to_json()},
        {"world", world},
        {"zero_stage", world > 1 ? cfg.zero_stage : 0},
        {"rng", {{"seed", cfg.seed}, {"sampler", "mt19937_64 seeded by seed ^ step"}}},
        {"elapsed_s", elapsed}};
  };
  auto do_eval = [&] {
    if (!val_loader) return;
    const bool masked = mask.active(step);  // evaluate the function the next step trains
    if (masked) be.mask_begin(step);
    comm.set_activity(cat("evaluating at step ", step));
    last_eval = evaluate_batches(
        be.batch(), be.seq_len(), *val_loader, cfg.eval_batches, tok,
        [&](const int32_t* inputs, const int32_t* targets, int64_t* valid) {
          return be.evaluate(inputs, targets, valid);
        },
        comm.rank(), world);
    if (world > 1) {  // each rank evaluated its share of the batches
      double sums[3] = {last_eval.nats, static_cast<double>(last_eval.tokens),
                        static_cast<double>(last_eval.bytes)};
      comm.all_reduce_small(sums, 3, ReduceOp::kSum);
      last_eval.nats = sums[0];
      last_eval.tokens = static_cast<int64_t>(sums[1]);
      last_eval.bytes = static_cast<int64_t>(sums[2]);
      last_eval.loss = last_eval.tokens ? sums[0] / sums[1] : 0.0;
      last_eval.bits_per_byte = last_eval.bytes ? sums[0] / std::log(2.0) / sums[2] : 0.0;
    }
    if (masked) be.mask_end(false);
    have_eval = true;
    if (!lead) return;
    metrics->write({{"type", "eval"},
                   {"step", step},
                   {"tokens", tokens_seen},
                   {"flops", flops},
                   {"val_loss", last_eval.loss},
                   {"val_bpb", last_eval.bits_per_byte}});
    std::printf("%seval  step %ld | val loss %.4f | ppl %.2f | bits/byte %.4f | %lld tokens\n",
                tty ? "\r\033[K" : "", step, last_eval.loss, std::exp(last_eval.loss),
                last_eval.bits_per_byte, static_cast<long long>(last_eval.tokens));
    std::fflush(stdout);
  };
  auto do_sample = [&] {
    if (cfg.sample_tokens == 0) return;
    const std::vector<int32_t> prompt = prompt_tokens(tok, cfg.sample_prompt);
    if (static_cast<int>(prompt.size()) >= cfg.model.max_seq_len) return;
    const bool masked = mask.active(step);
    be.download_to_host();  // every rank: a sharded state is gathered collectively
    if (!lead) return;
    if (masked) mask.begin(be.host_params(), step);
    Generator gen(be.host_params());
    std::mt19937_64 rng(cfg.seed ^ static_cast<uint64_t>(step));
    const std::string text =
        sample_text(gen, tok, prompt, cfg.sample_tokens, {cfg.temperature, cfg.top_k}, rng);
    if (masked) mask.end(be.host_params(), nullptr);
    std::printf("%ssample step %ld: %s\n", tty ? "\r\033[K" : "", step, text.c_str());
    std::fflush(stdout);
  };
  auto do_checkpoint = [&] {
    be.download_to_host();
    if (world > 1) check_same_weights_on_every_rank(comm, be.host_params(), step);
    std::vector<CheckpointExtra> extra = be.checkpoint_extras();
    if (learned)
      extra.push_back({"growth.safetensors", learned->tensors(), {{"content", "G_learn mixing state"}}});
    comm.set_activity(cat("writing the checkpoint of step ", step));
    const nlohmann::json state = trainer_state(elapsed_before + seconds_since(t_start));
    const std::string dir =
        world == 1 ? save_checkpoint(cfg.out_dir, step, be.host_params(), &be.host_optimizer(), state,
                                     cfg.keep_last, extra)
                   : save_checkpoint_distributed(comm, cfg.out_dir, step, be.host_params(),
                                                 be.optimizer_sharded() ? nullptr : &be.host_optimizer(), state,
                                                 cfg.keep_last, extra, be.rank_checkpoint_files());
    if (!lead) return;
    std::printf("%scheckpoint %s\n", tty ? "\r\033[K" : "", dir.c_str());
    std::fflush(stdout);
  };

  const long last = cfg.stop_at > 0 ? std::min<long>(cfg.stop_at, cfg.steps) : cfg.steps;
  const StopSignals signals;  // from here on a signal ends the run with a checkpoint
  if (step == 0 && cfg.eval_every > 0) do_eval();
  int interrupted = 0;
  auto do_growth = [&] {
    const size_t k = next_stage;
    const growth::Stage& st = cfg.grow[k];
    const auto g0 = Clock::now();
    const growth::GrowthPlan plan = growth::make_plan(be.config(), st);
    growth::GrowthRecord rec;
    rec.stage = static_cast<int>(k) + 1;
    rec.spec = st.to_string();
    rec.step = step;
    rec.tokens = tokens_seen;
    rec.flops = flops;
    rec.from = plan.from;
    rec.to = plan.to;
    rec.params_before = models::count_parameters(plan.from).total();
    rec.params_after = models::count_parameters(plan.to).total();
    if (st.op == growth::Op::kLearn) {
      be.download_to_host();  // the small model's weights, frozen for the phase
      learned = growth::make_learned_growth(plan, be.host_params(), cfg.adamw.beta1, cfg.adamw.beta2,
                                            cfg.adamw.eps, growth_seed(k));
    }
    be.grow(plan, growth_seed(k));
    if (learned) {
      be.begin_learned_growth(*learned);
      be.materialise_learned_growth(*learned);
    }
    if (st.op == growth::Op::kRandom) {
      mask = growth::GrowthMask(plan.masks, step, st.mask_steps);
      be.set_growth_mask(mask);
    }
    rec.wall_s = seconds_since(g0);
    flops_per_token = models::train_flops_per_token(be.config(), cfg.seq_len);
    ++next_stage;
    growth_history.push_back(rec.to_json());
    if (!lead) return;
    nlohmann::json row = rec.to_json();
    row["type"] = "growth";
    metrics->write(row);
    std::printf("%s%s  done in %.3f s (%s -> %s parameters)\n", tty ? "\r\033[K" : "",
                plan.describe().c_str(), rec.wall_s, human(static_cast<double>(rec.params_before)).c_str(),
                human(static_cast<double>(rec.params_after)).c_str());
    std::fflush(stdout);
  };

  std::map<std::string, OpTiming> op_totals;  // --op-times: per-op sums over the window's steps so far
  double op_window_s = 0.0;
  while (step < last) {
    while (next_stage < cfg.grow.size() && cfg.growth_points[next_stage].step == step) do_growth();
    if (step + 1 == cfg.profile_first) {
      be.profiler_start();
      if (lead)
        std::printf("%sprofiling steps %ld-%ld (cudaProfilerStart)\n", tty ? "\r\033[K" : "", cfg.profile_first,
                  cfg.profile_last);
    }
    const auto t0 = Clock::now();
    // One timing window per step, so evaluation, samples and checkpoints between steps are not counted.
    const bool op_timed =
        cfg.op_times_first > 0 && step + 1 >= cfg.op_times_first && step + 1 <= cfg.op_times_last;
    if (op_timed) be.op_timing_start();
    if (world > 1) comm.set_activity(cat("training step ", step + 1));
    const double comm_before = comm.counters().bulk();
    be.zero_grad();
    const bool masked = mask.active(step);
    if (masked) be.mask_begin(step);
    double loss = 0.0;
    for (int k = 0; k < accum; ++k) {
      loader.next(in.data(), tg.data());
      // Each rank's share is scaled so the sum over the ranks is the global batch's mean gradient.
      be.micro_batch_is_last(k + 1 == accum);
      loss += be.train_micro_batch(in.data(), tg.data(), 1.0f / static_cast<float>(accum * world));
    }
    loss /= accum;
    if (masked) be.mask_end(true);
    const double norm = be.grad_norm();
    double lr = 0.0;
    if (learned) {
      // G_learn phase: only the mixing matrices train; the grown layers are re-materialised from them.
      const size_t k = next_stage - 1;
      lr = cfg.grow[k].learn_lr;
      be.learned_growth_step(*learned, lr);
      be.materialise_learned_growth(*learned);
      if (step + 1 >= cfg.growth_points[k].phase_end) {
        be.end_learned_growth();
        learned.reset();
      }
    } else {
      lr = cfg.lr_at(step);
      be.adamw_step(lr, clip_scale(norm, cfg.grad_clip));
    }
    ++step;
    if (step == cfg.profile_last) be.profiler_stop();
    if (op_timed) {
      for (const OpTiming& t : be.op_timing_stop()) {  // waits for the device
        OpTiming& sum = op_totals[t.op];
        sum.op = t.op;
        sum.calls += t.calls;
        sum.ms += t.ms;
      }
      op_window_s += seconds_since(t0);
    }
    const double comm_bytes = comm.counters().bulk() - comm_before;
    // The ranks' mean loss, and whether any rank was asked to stop (all stop after the same step).
    int stop_signal = g_stop_signal.load();
    if (world > 1) {
      double v[2] = {loss, 0.0};
      comm.all_reduce_small(v, 1, ReduceOp::kSum);
      loss = v[0] / world;
      v[1] = stop_signal;
      comm.all_reduce_small(v + 1, 1, ReduceOp::kMax);
      stop_signal = static_cast<int>(v[1]);
    }
    tokens_seen += static_cast<uint64_t>(cfg.global_batch_tokens);
    flops += flops_per_token * static_cast<double>(cfg.global_batch_tokens);
    last_loss = loss;
    STRATA_REQUIRE(std::isfinite(loss), "training diverged: loss is ", loss, " at step ", step);
    const double dt = seconds_since(t0);
    const double tps = static_cast<double>(cfg.global_batch_tokens) / dt;
    nlohmann::json row = {{"type", "step"}, {"step", step}, {"tokens", tokens_seen}, {"flops", flops},
                          {"loss", loss},   {"lr", lr},     {"grad_norm", norm},     {"tokens_per_s", tps}};
    if (peak) row["mfu"] = mfu(flops_per_token, tps, *peak);
    if (world > 1) row["comm_bytes"] = comm_bytes;
    if (lead) metrics->write(row);
    const double run_s = seconds_since(t_start);
    const double avg_tps = static_cast<double>((step - first_step) * cfg.global_batch_tokens) / run_s;
    const double eta = static_cast<double>((last - step) * cfg.global_batch_tokens) / avg_tps;
    if (lead && (tty || step % cfg.log_every == 0 || step == last)) {
      char mfu_text[32] = "";
      if (peak)
        std::snprintf(mfu_text, sizeof mfu_text, " | MFU %.1f%%",
                      100.0 * mfu(flops_per_token, avg_tps, *peak));
      std::printf("%sstep %ld/%ld | tokens %s | loss %.4f | lr %.3e | grad norm %.3f | %s tok/s%s | ETA %s%s",
                  tty ? "\r\033[K" : "", step, cfg.steps, human(static_cast<double>(tokens_seen)).c_str(),
                  loss, lr, norm, human(avg_tps).c_str(), mfu_text, duration(eta).c_str(), tty ? "" : "\n");
      std::fflush(stdout);
    }
    if (op_timed && step == cfg.op_times_last && lead) {
      if (tty) std::printf("\n");
      metrics->write(op_times_report(op_totals, cfg.op_times_first, cfg.op_times_last, op_window_s));
    }
    const bool end = step == last;
    if ((cfg.eval_every > 0 && step % cfg.eval_every == 0) || (end && step == cfg.steps)) do_eval();
    if ((cfg.sample_every > 0 && step % cfg.sample_every == 0) || (end && step == cfg.steps)) do_sample();
    const bool stop = !end && stop_signal != 0;
    if ((cfg.ckpt_every > 0 && step % cfg.ckpt_every == 0) || end || stop) do_checkpoint();
    if (stop) {
      interrupted = stop_signal;
      if (lead)
        std::printf("%sinterrupted (signal %d) after step %ld; continue with: strata train --resume %s\n",
                  tty ? "\r\033[K" : "", interrupted, step, cfg.out_dir.c_str());
      break;
    }
  }
  const double secs = seconds_since(t_start);
  if (!lead) return interrupted ? 128 + interrupted : 0;
  if (tty) std::printf("\n");
  std::printf("done: %ld steps, %s tokens, %s FLOPs in %s (%s tok/s this session); final train loss %.4f",
              step, human(static_cast<double>(tokens_seen)).c_str(), human(flops).c_str(),
              duration(secs).c_str(),
              human(static_cast<double>((step - first_step) * cfg.global_batch_tokens) / std::max(secs, 1e-9))
                  .c_str(),
              last_loss);
  if (have_eval) std::printf(", val loss %.4f (%.4f bits/byte)", last_eval.loss, last_eval.bits_per_byte);
  std::printf("\n");
  std::fflush(stdout);
  return interrupted ? 128 + interrupted : 0;
}

}  // namespace strata
