// `strata train`: trains a model on prepared shards (see engine/trainer.h). With --resume, options not given
// take the checkpoint's values; options that define the run (model, data, batch, optimizer, schedule, length,
// seed) may be repeated but not changed, so a resumed run continues exactly.
#include <CLI/CLI.hpp>

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>

#include "engine/check.h"
#include "engine/checkpoint.h"
#include "engine/comm.h"
#include "engine/cli.h"
#include "engine/fileio.h"
#include "engine/trainer.h"
#include "models/cli.h"
#include "models/model_config_json.h"

namespace strata {
namespace {

struct TrainOptions {
  TrainConfig cfg;
  models::ModelOptions model;
  std::string schedule = "cosine";
  std::vector<std::string> grow;
  std::string resume;
  bool overwrite = false;
};

// One option's effect on a TrainConfig: copies the option's field from `from` into `to`. `fixed` options
// define the run and must not change on --resume.
struct OptionRule {
  const char* flag;
  bool fixed;
  std::function<void(TrainConfig& to, const TrainConfig& from)> copy;
};

#define STRATA_FIELD(flag, fixed, field)                                                 \
  OptionRule {                                                                           \
    flag, fixed, [](TrainConfig& to, const TrainConfig& from) { to.field = from.field; } \
  }

const std::vector<OptionRule>& option_rules() {
  static const std::vector<OptionRule> rules = {
      STRATA_FIELD("--data", true, data_dir),
      STRATA_FIELD("--tokenizer", false, tokenizer),
      STRATA_FIELD("--batch-size", true, batch_size),
      STRATA_FIELD("--seq-len", true, seq_len),
      STRATA_FIELD("--global-batch-tokens", true, global_batch_tokens),
      STRATA_FIELD("--steps", true, steps),
      STRATA_FIELD("--tokens", true, tokens),
      STRATA_FIELD("--flops", true, flops),
      // Growth stages may be extended on --resume; the trainer checks that the stages that ran are unchanged
      // and that new ones lie ahead.
      STRATA_FIELD("--grow", false, grow),
      STRATA_FIELD("--schedule", true, schedule.kind),
      STRATA_FIELD("--lr", true, schedule.max_lr),
      STRATA_FIELD("--min-lr-frac", true, schedule.min_lr_frac),
      STRATA_FIELD("--warmup", true, schedule.warmup_steps),
      STRATA_FIELD("--decay-frac", true, schedule.decay_frac),
      STRATA_FIELD("--beta1", true, adamw.beta1),
      STRATA_FIELD("--beta2", true, adamw.beta2),
      STRATA_FIELD("--adam-eps", true, adamw.eps),
      STRATA_FIELD("--weight-decay", true, adamw.weight_decay),
      STRATA_FIELD("--grad-clip", true, grad_clip),
      STRATA_FIELD("--seed", true, seed),
      STRATA_FIELD("--no-shuffle", true, shuffle),
      STRATA_FIELD("--log-every", false, log_every),
      STRATA_FIELD("--eval-every", false, eval_every),
      STRATA_FIELD("--eval-batches", false, eval_batches),
      STRATA_FIELD("--sample-every", false, sample_every),
      STRATA_FIELD("--sample-tokens", false, sample_tokens),
      STRATA_FIELD("--sample-prompt", false, sample_prompt),
      STRATA_FIELD("--temperature", false, temperature),
      STRATA_FIELD("--top-k", false, top_k),
      STRATA_FIELD("--out", false, out_dir),
      STRATA_FIELD("--ckpt-every", false, ckpt_every),
      STRATA_FIELD("--keep-last", false, keep_last),
      STRATA_FIELD("--threads", false, threads),
      STRATA_FIELD("--stop-at", false, stop_at),
      STRATA_FIELD("--peak-tflops", false, peak_tflops),
      STRATA_FIELD("--device", false, device),
      STRATA_FIELD("--profile-steps", false, profile_steps),
      STRATA_FIELD("--op-times", false, op_times),
      STRATA_FIELD("--zero", false, zero_stage),
      STRATA_FIELD("--comm-timeout", false, comm_timeout),
      STRATA_FIELD("--nccl-loopback", false, nccl_loopback),
      STRATA_FIELD("--recompute", false, recompute),
      STRATA_FIELD("--attention", false, attention),
  };
  return rules;
}
#undef STRATA_FIELD

const char* const kModelFlags[] = {"--model", "--n-layer",    "--d-model",     "--n-head",   "--n-kv-head",
                                   "--d-ff",  "--vocab-size", "--max-seq-len", "--norm-eps", "--rope-base"};

// The vocabulary size recorded by `strata prepare`, or 0 when the folder has no readable manifest.
int manifest_vocab(const std::string& data_dir) {
  const nlohmann::json m = data_manifest(data_dir);
  return (m.is_object() && m.contains("vocab_size") && m["vocab_size"].is_number_integer())
             ? m["vocab_size"].get<int>()
             : 0;
}

void run_train_command(TrainOptions& o, CLI::App& cmd) {
  o.cfg.schedule.kind = parse_schedule_kind(o.schedule);
  o.cfg.grow.clear();
  for (const std::string& g : o.grow) o.cfg.grow.push_back(growth::parse_stage(g));
  auto given = [&](const char* flag) { return cmd.count(flag) > 0; };
  bool model_given = false;
  for (const char* f : kModelFlags) model_given = model_given || given(f);

  if (o.resume.empty()) {
    // The vocabulary follows the data unless --vocab-size says otherwise.
    if (!o.model.vocab_size) {
      if (const int v = manifest_vocab(o.cfg.data_dir);
          v > 0 && v != models::preset(o.model.preset).vocab_size)
        o.model.vocab_size = v;
    }
    o.cfg.model = models::resolve_model(o.model);
    o.cfg.world = world_communicator().world();
    o.cfg.finalize();
    if (const int rc = run_training(o.cfg, "", o.overwrite)) {  // interrupted, checkpoint written
      finalize_world();
      std::exit(rc);
    }
    return;
  }
  STRATA_REQUIRE(!o.overwrite, "--overwrite and --resume exclude each other");
  const std::string ckpt = resolve_checkpoint(o.resume);
  const CheckpointInfo info = read_checkpoint_info(ckpt);
  STRATA_REQUIRE(info.trainer.is_object() && info.trainer.contains("config"), "checkpoint ", ckpt,
                 " has no run config (was it written by `strata train`?)");
  const TrainConfig saved = TrainConfig::from_json(info.trainer.at("config"));
  TrainConfig cfg = saved;
  if (model_given) {
    const models::ModelConfig m = models::resolve_model(o.model);
    STRATA_REQUIRE(models::model_config_to_json(m) == models::model_config_to_json(saved.model),
                   "--resume: the model options describe ", models::model_config_to_json(m).dump(),
                   " but the checkpoint holds ", models::model_config_to_json(saved.model).dump());
  }
  for (const OptionRule& r : option_rules()) {
    if (!given(r.flag)) continue;
    TrainConfig probe = saved;
    r.copy(probe, o.cfg);
    if (r.fixed) {
      // Compare through the finalized JSON so e.g. --tokens that equals steps x batch is accepted.
      probe.finalize();
      STRATA_REQUIRE(probe.to_json() == saved.to_json(), "--resume: ", r.flag,
                     " differs from the checkpoint's run config (it defines the run and cannot change)");
    }
    r.copy(cfg, o.cfg);
  }
  cfg.world = world_communicator().world();
  cfg.finalize();
  if (const int rc = run_training(cfg, ckpt, false)) {
    finalize_world();
    std::exit(rc);
  }
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto o = std::make_shared<TrainOptions>();
  TrainConfig& c = o->cfg;
  c.steps = 0;
  CLI::App* cmd = app.add_subcommand("train", "Train a model on prepared token shards (CPU or CUDA; many ranks under mpirun)");
  models::add_model_options(*cmd, o->model);
  cmd->add_option("--data", c.data_dir,
                  "Folder written by `strata prepare` (train_*.bin, val_*.bin, manifest)");
  cmd->add_option("--tokenizer", c.tokenizer,
                  "Tokenizer for samples and bits per byte [default: the manifest's]");
  cmd->add_option("--batch-size", c.batch_size, "Sequences per micro-batch (B)");
  cmd->add_option("--seq-len", c.seq_len, "Tokens per sequence (T)");
  cmd->add_option(
      "--global-batch-tokens", c.global_batch_tokens,
      "Tokens per optimizer step, a multiple of B x T x ranks reached by gradient accumulation (0 = B x T x "
      "ranks)");
  cmd->add_option("--steps", c.steps, "Optimizer steps (or give --tokens)");
  cmd->add_option("--tokens", c.tokens, "Training tokens, rounded up to whole steps (instead of --steps)");
  cmd->add_option("--flops", c.flops,
                  "Training FLOPs budget over all growth stages (instead of --steps / --tokens)");
  cmd->add_option("--grow", o->grow,
                  "Growth stage, repeatable: \"at=<n> tokens|steps|flops,op=stack|interpolate|zero|random|learn|"
                  "direct,g=4 | layers=0-1,2-3*7 | d_model=.. d_ff=..[,noise=a][,optimizer=reset|map]"
                  "[,schedule=restart|continue][,warmup=n]\" (see growth/spec.h)")
      ->take_all();
  cmd->add_option("--schedule", o->schedule, "LR schedule: cosine | constant | wsd (warmup-stable-decay)")
      ->check(CLI::IsMember({"cosine", "constant", "wsd"}));
  cmd->add_option("--lr", c.schedule.max_lr, "Peak learning rate");
  cmd->add_option("--min-lr-frac", c.schedule.min_lr_frac,
                  "Final LR as a fraction of the peak (cosine, wsd)");
  cmd->add_option("--warmup", c.schedule.warmup_steps, "Linear warmup steps");
  cmd->add_option("--decay-frac", c.schedule.decay_frac, "wsd: fraction of the steps spent decaying");
  cmd->add_option("--beta1", c.adamw.beta1, "AdamW beta1");
  cmd->add_option("--beta2", c.adamw.beta2, "AdamW beta2");
  cmd->add_option("--adam-eps", c.adamw.eps, "AdamW epsilon");
  cmd->add_option("--weight-decay", c.adamw.weight_decay,
                  "Decoupled weight decay (matrices and embeddings only)");
  cmd->add_option("--grad-clip", c.grad_clip, "Clip the global gradient norm to this (0 = off)");
  cmd->add_option("--seed", c.seed, "Seed of the initialisation and the data order");
  cmd->add_flag("--no-shuffle{false}", c.shuffle, "Read the training samples in order");
  cmd->add_option("--log-every", c.log_every, "Progress line every N steps when stdout is not a terminal");
  cmd->add_option("--eval-every", c.eval_every, "Validation every N steps (0 = at the end only)");
  cmd->add_option("--eval-batches", c.eval_batches,
                  "Validation batches per evaluation (0 = the whole split)");
  cmd->add_option("--sample-every", c.sample_every,
                  "Print a text sample every N steps (0 = at the end only)");
  cmd->add_option("--sample-tokens", c.sample_tokens, "Tokens per sample (0 = no samples)");
  cmd->add_option("--sample-prompt", c.sample_prompt, "Prompt of the samples (after <|endoftext|>)");
  cmd->add_option("--temperature", c.temperature, "Sampling temperature (0 = greedy)");
  cmd->add_option("--top-k", c.top_k, "Sample from the k most likely tokens (0 = all)");
  cmd->add_option("--out", c.out_dir, "Run folder: config.json, metrics.jsonl, ckpt-<step>/");
  cmd->add_option("--ckpt-every", c.ckpt_every, "Checkpoint every N steps (0 = at the end only)");
  cmd->add_option("--keep-last", c.keep_last, "Checkpoints to keep (0 = all)");
  cmd->add_option("--threads", c.threads, "CPU threads (0 = all cores)");
  cmd->add_option("--stop-at", c.stop_at, "Stop after this step as if interrupted (a checkpoint is written)");
  cmd->add_option("--device", c.device,
                  "Training backend: cpu (fp32), or cuda (bf16 with fp32 master weights; a GPU build); a run "
                  "resumes on either")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--profile-steps", c.profile_steps,
                  "A:B: bracket steps A..B with cudaProfilerStart/Stop, for nsys --capture-range=cudaProfilerApi");
  cmd->add_option(
      "--op-times", c.op_times,
      "A:B: GPU time per op over steps A..B (CUDA events; --device cuda), printed after step B and "
      "written to metrics.jsonl");
  cmd->add_option("--peak-tflops", c.peak_tflops,
                  "Peak TFLOP/s per device for MFU (default: the GPU's datasheet bf16 peak; none on the CPU)");
  cmd->add_option("--zero", c.zero_stage,
                  "Under mpirun: 1 = ZeRO-1 (gradients reduce-scattered, AdamW state sharded, parameters "
                  "all-gathered), 0 = replicated state and a gradient all-reduce")
      ->check(CLI::IsMember({0, 1}));
  cmd->add_option("--comm-timeout", c.comm_timeout,
                  "Under mpirun: seconds a collective may wait before this rank exits with an error (a rank "
                  "died or hangs)");
  cmd->add_flag("--nccl-loopback", c.nccl_loopback,
                "--device cuda, one process: run the data-parallel path (NCCL, ZeRO-0's overlapped all-reduce) on "
                "a world of one, to measure its cost");
  cmd->add_option("--recompute", c.recompute,
                  "--device cuda: activations the backward recomputes instead of keeping: none | norm (the "
                  "norm outputs) | mlp (the MLP's hidden activations) | all; the same bits, less memory");
  cmd->add_option("--attention", c.attention,
                  "--device cuda: attention by Strata's flash kernels (flash) or cuDNN's fused SDPA engines "
                  "(cudnn; libcudnn.so.9 loaded at run time; deterministic unless the run is not)");
  cmd->add_option("--resume", o->resume,
                  "Continue from a checkpoint folder, or a run folder's newest checkpoint");
  cmd->add_flag("--overwrite", o->overwrite, "Start over in an --out folder that already holds checkpoints");
  // A scalar option given twice takes the last value, so a base command line can be extended.
  for (CLI::Option* opt : cmd->get_options())
    if (opt->get_items_expected_max() == 1) opt->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cmd->callback([o, cmd] { run_train_command(*o, *cmd); });
}

}  // namespace strata
