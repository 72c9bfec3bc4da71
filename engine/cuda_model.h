// engine/cuda_model.h: the model runner on the CUDA backend: the block of engine/model.h (same layer list,
// same parameter layout, same math) in bf16 with fp32 accumulation, on the kernels of kernels/cuda/.
//
// Storage on the device, all in the ParamLayout of the model (engine/params.h), so offsets are the CPU's:
//   weights bf16 (what the kernels read), gradients bf16 (`+=` over micro-batches), fp32 master weights, and
//   the fp32 AdamW moments m, v (allocated at the first optimizer step or moment upload).
// Activations: one arena, planned once for (B, T) from the config and re-planned only when the architecture
// changes; no allocation during a step. Per layer it keeps what the backward reads: the residual stream
// before and after attention, both norm outputs and statistics, qkv after RoPE, the attention output and its
// log-sum-exp (flash attention: O(T) memory), the MLP's first product and activation.
// Recomputation (CudaModelOptions::recompute, engine/recompute.h) drops some of these per-layer tensors and
// rebuilds them in the backward pass, layer by layer, in one shared one-layer scratch region of the arena:
//   norm: the two norm outputs (N, C) each are not kept; the backward re-runs the norm forward on the kept
//         residual stream (resid[l] for ln1, resid_mid[l] for ln2). The statistics are still kept (the norm
//         backward reads those); the re-run's own statistics go to scratch.
//   mlp:  the MLP's first product and activation (N, H1) + (N, F) are not kept; the backward re-runs the
//         first product and its activation on the MLP's input (the kept or recomputed ln2).
// The re-runs are the forward's ops (same kernels, same shapes, same operand alignments: one layer's slice
// of a per-layer array and the scratch region agree in both) on the forward's bf16 inputs, so the recomputed
// tensors, and with them the losses and gradients, are bitwise those of kNone. Memory per layer saved: norm
// 2 N C bf16, mlp N (H1 + F) bf16, less one layer's scratch; the cost is one more norm forward per norm
// (norm) or one more first product (mlp) per layer in the backward.
//
// The ops differ from the CPU runner's only where the CUDA backend fuses: a residual add and the next norm
// are one op (residual_rmsnorm_forward / residual_layernorm_forward), GPT-2's first MLP product carries its
// GELU (cuBLASLt's GELU_AUX_BIAS epilogue), attention is flash attention, and the classifier writes dlogits
// during the forward pass, so the gradient scale of the micro-batch is given to forward(), not backward().
//
// Built twice: against the CUDA runtime (strata_cuda_model) and against the CPU emulation
// (strata_cuda_model_emu, kernels/cuda/emu/), where the same code runs on host memory; that build is how the
// runner is tested against the CPU runner on a machine without a GPU.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/comm.h"
#include "engine/optim.h"
#include "engine/params.h"
#include "engine/recompute.h"
#include "engine/shard_map.h"
#include "growth/plan.h"
#include "models/model_config.h"

namespace strata {

// bytes as "1.23 GiB", for the memory messages.
std::string gib_text(size_t bytes);

// The device memory a configuration needs, computed from the config before anything is allocated (the same
// layout the constructor then allocates).
struct CudaMemoryPlan {
  size_t weights = 0, grads = 0, master = 0, moments = 0;  // bf16, bf16, fp32, fp32 m + v
  size_t activations = 0;                                  // the arena: activations, scratch, op workspace
  size_t library = 0;                                      // cuBLASLt's workspace
  size_t total() const { return weights + grads + master + moments + activations + library; }
};

struct CudaModelOptions {
  // Bitwise-reproducible steps (ops::Cuda::deterministic): flash attention's backward without atomics.
  bool deterministic = true;
  // ZeRO-1 (engine/cuda_backend.cpp): this runner holds rank shard_rank's pieces of shard_world's layer-wise
  // split (engine/shard_map.h). The bf16 weights and gradients are whole; the fp32 master weights, the AdamW
  // moments and a bf16 buffer for the reduced gradients hold the pieces only, one after another (compact).
  int shard_world = 1;
  int shard_rank = 0;
  // Activation recomputation (see the header comment): what the backward rebuilds instead of keeping.
  Recompute recompute = Recompute::kNone;
  // Attention through cuDNN (ops::Cuda::cudnn_attention); its plans' workspace joins the arena.
  bool cudnn_attention = false;
};

class CudaModel {
 public:
  // Allocates weights, gradients and master weights on the current device and plans the activations for B
  // sequences of T tokens. Out-of-memory is a strata::Error naming the buffer and the bytes asked for.
  // Before allocating, the plan is compared with the device's free memory: a configuration that does not fit
  // is a strata::Error naming what it needs and suggesting a smaller micro-batch (and, without recomputation,
  // --recompute).
  CudaModel(const models::ModelConfig& cfg, int B, int T, const CudaModelOptions& opt = {});
  static CudaMemoryPlan plan_memory(const models::ModelConfig& cfg, int B, int T, const CudaModelOptions& opt = {});
  // A strata::Error (prefixed with `what`, when given) if the CUDA ops cannot run cfg: head dims other than
  // 64 and 128, GPT-2's d_ff not a multiple of 8. The constructor checks its config; the backend checks every
  // growth stage's at startup.
  static void require_supported(const models::ModelConfig& cfg, const std::string& what);
  // The device memory a plan must leave free beside it, for the CUDA context's own allocations and
  // fragmentation: 2% of the card, at least 256 MiB (the constructor's check and the growth check).
  static size_t memory_margin(size_t total_bytes);
  ~CudaModel();
  CudaModel(const CudaModel&) = delete;
  CudaModel& operator=(const CudaModel&) = delete;

