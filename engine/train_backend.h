// engine/train_backend.h: the training state `strata train` drives (weights, gradients, optimizer,
// activations) on one backend, behind one interface: the CPU backend (engine/model.h + AdamW, fp32) and the
// CUDA backend (engine/cuda_model.h, bf16 with fp32 master weights). The trainer never branches on the
// backend: the growth phases that change a step (G_random's mask, G_learn's mixing) are hooks here too.
//
// Host state: checkpoints, samples and growth work on host ParamBuffers in the layout of engine/params.h. The
// CPU backend's state is that host state. The CUDA backend keeps its state on the device and copies it to
// host mirrors on download_to_host() (weights from the fp32 master copy, moments, t) and back on
// upload_from_host(), so a checkpoint has the same content, format and precision on either backend, and each
// resumes the other's.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/checkpoint.h"
#include "engine/comm.h"
#include "engine/optim.h"
#include "engine/params.h"
#include "engine/recompute.h"
#include "growth/plan.h"
#include "models/model_config.h"

namespace strata {
namespace growth {
class GrowthMask;
class LearnedGrowth;
}  // namespace growth

// GPU time of one op over a timing window (--op-times): outermost calls and their summed milliseconds.
struct OpTiming {
  std::string op;
  int64_t calls = 0;
  double ms = 0.0;
};

class TrainBackend {
 public:
  virtual ~TrainBackend() = default;
  virtual const char* name() const = 0;  // "cpu" or "cuda"
  // The accelerator's name (cudaGetDeviceProperties), for the MFU peak table; empty on the CPU.
  virtual std::string device_name() const = 0;
  virtual const models::ModelConfig& config() const = 0;
  // What the backend's device memory holds, for the run's header (empty on the CPU).
  virtual std::string memory_summary() const { return {}; }
  // Refuses, before any step, a growth whose peak device memory would not fit: a strata::Error naming `what`
  // (the stage), the need and the remedies. The trainer calls it at startup for every growth stage still
  // ahead, so a run does not fail at its growth point hours in. The CPU backend has nothing to check.
  virtual void check_growth_fits(const growth::GrowthPlan& /*plan*/, const std::string& /*what*/) const {}
  virtual int batch() const = 0;
  virtual int seq_len() const = 0;

  virtual void zero_grad() = 0;
  // Whether the next train_micro_batch is the step's last (the trainer says so before each): a data-parallel
  // backend may then reduce each layer's gradients as the backward pass finishes it.
  virtual void micro_batch_is_last(bool /*last*/) {}
  // Forward and backward of one micro-batch (host arrays (B,T)): accumulates the gradient of grad_scale *
  // (its mean loss) and returns the mean loss.
  virtual float train_micro_batch(const int32_t* inputs, const int32_t* targets, float grad_scale) = 0;
  // The mean loss of one batch without a gradient; *n_valid = its non-ignored targets.
  virtual float evaluate(const int32_t* inputs, const int32_t* targets, int64_t* n_valid) = 0;
  virtual double grad_norm() = 0;
  // One AdamW step (t advances first) at rate lr with the gradients times grad_scale (clipping).
  virtual void adamw_step(double lr, float grad_scale) = 0;
  virtual long optimizer_t() const = 0;

  // Host state. host_params() / host_optimizer() are valid after download_to_host() (always, on the CPU);
  // after changing them (a checkpoint load, initialisation) call upload_from_host().
  virtual void download_to_host() = 0;
  virtual void upload_from_host() = 0;
  virtual ParamBuffer& host_params() = 0;
  virtual AdamW& host_optimizer() = 0;
  // The gradients as a host buffer where the backend keeps them there (the CPU), else null.
  virtual ParamBuffer* host_grads() = 0;
  // Files the backend adds to a checkpoint (the CUDA backend: its bf16 weights, so a resumed run continues
  // bit-identically), and reading them back after upload_from_host() on resume (absent files are fine: a
  // checkpoint of the other backend).
  virtual std::vector<CheckpointExtra> checkpoint_extras() { return {}; }
  virtual void load_checkpoint_extras(const std::string& /*ckpt_dir*/, const CheckpointInfo& /*info*/) {}

  // ZeRO-1: the optimizer state is sharded, host_optimizer() is not available, and checkpoints take this
  // rank's shard from rank_checkpoint_files().
  virtual bool optimizer_sharded() const { return false; }
  virtual std::vector<CheckpointExtra> rank_checkpoint_files() { return {}; }
  // The moments and step counter t from a checkpoint of any rank count and ZeRO stage (re-sharding). The
  // default reads them into host_optimizer() (call upload_from_host() after, as for the parameters).
  virtual void load_optimizer(const CheckpointInfo& info, long t);

