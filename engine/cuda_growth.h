// engine/cuda_growth.h: the growth phases that change how a step trains, on the CUDA runner's device buffers
// (engine/cuda_model.h), with growth/apply.h's semantics: G_random's mask (GrowthMask) and G_learn's depth
// mixing (LearnedDepth). The CUDA backend (engine/cuda_backend.cpp) holds one of each while its phase runs;
// the kernels are kernels/cuda/growth_ops.h. Both work on a whole runner and on a ZeRO-1 shard
// (engine/shard_map.h): the mask touches only the bf16 weights and gradients, which every rank holds whole;
// G_learn writes every bf16 weight on every rank and the fp32 master weights of this rank's pieces, and sums
// the mixing gradient from this rank's pieces of the reduced gradient (its share: the backend adds the ranks'
// shares in rank order, as the CPU backend does).
//
// Per step nothing of the model's size crosses to the host: the mask's region table is uploaded once,
// G_learn's frozen small-model weights once (fp32, L x per-layer elements of every kind); each G_learn step
// uploads D (one L' x L matrix per kernel entry) and downloads an L' x L mixing gradient per entry: unsharded
// one entry per kind; under ZeRO-1 one per run of a rank's pieces (one or two per kind) and, for materialise,
// one more per kind for the whole bf16 weights.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/cuda_model.h"
#include "engine/device_buffer.h"
#include "growth/apply.h"

namespace strata {
namespace cuda {
struct DepthMixKind;  // kernels/cuda/growth_ops.h
}  // namespace cuda

// The most device memory growing by `plan` takes at once, for runners of options `opt` at micro-batch B x T:
// the larger of CudaModel::grown's peak (the old runner's weights, master weights and moments, the grown
// runner with its mapped moments, and the rules' scratch; under ZeRO-1 a plan that is not layer copies goes
// through the host, and the old runner is freed first) and the grown runner with all of its state plus the
// growth phase's buffers (G_random's mask, G_learn's frozen small model and mixing state). What the CUDA
// backend compares with the device's memory at startup, for every growth stage ahead.
size_t cuda_growth_peak_bytes(const growth::GrowthPlan& plan, int B, int T, const CudaModelOptions& opt);

// G_random on the device: begin() writes c * w into the bf16 weights of the masked elements (saving the raw
// ones on the device), end() restores them and, with grads, scales the masked bf16 gradients by c. The fp32
// master weights are never masked: the optimizer and checkpoints see raw weights, as on the CPU.
class CudaGrowthMask {
 public:
  // `model` must outlive this object (the backend drops it when the model is replaced).
  CudaGrowthMask(CudaModel& model, const growth::GrowthMask& mask);

  void begin(long steps_done);
  void end(bool grads);
  int64_t masked_elements() const { return total_; }
  // The device bytes a mask of these slices on a model of this layout allocates.
  static size_t device_bytes(const ParamLayout& layout, const std::vector<growth::MaskSlice>& slices);

 private:
  CudaModel& model_;
  growth::GrowthMask mask_;
  DeviceBuffer regions_;  // cuda::MaskRegion[count_]
  DeviceBuffer saved_;    // bf16[total_]
  int count_ = 0;
  int64_t total_ = 0;
  float c_ = 1.0f;
  bool applied_ = false;
};

// G_learn on the device: the frozen small-model layers of every per-layer kind (LearnedDepth::source) live on
// the device in fp32. materialise() writes W' = D W into the bf16 weights (rounded to nearest), all of them,
// and into the fp32 master weights this runner holds (all of them; under ZeRO-1 its pieces, compact): the
// same bits as the whole runner's. dots() returns LearnedDepth::dots()'s layout computed from the device
// gradients, for LearnedDepth::step_from_dots on the host: unsharded the whole mixing gradient, under ZeRO-1
// this rank's share of it (its pieces of the reduced gradient), which the caller sums over the ranks.
class CudaLearnedDepth {
 public:
  CudaLearnedDepth(CudaModel& model, const growth::LearnedDepth& ld);
  // At most the device bytes the mixing state of `plan` (a depth op=learn plan) allocates on a runner of a
  // world of `shard_world` ranks (sharded, a rank's pieces form at most two runs per kind).
  static size_t device_bytes(const growth::GrowthPlan& plan, int shard_world);

  void materialise(const growth::LearnedDepth& ld);
  std::vector<double> dots();

 private:
  // Elements [begin, begin + n) of layers [layer_begin, layer_end) of kind `kind`, held in the runner's fp32
  // master weights (and, sharded, its reduced gradients) at compact + (l - layer_begin) * stride: unsharded
  // one run per kind (whole layers at the layout's offset); sharded a rank's pieces of the same place in
  // consecutive layers, evenly spaced in the compact buffers.
  struct Run {
    int kind = 0;
    int64_t begin = 0, n = 0, compact = 0, stride = 0;
    int layer_begin = 0, layer_end = 0;
  };
  void check_matches(const growth::LearnedDepth& ld) const;
  bool sharded() const { return model_.shards().world() > 1; }
  cuda::DepthMixKind entry(const Run& r) const;  // the kernel entry of a run, no buffer set

  CudaModel& model_;
  int L_ = 0, L2_ = 0, kinds_ = 0;
  std::vector<int64_t> offset_, per_;  // per kind: its offset in the layout, elements per layer
  std::vector<DeviceBuffer> src_;      // per kind: fp32 (L, per)
  std::vector<Run> runs_;
  DeviceBuffer D_;     // fp32 (materialise's entries, L', L): each entry's kind's D
  DeviceBuffer dots_;  // fp64 (runs, L', L)
  DeviceBuffer workspace_;
};

}  // namespace strata
