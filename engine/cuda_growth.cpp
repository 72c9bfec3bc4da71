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

// G_learn's kernels address the master weights by the layout's offsets: the runner must hold all of them.
void require_unsharded(const CudaModel& m, const char* what) {
  STRATA_REQUIRE(m.shards().world() == 1, what,
                 " on the CUDA backend needs the whole model on one GPU (this runner holds a ZeRO-1 shard)");
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

CudaLearnedDepth::CudaLearnedDepth(CudaModel& model, const growth::LearnedDepth& ld)
    : model_(model), L_(ld.from_layers()), L2_(ld.to_layers()), kinds_(ld.kind_count()) {
  require_unsharded(model, "G_learn");
  STRATA_REQUIRE(model.config().n_layer == L2_, "G_learn: the model has ", model.config().n_layer,
                 " layers, the mixing state grows to ", L2_);
  STRATA_REQUIRE(kinds_ >= 1 && kinds_ <= cuda::kDepthMixMaxKinds, "G_learn: ", kinds_,
                 " per-layer tensor kinds (the CUDA kernels take 1 to ", cuda::kDepthMixMaxKinds, ")");
  for (int k = 0; k < kinds_; ++k) {
    const ParamEntry* e = model.layout().find(ld.kind_name(k));
    STRATA_REQUIRE(e != nullptr && e->spec.per_layer && e->layers == L2_ &&
                       e->spec.numel_per_layer() == ld.kind_numel_per_layer(k),
                   "G_learn: tensor '", ld.kind_name(k),
                   "' of the mixing state does not match the model's layout");
    offset_.push_back(e->offset);
    per_.push_back(e->spec.numel_per_layer());
    const std::vector<float>& src = ld.source(k);
    STRATA_CHECK(static_cast<int64_t>(src.size()) == int64_t{L_} * per_.back(), "G_learn: source of ",
                 ld.kind_name(k));
    src_.emplace_back(src.size() * sizeof(float), "G_learn's frozen small-model weights");
    CUDA_CHECK(cudaMemcpy(src_.back().ptr, src.data(), src.size() * sizeof(float), cudaMemcpyHostToDevice));
  }
  const size_t pairs = static_cast<size_t>(kinds_) * L2_ * L_;
  D_ = DeviceBuffer(pairs * sizeof(float), "G_learn's mixing matrices");
  dots_ = DeviceBuffer(pairs * sizeof(double), "G_learn's mixing gradients");
  workspace_ = DeviceBuffer(cuda::depth_mix_dots_workspace_bytes(kinds_, L2_, L_), "G_learn's partial sums");
}

void CudaLearnedDepth::check_matches(const growth::LearnedDepth& ld) const {
  STRATA_CHECK(ld.from_layers() == L_ && ld.to_layers() == L2_ && ld.kind_count() == kinds_,
               "CudaLearnedDepth: a different mixing state");
}

void CudaLearnedDepth::materialise(const growth::LearnedDepth& ld) {
  check_matches(ld);
  const size_t per_kind = static_cast<size_t>(L2_) * L_;
  std::vector<float> D(per_kind * static_cast<size_t>(kinds_));
  for (int k = 0; k < kinds_; ++k) std::copy_n(ld.mixing(k).data(), per_kind, D.data() + k * per_kind);
  const cudaStream_t stream = stream_of(model_);
  CUDA_CHECK(cudaMemcpyAsync(D_.ptr, D.data(), D.size() * sizeof(float), cudaMemcpyHostToDevice, stream));
  std::vector<cuda::DepthMixKind> kinds(static_cast<size_t>(kinds_));
  for (int k = 0; k < kinds_; ++k) {
    cuda::DepthMixKind& t = kinds[static_cast<size_t>(k)];
    t.src = src_[static_cast<size_t>(k)].as<const float>();
    t.master = static_cast<float*>(model_.master_device()) + offset_[static_cast<size_t>(k)];
    t.weights = static_cast<bf16*>(model_.weights_device()) + offset_[static_cast<size_t>(k)];
    t.n = per_[static_cast<size_t>(k)];
  }
  cuda::depth_mix_materialise(kinds.data(), kinds_, D_.as<const float>(), L2_, L_, stream);
  CUDA_CHECK(cudaStreamSynchronize(stream));  // D's host copy goes out of scope
}

std::vector<double> CudaLearnedDepth::dots() {
  std::vector<cuda::DepthMixKind> kinds(static_cast<size_t>(kinds_));
  for (int k = 0; k < kinds_; ++k) {
    cuda::DepthMixKind& t = kinds[static_cast<size_t>(k)];
    t.src = src_[static_cast<size_t>(k)].as<const float>();
    t.grads = static_cast<const bf16*>(model_.grads_device()) + offset_[static_cast<size_t>(k)];
    t.n = per_[static_cast<size_t>(k)];
  }
  const cudaStream_t stream = stream_of(model_);
  cuda::depth_mix_dots(kinds.data(), kinds_, L2_, L_, workspace_.as<float>(), workspace_.bytes,
                       dots_.as<double>(), stream);
  std::vector<double> out(static_cast<size_t>(kinds_) * L2_ * L_);
  CUDA_CHECK(
      cudaMemcpyAsync(out.data(), dots_.ptr, out.size() * sizeof(double), cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  return out;
}

}  // namespace strata