  // Grows the model and optimizer by `plan` (growth/apply.h's semantics, seeded by `seed`) and re-plans the
  // activations for the new architecture.
  virtual void grow(const growth::GrowthPlan& plan, uint64_t seed) = 0;

  // G_random's masked phase (growth/apply.h's GrowthMask): set_growth_mask installs the mask after grow() or
  // on a resume (grow() drops it); mask_begin(steps_done) before the forward passes of a step or an evaluation
  // multiplies the masked weights the forward reads by c; mask_end(grads) after restores the raw weights and,
  // with grads, scales the masked gradients by c.
  virtual void set_growth_mask(const growth::GrowthMask& mask) = 0;
  virtual void mask_begin(long steps_done) = 0;
  virtual void mask_end(bool grads) = 0;
  // G_learn's phase (growth/apply.h's LearnedGrowth, depth or width, owned by the trainer and built from the
  // small model's weights): begin_learned_growth when the phase starts (after grow()) or resumes,
  // end_learned_growth when it ends (or grow() ends it); materialise_learned_growth writes the learned
  // weights (W' = D W in depth, B W B^T in width); learned_growth_step is one Adam step of the learned
  // matrices from this step's gradients. The defaults work on host_params() and host_grads() (the CPU
  // backend).
  virtual void begin_learned_growth(const growth::LearnedGrowth& /*lg*/) {}
  virtual void end_learned_growth() {}
  virtual void materialise_learned_growth(const growth::LearnedGrowth& lg);
  virtual void learned_growth_step(growth::LearnedGrowth& lg, double lr);

  // cudaProfilerStart / cudaProfilerStop around profiled steps (no-ops where there is no profiler API).
  virtual void profiler_start() {}
  virtual void profiler_stop() {}
  // --op-times: start timing every op with CUDA events; stop (waits for the device) and return the per-op
  // totals. The CPU backend has no such timer (the option needs --device cuda).
  virtual void op_timing_start() {}
  virtual std::vector<OpTiming> op_timing_stop() { return {}; }
};

// Data parallelism (engine/data_parallel.h, engine/comm_nccl.h), fixed when a backend is made: with a
// communicator of more than one rank, grad_norm() first reduces the gradients over the ranks (all-reduce for
// ZeRO-0, reduce-scatter for ZeRO-1) and adamw_step() updates the replicated state (ZeRO-0) or this rank's
// shard followed by an all-gather of the parameters (ZeRO-1). The micro-batches' grad_scale must include
// 1 / world.
struct DataParallelSetup {
  Communicator* comm = nullptr;  // null or a world of one: no data parallelism
  int zero_stage = 1;
  // A world of one anyway (--nccl-loopback): the CUDA backend's NCCL path with ZeRO-0 on one GPU.
  bool loopback = false;
  bool active() const { return comm != nullptr && (comm->world() > 1 || loopback); }
};

// The CPU backend: engine/model.h's runner and AdamW, for B sequences of T tokens.
std::unique_ptr<TrainBackend> make_cpu_backend(const models::ModelConfig& cfg, int B, int T,
                                               const AdamWConfig& adamw, const DataParallelSetup& dp = {});

// How the CUDA backend's runner computes what the model defines: activation recomputation
// (engine/recompute.h) and attention through cuDNN's fused SDPA engines (kernels/cuda/cudnn_sdpa.h) instead
// of Strata's flash attention kernels. Neither changes the run's definition.
struct CudaRunOptions {
  Recompute recompute = Recompute::kNone;
  bool cudnn_attention = false;
};

// The CUDA backend, where this build has one: the strata executable registers it at startup
// (engine/cli/main.cpp) and tests register the emulated one. `seed` chooses the stochastic-rounding streams
// of the bf16 weights.
using CudaBackendFactory = std::unique_ptr<TrainBackend> (*)(const models::ModelConfig& cfg, int B, int T,
                                                             const AdamWConfig& adamw, uint64_t seed,
                                                             const DataParallelSetup& dp,
                                                             const CudaRunOptions& run);
void register_cuda_backend(CudaBackendFactory factory);
// "cpu" or "cuda"; any other name, or "cuda" in a build without it, is a strata::Error, and so is
// recomputation or cuDNN attention on the CPU backend (which keeps every activation).
std::unique_ptr<TrainBackend> make_backend(const std::string& device, const models::ModelConfig& cfg, int B,
                                           int T, const AdamWConfig& adamw, uint64_t seed,
                                           const DataParallelSetup& dp = {}, const CudaRunOptions& run = {});

}  // namespace strata
