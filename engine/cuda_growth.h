// engine/cuda_growth.h: the growth phases that change how a step trains, on the CUDA runner's device buffers
// (engine/cuda_model.h), with growth/apply.h's semantics: G_random's mask (GrowthMask) and G_learn's depth
// mixing (LearnedDepth). The CUDA backend (engine/cuda_backend.cpp) holds one of each while its phase runs;
// the kernels are kernels/cuda/growth_ops.h. Single runner only: the master weights must cover the whole
// layout (no ZeRO-1 shard).
//
// Per step nothing of the model's size crosses to the host: the mask's region table is uploaded once,
// G_learn's frozen small-model weights once (fp32, L x per-layer elements of every kind); each G_learn step
// uploads D and downloads the kinds x L' x L mixing gradients.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/cuda_model.h"
#include "engine/device_buffer.h"
#include "growth/apply.h"

namespace strata {

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
// the device in fp32; materialise() writes W' = D W into the fp32 master and the bf16 weights (rounded to
// nearest), dots() returns LearnedDepth::dots()'s layout computed from the device gradients, for
// LearnedDepth::step_from_dots on the host.
class CudaLearnedDepth {
 public:
  CudaLearnedDepth(CudaModel& model, const growth::LearnedDepth& ld);

  void materialise(const growth::LearnedDepth& ld);
  std::vector<double> dots();

 private:
  void check_matches(const growth::LearnedDepth& ld) const;

  CudaModel& model_;
  int L_ = 0, L2_ = 0, kinds_ = 0;
  std::vector<int64_t> offset_, per_;  // per kind: its offset in the layout, elements per layer
  std::vector<DeviceBuffer> src_;      // per kind: fp32 (L, per)
  DeviceBuffer D_;                     // fp32 (kinds, L', L)
  DeviceBuffer dots_;                  // fp64 (kinds, L', L)
  DeviceBuffer workspace_;
};

}  // namespace strata