  const models::ModelConfig& config() const { return cfg_; }
  const ParamLayout& layout() const { return layout_; }
  int batch() const { return B_; }
  int seq_len() const { return T_; }

  // Host <-> device. set_params writes the fp32 master weights and the bf16 weights rounded to nearest from
  // them; get_params reads the master weights (so a checkpoint keeps fp32 precision); get_grads widens the
  // bf16 gradients. The buffers must have this model's layout. Sharded (ZeRO-1): the master weights and moments
  // exist for shards().pieces() only, so set_params / set_moments read only those elements of the host buffers
  // (set_params still writes every bf16 weight) and get_params / get_moments write only those.
  void set_params(const ParamBuffer& params);
  void get_params(ParamBuffer& params) const;
  void get_grads(ParamBuffer& grads) const;
  // The gradients the optimizer reads, widened to fp32: unsharded all of them (as get_grads); sharded this
  // rank's reduce-scattered pieces at their flat positions and zeros elsewhere (the ranks' buffers add up to
  // the reduced whole). Call after the reduction.
  void get_reduced_grads(ParamBuffer& grads) const;
  // AdamW moments (fp32, the layout's). set_moments allocates them if the optimizer has not yet.
  void set_moments(const ParamBuffer& m, const ParamBuffer& v);
  void get_moments(ParamBuffer& m, ParamBuffer& v) const;
  bool has_moments() const;
  // The bf16 weights as the kernels read them (raw bf16 bits, the layout's numel): the optimizer writes them by
  // stochastic rounding of the master weights, so a bit-identical resume restores them rather than re-rounding.
  std::vector<uint16_t> get_weights_bf16() const;
  void set_weights_bf16(const uint16_t* bits);

  // Forward over host arrays inputs (B,T) and targets (B,T) (kIgnoreIndex entries skipped; ids out of range
  // are a strata::Error). Returns the mean loss over non-ignored targets and leaves the gradient of
  // grad_scale * (mean loss) w.r.t. the logits for backward(). Pass 1/k for each of k accumulated
  // micro-batches.
  float forward(const int32_t* inputs, const int32_t* targets, float grad_scale = 1.0f);
  // The mean loss only (no gradient kept; backward() may not follow).
  float evaluate(const int32_t* inputs, const int32_t* targets);
  // Backward of the last forward: accumulates (`+=`) into the gradients.
  void backward();
  // Called during backward() once layer l's gradients are all enqueued on stream() (l = L-1 down to 0; not at
  // all when the batch has no valid target): the data-parallel backend starts reducing layer l on its own
  // stream while the backward pass goes on. Null: none.
  void set_layer_backward_hook(std::function<void(int layer)> hook) { layer_hook_ = std::move(hook); }
  // Called during forward() and evaluate() before the first op that reads layer l's weights is enqueued on
  // stream() (l = 0 up to L-1, from the layer's attention norm on), with l = -1 before the embedding and l = L
  // before the final norm and the LM head: ZeRO-1 makes the stream wait there for the all-gather of those
  // weights, so the gathers of the later layers overlap the forward pass of the earlier ones. Null: none.
  void set_layer_forward_hook(std::function<void(int layer)> hook) { forward_hook_ = std::move(hook); }
  void zero_grad();
  // Global L2 norm of the gradients (fp32 partial sums in a fixed order: bitwise reproducible); sharded, the
  // norm of the reduce-scattered gradient shard.
  double grad_norm();
  // Its square (the shard's sum of squares, which the data-parallel backend sums over the ranks).
  double grad_sum_squares();
  // One AdamW step t (1-based) on the master weights, moments and bf16 weights (stochastic rounding, its
  // stream chosen by seed and t), with the gradients times grad_scale (clipping), as AdamW::step does on the
  // CPU: weight decay only on the tensors whose spec says so.
  void adamw_step(const AdamWConfig& cfg, long t, double lr, float grad_scale, uint64_t seed);

