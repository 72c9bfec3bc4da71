// engine/data_parallel.cpp: ZeRO-0 / ZeRO-1 data parallelism over host buffers (engine/data_parallel.h).
#include "engine/data_parallel.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/check.h"

namespace strata {

HostDataParallel::HostDataParallel(Communicator& comm, const ParamLayout& layout, const AdamWConfig& cfg,
                                   int zero_stage)
    : comm_(comm), layout_(layout), cfg_(cfg), zero_stage_(zero_stage) {
  STRATA_REQUIRE(zero_stage == 0 || zero_stage == 1, "--zero must be 0 or 1 (got ", zero_stage, ")");
  cfg_.validate();
  if (zero_stage_ == 1) {
    range_ = shard_range(layout_.numel(), comm_.world(), comm_.rank());
    m_.assign(static_cast<size_t>(range_.size()), 0.0f);
    v_.assign(m_.size(), 0.0f);
    grad_shard_.assign(m_.size(), 0.0f);
  }
}

void HostDataParallel::set_layout(const ParamLayout& layout) {
  STRATA_CHECK(zero_stage_ == 0, "set_layout is ZeRO-0's; ZeRO-1 re-shards with reset_from");
  layout_ = layout;
}

double HostDataParallel::reduce_gradients(ParamBuffer& grads) {
  STRATA_CHECK(grads.numel() == layout_.numel(), "gradients laid out for ", grads.numel(), ", expected ",
               layout_.numel());
  const int64_t n = layout_.numel();
  const int R = comm_.world();
  if (zero_stage_ == 1) {
    comm_.reduce_scatter(grads.data(), grad_shard_.data(), n);
    return std::sqrt(comm_.sum_in_rank_order({sum_squares(grad_shard_.data(), range_.size())})[0]);
  }
  // ZeRO-0: every shard's sum of squares here, added as sum_in_rank_order adds ZeRO-1's.
  comm_.all_reduce(grads.data(), n, ReduceOp::kSum);
  double total = 0.0;
  for (int r = 0; r < R; ++r) {
    const ShardRange s = shard_range(n, R, r);
    total += sum_squares(grads.data() + s.begin, s.size());
  }
  return std::sqrt(total);
}

void HostDataParallel::step(ParamBuffer& params, const ParamBuffer& grads, double lr, float grad_scale) {
  STRATA_CHECK(params.numel() == layout_.numel() && grads.numel() == layout_.numel(),
               "data-parallel step: buffers laid out for ", params.numel(), " / ", grads.numel(),
               " elements, expected ", layout_.numel());
  STRATA_CHECK(zero_stage_ == 1, "HostDataParallel::step is ZeRO-1's (ZeRO-0 steps the backend's AdamW)");
  ++t_;
  adamw_update_range(layout_, cfg_, t_, lr, grad_scale, range_.begin, range_.end,
                     params.data() + range_.begin, grad_shard_.data(), m_.data(), v_.data());
  comm_.all_gather(params.data(), layout_.numel());
}

AdamW HostDataParallel::gather_optimizer() {
  STRATA_CHECK(zero_stage_ == 1, "gather_optimizer is ZeRO-1's");
  AdamW full(layout_, cfg_);
  full.set_t(t_);
  std::copy(m_.begin(), m_.end(), full.m().data() + range_.begin);
  std::copy(v_.begin(), v_.end(), full.v().data() + range_.begin);
  comm_.all_gather(full.m().data(), layout_.numel());
  comm_.all_gather(full.v().data(), layout_.numel());
  return full;
}

void HostDataParallel::reset_from(const AdamW& full) {
  STRATA_CHECK(zero_stage_ == 1, "reset_from is ZeRO-1's");
  layout_ = full.m().layout();
  range_ = shard_range(layout_.numel(), comm_.world(), comm_.rank());
  m_.assign(full.m().data() + range_.begin, full.m().data() + range_.end);
  v_.assign(full.v().data() + range_.begin, full.v().data() + range_.end);
  grad_shard_.assign(m_.size(), 0.0f);
  t_ = full.t();
}

}  // namespace strata
