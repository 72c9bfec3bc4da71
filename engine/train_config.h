// engine/train_config.h: everything that defines a training run, its JSON form (saved in every checkpoint and
// in <out>/config.json), and its validation.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "engine/optim.h"
#include "engine/recompute.h"
#include "engine/schedule.h"
#include "growth/spec.h"
#include "models/model_config.h"

namespace strata {

// Where a growth stage happens in a run, resolved from its trigger by finalize().
struct GrowthPoint {
  long step = 0;       // growth happens after this many optimizer steps (before step + 1)
  long phase_end = 0;  // step at which its learn phase (op=learn) ends; = step otherwise
  models::ModelConfig from, to;
  Schedule schedule;  // the restarted schedule (schedule=restart), counted from phase_end
};

struct TrainConfig {
  models::ModelConfig model;
  // Data: the folder `strata prepare` wrote (train_*.bin, val_*.bin, manifest.json).
  std::string data_dir = "out/default";
  std::string tokenizer;  // tokenizer file for samples and bits per byte; empty = the manifest's
  // Batch: B sequences of T tokens per micro-batch; the global batch (tokens per optimizer step) is a
  // multiple of B*T, reached by gradient accumulation.
  int batch_size = 8;
  int seq_len = 128;
  int64_t global_batch_tokens = 0;  // 0 = B*T (no accumulation)
  int64_t steps = 0;                // optimizer steps; 0 = derived from `tokens`
  int64_t tokens = 0;               // training tokens, used when steps == 0
  double flops = 0.0;               // training FLOPs budget (both phases of a growth run), when steps and
                                    // tokens are 0: the run ends at the first step reaching it
  std::vector<growth::Stage> grow;  // growth stages, in order
  Schedule schedule;
  AdamWConfig adamw;
  double grad_clip = 1.0;  // global-norm clip; 0 = off
  uint64_t seed = 1337;    // initialisation and data order
  bool shuffle = true;
  // Reporting.
  int64_t log_every = 10;  // progress lines when stdout is not a terminal, and metrics.jsonl rows: every step
  int64_t eval_every = 100;  // validation every N steps (0 = only at the end)
  int eval_batches = 20;     // validation micro-batches per evaluation (0 = the whole validation set)
  int64_t sample_every = 0;  // text samples every N steps (0 = only at the end)
  int sample_tokens = 48;
  std::string sample_prompt;  // empty = start from <|endoftext|>
  float temperature = 0.8f;
  int top_k = 40;
  // Output.
  std::string out_dir = "out/run";
  int64_t ckpt_every = 0;  // checkpoint every N steps (0 = only at the end)
  int keep_last = 2;       // checkpoints kept (0 = all)
  int threads = 0;         // OpenMP threads (0 = all cores)
  std::string device = "cpu";
  // Nsight: "A:B" brackets steps A..B (1-based) with cudaProfilerStart/Stop (--device cuda); resolved by finalize()
  // into profile_first / profile_last (0 = none).
  std::string profile_steps;
  long profile_first = 0, profile_last = 0;
  // --op-times A:B (--device cuda): GPU time per op over steps A..B, measured with CUDA events
  // (kernels/cuda/op_timer.h), printed after step B and written to metrics.jsonl; resolved by finalize() into
  // op_times_first / op_times_last (0 = none).
  std::string op_times;
  long op_times_first = 0, op_times_last = 0;
  double peak_tflops = 0;  // the peak MFU is reported against (0 = the device's datasheet entry, if any)
  int64_t stop_at = 0;     // stop after this step as if interrupted (tests resume); 0 = run to the end
  // Data parallelism (engine/data_parallel.h): ranks of the world (set from the communicator before
  // finalize(), not an option), the ZeRO stage, and the watchdog's timeout for one collective. None of them
  // defines the run: a run may resume on another rank count or stage.
  int world = 1;
  int zero_stage = 1;
  double comm_timeout = 600.0;
  // --nccl-loopback (--device cuda, one process): run the data-parallel path anyway, on a world of one (NCCL's
  // loopback; ZeRO-0's layer-by-layer all-reduce on the communication stream), so its cost beside a plain run
  // is measurable on one GPU. The same numbers as without it.
  bool nccl_loopback = false;
  // Activation recomputation on the CUDA backend (engine/recompute.h): none | norm | mlp | all. Bitwise the
  // same run, less memory: not part of the run's definition either (a run may resume with another mode).
  std::string recompute = "none";
  Recompute recompute_mode = Recompute::kNone;  // resolved from `recompute` by finalize()
  // The CUDA backend's attention: flash (Strata's kernels) | cudnn (cuDNN's fused SDPA engines, loaded at run
  // time). Not part of the run's definition either: a run may resume with the other.
  std::string attention = "flash";

  // Resolved by finalize(): one point per growth stage.
  std::vector<GrowthPoint> growth_points;

  // The learning rate of 0-based step `step`: the base schedule, or the restarted schedule of the last
  // growth (schedule=restart) whose phase ended at or before it.
  double lr_at(long step) const;
  // The architecture trained at 0-based step `step` (after every growth whose point is <= step).
  const models::ModelConfig& model_at(long step) const;

  // Micro-batches per rank per optimizer step.
  int accumulation() const {
    return static_cast<int>(global_batch_tokens / (int64_t{batch_size} * seq_len * world));
  }
  // Resolves defaults (global batch, steps from tokens or FLOPs, schedule total, growth points) and checks
  // every field, growth stages included (a stage that does not fit the model, a point at or past the end of
  // the run or not after the previous stage's phase); errors are one line naming the option.
  void finalize();
  nlohmann::json to_json() const;
  static TrainConfig from_json(const nlohmann::json& j);

 private:
  void resolve_growth();
};

}  // namespace strata