  // ZeRO-1 plumbing for the data-parallel backend: the pieces this runner's optimizer state covers (a world of
  // one: every tensor, compact == flat), raw device pointers (bf16 weights and gradients, the layout's numel)
  // and the stream every op of this runner runs on (a cudaStream_t).
  const LayerShards& shards() const { return shards_; }
  void* weights_device();
  void* grads_device();
  void* grad_shard_device();  // sharded only: the reduced gradients of the pieces (bf16, compact)
  void* master_device();      // fp32, compact (the layout unsharded); for growth on the device
  void* stream() const;

  // Growth on the device: grown() returns the runner of plan.to holding the grown fp32 master weights, bf16
  // weights and, with map_moments, the moments mapped with the weights (else none: the optimizer restarts),
  // the state growth/apply.h's grow_state computes on the host, bit for bit. It frees this runner's
  // activations and gradients first; this runner is not usable afterwards.
  //  - layer_copies_only(plan) (G_stack, G_zero, interpolation in depth: layer copies or zero layers, no
  //    noise, no width change): device-to-device copies, and each copied layer keeps its source's bf16
  //    weights, so the grown model computes what the stacked original would. Sharded (ZeRO-1), each rank
  //    copies its own pieces: the grown layout keeps every per-layer size and the world, so a copied layer's
  //    segment splits as its source's does and no data crosses ranks.
  //  - any other plan (widening, G_random's init-filled layers, noise), unsharded only (can_grow): the plan's
  //    rules run on the device (kernels/cuda/growth_ops.h: a gather per target layer through the row and
  //    column maps, the noise), with the random draws made on the host from apply_params' streams
  //    (growth::layer_draws / noise_draws) and uploaded a layer at a time; the bf16 weights are the grown
  //    master weights rounded to nearest, except layers copied unchanged, which keep their source's bits.
  static bool layer_copies_only(const growth::GrowthPlan& plan);
  // The most device memory grown() allocates besides the two runners' buffers (the rules' one-layer scratch
  // and a tensor's axis maps; 0 for layer copies).
  static size_t growth_scratch_bytes(const growth::GrowthPlan& plan);
  bool can_grow(const growth::GrowthPlan& plan) const { return !sharded() || layer_copies_only(plan); }
  std::unique_ptr<CudaModel> grown(const growth::GrowthPlan& plan, bool map_moments, uint64_t seed);

  // The per-position losses (B,T) of the last forward with targets, on the host.
  std::vector<float> losses() const;
  int64_t num_valid_targets() const { return n_valid_; }
  // Device bytes held: parameters and optimizer state, activations (the arena and the op workspace).
  size_t state_bytes() const;
  size_t activation_bytes() const;

 private:
  struct Impl;
  models::ModelConfig cfg_;
  ParamLayout layout_;
  int B_ = 0, T_ = 0;
  CudaModelOptions opt_;
  std::unique_ptr<Impl> impl_;
  int64_t n_valid_ = 0;
  LayerShards shards_;
  std::function<void(int)> layer_hook_, forward_hook_;
  bool sharded() const { return opt_.shard_world > 1; }
  void allocate_moments();  // zero moments as long as the master weights
  // grown()'s two halves: a plan of layer copies (sharded or not), and any plan's rules (unsharded).
  void copy_layers_into(const growth::GrowthPlan& plan, bool moments, CudaModel& next);
  void run_rules_into(const growth::GrowthPlan& plan, bool moments, uint64_t seed, CudaModel& next);
  bool have_grad_ = false;
  float run_forward(const int32_t* inputs, const int32_t* targets, float dloss_scale, bool need_grad);
};

}  // namespace strata
