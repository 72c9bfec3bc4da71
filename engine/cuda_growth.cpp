// engine/cuda_growth.cpp: G_random's mask and G_learn's depth mixing on the CUDA runner's buffers (see
// cuda_growth.h). Host code only: it builds the kernels' tables, copies and calls kernels/cuda/growth_ops.h,
// so the same source builds against the CUDA runtime and against the CPU emulation. The CUDA headers come
// first: engine/check.h defines CUDA_CHECK only when they precede it.
#if defined(STRATA_CUDA_EMU)
#include "kernels/cuda/emu/emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#endif

#include "engine/cuda_growth.h"

#include <algorithm>

#include "engine/check.h"
#include "kernels/cuda/growth_ops.h"

namespace strata {
namespace {

using bf16 = __nv_bfloat16;

cudaStream_t stream_of(const CudaModel& m) {
  return static_cast<cudaStream_t>(m.stream());
}

// Calls f(first, count) over n kernel entries in order, at most kDepthMixMaxKinds at a time.
template <class F>
void in_batches(size_t n, F&& f) {
  for (size_t b = 0; b < n; b += cuda::kDepthMixMaxKinds)
    f(b, static_cast<int>(std::min<size_t>(cuda::kDepthMixMaxKinds, n - b)));
}

// The regions of `slices` in `layout`, in order, each range clipped to its tensor (the host's
// for_each_masked visits only the tensor's elements).
std::vector<cuda::MaskRegion> mask_regions(const ParamLayout& layout,
                                           const std::vector<growth::MaskSlice>& slices, int64_t* total) {
  std::vector<cuda::MaskRegion> out;
  *total = 0;
  for (const growth::MaskSlice& s : slices) {
    const ParamEntry* e = layout.find(s.name);
    STRATA_REQUIRE(e != nullptr, "G_random mask: the model has no tensor '", s.name, "'");
    STRATA_REQUIRE(s.layer < (e->spec.per_layer ? e->layers : 1) && (s.layer >= 0 || !e->spec.per_layer),
                   "G_random mask: layer ", s.layer, " of tensor '", s.name, "' is outside the model's ",
                   e->layers, " layers");
    cuda::MaskRegion r;
    r.rows = e->spec.shape[0];
    r.cols = e->spec.shape.size() == 2 ? e->spec.shape[1] : 1;
    r.base = e->offset + (s.layer >= 0 ? s.layer * e->spec.numel_per_layer() : 0);
    r.row_begin = std::clamp<int64_t>(s.row_begin, 0, r.rows);
    r.row_end = std::clamp<int64_t>(s.row_end, r.row_begin, r.rows);
    r.col_begin = std::clamp<int64_t>(s.col_begin, 0, r.cols);
    r.col_end = std::clamp<int64_t>(s.col_end, r.col_begin, r.cols);
    r.first = *total;
    const int64_t n = cuda::mask_region_numel(r);
    if (n == 0) continue;
    *total += n;
    out.push_back(r);
  }
  return out;
}

}  // namespace

// ---- CudaGrowthMask
// -----------------------------------------------------------------------------------------

CudaGrowthMask::CudaGrowthMask(CudaModel& model, const growth::GrowthMask& mask)
    : model_(model), mask_(mask) {
  // The mask touches only the bf16 weights and gradients, which every runner holds whole (ZeRO-1 shards the
  // master weights and moments only).
  const std::vector<cuda::MaskRegion> regions = mask_regions(model.layout(), mask.slices(), &total_);
  count_ = static_cast<int>(regions.size());
  regions_ = DeviceBuffer(regions.size() * sizeof(cuda::MaskRegion), "the G_random mask's regions");
  saved_ = DeviceBuffer(static_cast<size_t>(total_) * sizeof(bf16), "the G_random mask's raw weights");
  CUDA_CHECK(cudaMemcpy(regions_.ptr, regions.data(), regions.size() * sizeof(cuda::MaskRegion),
                        cudaMemcpyHostToDevice));
}

void CudaGrowthMask::begin(long steps_done) {
  STRATA_CHECK(!applied_, "CudaGrowthMask::begin twice");
  c_ = mask_.factor(steps_done);
  cuda::growth_mask_begin(static_cast<bf16*>(model_.weights_device()), saved_.as<bf16>(),
                          regions_.as<const cuda::MaskRegion>(), count_, total_, c_, stream_of(model_));
  applied_ = true;
}

void CudaGrowthMask::end(bool grads) {
  STRATA_CHECK(applied_, "CudaGrowthMask::end without begin");
  cuda::growth_mask_end(static_cast<bf16*>(model_.weights_device()),
                        grads ? static_cast<bf16*>(model_.grads_device()) : nullptr, saved_.as<const bf16>(),
                        regions_.as<const cuda::MaskRegion>(), count_, total_, c_, stream_of(model_));
  applied_ = false;
}

// ---- CudaLearnedDepth
// ---------------------------------------------------------------------------------------

size_t CudaGrowthMask::device_bytes(const ParamLayout& layout, const std::vector<growth::MaskSlice>& slices) {
  int64_t total = 0;
  const std::vector<cuda::MaskRegion> regions = mask_regions(layout, slices, &total);
  return regions.size() * sizeof(cuda::MaskRegion) + static_cast<size_t>(total) * sizeof(bf16);
}

size_t CudaLearnedDepth::device_bytes(const growth::GrowthPlan& plan, int shard_world) {
  const ParamLayout from(plan.from);
  size_t src = 0, kinds = 0;
  for (const ParamEntry& e : from.entries())
    if (e.spec.per_layer) src += static_cast<size_t>(e.numel()) * sizeof(float), ++kinds;
  const size_t runs = shard_world > 1 ? 2 * kinds : kinds;
  const size_t pairs = static_cast<size_t>(plan.to.n_layer) * static_cast<size_t>(plan.from.n_layer);
  const size_t mix = runs + (shard_world > 1 ? kinds : 0);
  const int batch = static_cast<int>(std::min<size_t>(std::max<size_t>(runs, 1), cuda::kDepthMixMaxKinds));
  return src + mix * pairs * sizeof(float) + std::max<size_t>(runs, 1) * pairs * sizeof(double) +
         cuda::depth_mix_dots_workspace_bytes(batch, plan.to.n_layer, plan.from.n_layer);
}

size_t cuda_growth_peak_bytes(const growth::GrowthPlan& plan, int B, int T, const CudaModelOptions& opt) {
  const CudaMemoryPlan a = CudaModel::plan_memory(plan.from, B, T, opt);
  const CudaMemoryPlan b = CudaModel::plan_memory(plan.to, B, T, opt);
  size_t phase = 0;
  if (plan.stage.op == growth::Op::kRandom)
    phase = CudaGrowthMask::device_bytes(ParamLayout(plan.to), plan.masks);
  // G_learn in depth keeps its state on the device; in width it lives on the host (growth/learned_width.h).
  if (plan.stage.op == growth::Op::kLearn && plan.stage.direction() == growth::Direction::kDepth)
    phase = CudaLearnedDepth::device_bytes(plan, opt.shard_world);
  const size_t after = b.total() + phase;
  if (opt.shard_world > 1 && !CudaModel::layer_copies_only(plan)) return after;  // the old runner goes first
  // During grown(): the old runner's state but its gradients, the grown runner as constructed (its moments
  // only when mapped), the rules' scratch.
  const bool map = plan.stage.optimizer == growth::OptimizerPolicy::kMap;
  const size_t during = a.weights + a.master + a.moments + (b.total() - (map ? 0 : b.moments)) +
                        CudaModel::growth_scratch_bytes(plan);
  return std::max(during, after);
}

CudaLearnedDepth::CudaLearnedDepth(CudaModel& model, const growth::LearnedDepth& ld)
    : model_(model), L_(ld.from_layers()), L2_(ld.to_layers()), kinds_(ld.kind_count()) {
  STRATA_REQUIRE(model.config().n_layer == L2_, "G_learn: the model has ", model.config().n_layer,
                 " layers, the mixing state grows to ", L2_);
  STRATA_REQUIRE(kinds_ >= 1, "G_learn: the mixing state has no per-layer tensor kind");
  const std::vector<ParamEntry>& entries = model.layout().entries();
  std::vector<int> kind_of(entries.size(), -1);  // layout entry -> kind
  for (int k = 0; k < kinds_; ++k) {
    const ParamEntry* e = model.layout().find(ld.kind_name(k));
    STRATA_REQUIRE(e != nullptr && e->spec.per_layer && e->layers == L2_ &&
                       e->spec.numel_per_layer() == ld.kind_numel_per_layer(k),
                   "G_learn: tensor '", ld.kind_name(k),
                   "' of the mixing state does not match the model's layout");
    kind_of[static_cast<size_t>(e - entries.data())] = k;
    offset_.push_back(e->offset);
    per_.push_back(e->spec.numel_per_layer());
    const std::vector<float>& src = ld.source(k);
    STRATA_CHECK(static_cast<int64_t>(src.size()) == int64_t{L_} * per_.back(), "G_learn: source of ",
                 ld.kind_name(k));
    src_.emplace_back(src.size() * sizeof(float), "G_learn's frozen small-model weights");
    CUDA_CHECK(cudaMemcpy(src_.back().ptr, src.data(), src.size() * sizeof(float), cudaMemcpyHostToDevice));
  }
  if (!sharded()) {  // whole layers at the layout's offsets (compact == flat)
    for (int k = 0; k < kinds_; ++k) {
      const size_t kk = static_cast<size_t>(k);
      runs_.push_back({k, 0, per_[kk], offset_[kk], per_[kk], 0, L2_});
    }
  } else {
    // This rank's pieces (engine/shard_map.h: each within one layer of a per-layer kind), grouped into runs:
    // a piece extends a run of its kind at the same place in the layer above, evenly spaced in the compact
    // buffers. The split gives every layer of a kind the same chunk (and the last rank the same tail), so a
    // rank has one or two runs per kind.
    for (const ShardPiece& p : model.shards().pieces()) {
      const int k = kind_of[static_cast<size_t>(p.entry)];
      if (k < 0) continue;  // a global tensor: frozen during G_learn
      const size_t kk = static_cast<size_t>(k);
      const int64_t rel = p.begin - offset_[kk];
      const int l = static_cast<int>(rel / per_[kk]);
      const int64_t begin = rel - int64_t{l} * per_[kk];
      STRATA_CHECK(begin + p.size() <= per_[kk], "G_learn: a ZeRO-1 piece of ", ld.kind_name(k),
                   " spans two layers");
      auto extends = [&](const Run& r) {
        const int64_t stride = r.layer_end - r.layer_begin == 1 ? p.compact - r.compact : r.stride;
        return r.kind == k && r.begin == begin && r.n == p.size() && r.layer_end == l && stride >= r.n &&
               p.compact == r.compact + int64_t{l - r.layer_begin} * stride;
      };
      const auto it = std::find_if(runs_.begin(), runs_.end(), extends);
      if (it == runs_.end()) {
        runs_.push_back({k, begin, p.size(), p.compact, p.size(), l, l + 1});
      } else {
        if (it->layer_end - it->layer_begin == 1) it->stride = p.compact - it->compact;
        it->layer_end = l + 1;
      }
    }
  }
  // materialise's entries: unsharded the runs (master and bf16 weights); sharded every kind's whole bf16
  // weights, then the runs' master weights.
  const size_t pairs = static_cast<size_t>(L2_) * L_;
  const size_t mix = runs_.size() + (sharded() ? static_cast<size_t>(kinds_) : 0);
  D_ = DeviceBuffer(mix * pairs * sizeof(float), "G_learn's mixing matrices");
  dots_ =
      DeviceBuffer(std::max<size_t>(runs_.size(), 1) * pairs * sizeof(double), "G_learn's mixing gradients");
  const int batch =
      static_cast<int>(std::min<size_t>(std::max<size_t>(runs_.size(), 1), cuda::kDepthMixMaxKinds));
  workspace_ = DeviceBuffer(cuda::depth_mix_dots_workspace_bytes(batch, L2_, L_), "G_learn's partial sums");
}

void CudaLearnedDepth::check_matches(const growth::LearnedDepth& ld) const {
  STRATA_CHECK(ld.from_layers() == L_ && ld.to_layers() == L2_ && ld.kind_count() == kinds_,
               "CudaLearnedDepth: a different mixing state");
}

cuda::DepthMixKind CudaLearnedDepth::entry(const Run& r) const {
  const size_t k = static_cast<size_t>(r.kind);
  cuda::DepthMixKind t;
  t.src = src_[k].as<const float>() + r.begin;
  t.src_stride = per_[k];
  t.n = r.n;
  t.stride = r.stride;
  t.layer_begin = r.layer_begin;
  t.layer_end = r.layer_end;
  return t;
}

void CudaLearnedDepth::materialise(const growth::LearnedDepth& ld) {
  check_matches(ld);
  auto* master = static_cast<float*>(model_.master_device());
  auto* weights = static_cast<bf16*>(model_.weights_device());
  std::vector<cuda::DepthMixKind> entries;
  std::vector<int> kind;  // each entry's kind: whose D it mixes by
  if (sharded()) {
    // The bf16 weights are whole on every rank: each writes all of them (the same bits everywhere).
    for (int k = 0; k < kinds_; ++k) {
      const size_t kk = static_cast<size_t>(k);
      cuda::DepthMixKind t = entry({k, 0, per_[kk], offset_[kk], per_[kk], 0, L2_});
      t.weights = weights + offset_[kk];
      entries.push_back(t);
      kind.push_back(k);
    }
  }
  for (const Run& r : runs_) {
    cuda::DepthMixKind t = entry(r);
    t.master = master + r.compact;
    if (!sharded()) t.weights = weights + r.compact;  // compact == flat
    entries.push_back(t);
    kind.push_back(r.kind);
  }
  const size_t pairs = static_cast<size_t>(L2_) * L_;
  std::vector<float> D(entries.size() * pairs);
  for (size_t e = 0; e < entries.size(); ++e)
    std::copy_n(ld.mixing(kind[e]).data(), pairs, D.data() + e * pairs);
  const cudaStream_t stream = stream_of(model_);
  CUDA_CHECK(cudaMemcpyAsync(D_.ptr, D.data(), D.size() * sizeof(float), cudaMemcpyHostToDevice, stream));
  in_batches(entries.size(), [&](size_t first, int count) {
    cuda::depth_mix_materialise(entries.data() + first, count, D_.as<const float>() + first * pairs, L2_, L_,
                                stream);
  });
  CUDA_CHECK(cudaStreamSynchronize(stream));  // D's host copy goes out of scope
}

std::vector<double> CudaLearnedDepth::dots() {
  // Unsharded the whole gradient (the layout's offsets); sharded this rank's reduced pieces (compact).
  const auto* grads =
      static_cast<const bf16*>(sharded() ? model_.grad_shard_device() : model_.grads_device());
  std::vector<cuda::DepthMixKind> entries;
  for (const Run& r : runs_) {
    cuda::DepthMixKind t = entry(r);
    t.grads = grads + r.compact;
    entries.push_back(t);
  }
  const size_t pairs = static_cast<size_t>(L2_) * L_;
  std::vector<double> out(static_cast<size_t>(kinds_) * pairs, 0.0);
  if (entries.empty()) return out;  // a rank without pieces of any per-layer kind: no share
  const cudaStream_t stream = stream_of(model_);
  in_batches(entries.size(), [&](size_t first, int count) {
    cuda::depth_mix_dots(entries.data() + first, count, L2_, L_, workspace_.as<float>(), workspace_.bytes,
                         dots_.as<double>() + first * pairs, stream);
  });
  std::vector<double> per_run(entries.size() * pairs);
  CUDA_CHECK(cudaMemcpyAsync(per_run.data(), dots_.ptr, per_run.size() * sizeof(double),
                             cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  // Each kind's runs added in order (unsharded one run per kind: its dots as they are).
  std::vector<bool> seen(static_cast<size_t>(kinds_), false);
  for (size_t e = 0; e < runs_.size(); ++e) {
    const size_t k = static_cast<size_t>(runs_[e].kind);
    double* o = out.data() + k * pairs;
    const double* d = per_run.data() + e * pairs;
    if (!seen[k])
      std::copy_n(d, pairs, o);
    else
      for (size_t i = 0; i < pairs; ++i) o[i] += d[i];
    seen[k] = true;
  }
  return out;
}

}  // namespace strata
