// engine/data_parallel.h: data parallelism for a backend whose gradients and parameters live in host memory
// (the CPU backend), over engine/comm.h's communicator.
//
// Every rank runs the same model on its own micro-batches (the loader's rank-disjoint share of each global
// batch) and scales each micro-batch's gradient by 1 / (micro-batches per rank x world), so the sum over
// ranks is the global batch's mean gradient. Then, per optimizer step:
//   ZeRO-0  all-reduce (sum) of the whole gradient; every rank keeps the whole AdamW state and updates every
//           parameter (replicated): the backend's own AdamW does the step, this class only reduces.
//   ZeRO-1  reduce-scatter (sum) of the gradient: rank r receives shard r (engine/comm.h's split); rank r
//   keeps
//           the AdamW moments of shard r only, updates shard r of the parameters, and an all-gather gives
//           every rank every parameter. Per rank: moments 2 n / R floats instead of 2 n.
// The global gradient norm (clipping) is the sum over shards, in rank order, of each shard's sum of squares
// (engine/optim.h's sum_squares), for both stages: ZeRO-0 and ZeRO-1 clip by the same bits and take the same
// steps.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/comm.h"
#include "engine/optim.h"
#include "engine/params.h"

namespace strata {

class HostDataParallel {
 public:
  HostDataParallel(Communicator& comm, const ParamLayout& layout, const AdamWConfig& cfg, int zero_stage);

  int zero_stage() const { return zero_stage_; }
  Communicator& comm() { return comm_; }
  const ParamLayout& layout() const { return layout_; }
  // ZeRO-1: the elements whose optimizer state this rank holds (its shard), and their reduced gradients after
  // reduce_gradients() (range().size() floats).
  ShardRange range() const { return range_; }
  const float* grad_shard() const { return grad_shard_.data(); }

  // Reduces the gradients over the ranks (see above) and returns the global L2 norm.
  double reduce_gradients(ParamBuffer& grads);
  // ZeRO-1: one AdamW step on this rank's shard (t advances first) at rate lr with the reduced gradients
  // times grad_scale, then the all-gather of the parameters.
  void step(ParamBuffer& params, const ParamBuffer& grads, double lr, float grad_scale);

  long t() const { return t_; }
  void set_t(long t) { t_ = t; }
  // The moments of range(), range().size() floats each.
  float* m() { return m_.data(); }
  float* v() { return v_.data(); }
  const float* m() const { return m_.data(); }
  const float* v() const { return v_.data(); }

  // ZeRO-1 growth: the whole moments as an AdamW of layout() (all-gathered: every rank gets the same), and
  // the state re-sharded from a grown AdamW (its layout becomes layout()). Growth moves 2 n floats per rank
  // once: cheap next to the step it interrupts.
  AdamW gather_optimizer();
  void reset_from(const AdamW& full);
  // ZeRO-0 growth: the new layout (there is no state here to move).
  void set_layout(const ParamLayout& layout);

 private:
  Communicator& comm_;
  ParamLayout layout_;
  AdamWConfig cfg_;
  int zero_stage_;
  ShardRange range_;
  std::vector<float> m_, v_, grad_shard_;  // grad_shard_: ZeRO-1's reduce-scatter output
  long t_ = 0;
};

}  // namespace strata
