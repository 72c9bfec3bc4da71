#include "engine/train_backend.h"

#include <algorithm>
#include <optional>

#include "engine/check.h"
#include "engine/data_parallel.h"
#include "engine/model.h"
#include "growth/apply.h"

namespace strata {
namespace {

class CpuBackend final : public TrainBackend {
 public:
  CpuBackend(const models::ModelConfig& cfg, int B, int T, const AdamWConfig& adamw, const DataParallelSetup& dp)
      : model_(cfg, B, T), adamw_(adamw) {
    if (dp.active())
      dp_ = std::make_unique<HostDataParallel>(*dp.comm, model_.params().layout(), adamw_, dp.zero_stage);
    if (!optimizer_sharded()) opt_.emplace(ParamLayout(cfg), adamw);  // ZeRO-1: the shard's moments are in dp_
  }
  const char* name() const override { return "cpu"; }
  std::string device_name() const override { return {}; }
  const models::ModelConfig& config() const override { return model_.config(); }
  int batch() const override { return model_.batch(); }
  int seq_len() const override { return model_.seq_len(); }
  void zero_grad() override { model_.zero_grad(); }
  float train_micro_batch(const int32_t* inputs, const int32_t* targets, float grad_scale) override {
    const float loss = model_.forward(inputs, targets);
    model_.backward(grad_scale);
    return loss;
  }
  float evaluate(const int32_t* inputs, const int32_t* targets, int64_t* n_valid) override {
    const float loss = model_.evaluate(inputs, targets);
    *n_valid = model_.num_valid_targets();
    return loss;
  }
  double grad_norm() override {
    return dp_ ? dp_->reduce_gradients(model_.grads()) : strata::grad_norm(model_.grads());
  }
  void adamw_step(double lr, float grad_scale) override {
    if (optimizer_sharded())
      dp_->step(model_.params(), model_.grads(), lr, grad_scale);
    else
      opt_->step(model_.params(), model_.grads(), lr, grad_scale);
  }
  long optimizer_t() const override { return optimizer_sharded() ? dp_->t() : opt_->t(); }
  void download_to_host() override {}
  void upload_from_host() override {}
  ParamBuffer& host_params() override { return model_.params(); }
  AdamW& host_optimizer() override {
    STRATA_CHECK(opt_.has_value(), "host_optimizer(): the optimizer state is sharded (ZeRO-1)");
    return *opt_;
  }
  ParamBuffer* host_grads() override { return &model_.grads(); }

  void set_growth_mask(const growth::GrowthMask& mask) override { mask_ = mask; }
  void mask_begin(long steps_done) override { mask_.begin(model_.params(), steps_done); }
  void mask_end(bool grads) override { mask_.end(model_.params(), grads ? &model_.grads() : nullptr); }

  // G_learn under ranks: ZeRO-0 all-reduced the whole gradient on every rank (the default step reads it);
  // ZeRO-1 left each rank its reduced shard, so each rank computes the learned matrices' gradient from its
  // shard (dots() is linear in the gradient), the shares are gathered exactly (each rank's slot, zeros
  // elsewhere) and summed in rank order: every rank takes the same Adam step.
  void learned_growth_step(growth::LearnedGrowth& ld, double lr) override {
    if (!optimizer_sharded()) return TrainBackend::learned_growth_step(ld, lr);
    const ShardRange r = dp_->range();
    ParamBuffer mine(model_.params().layout());
    std::copy(dp_->grad_shard(), dp_->grad_shard() + r.size(), mine.data() + r.begin);
    ld.step_from_dots(dp_->comm().sum_in_rank_order(ld.dots(mine)), lr);
  }

  bool optimizer_sharded() const override { return dp_ && dp_->zero_stage() == 1; }
  std::vector<CheckpointExtra> rank_checkpoint_files() override {
    if (!optimizer_sharded()) return {};
    return {optimizer_shard_extra(dp_->layout(), {dp_->range()}, dp_->m(), dp_->v(), dp_->comm().rank(),
                                  dp_->comm().world())};
  }
  void load_optimizer(const CheckpointInfo& info, long t) override {
    if (!optimizer_sharded()) return TrainBackend::load_optimizer(info, t);
    load_checkpoint_moments(info, dp_->layout(), {dp_->range()}, dp_->m(), dp_->v());
    dp_->set_t(t);
  }

  void grow(const growth::GrowthPlan& plan, uint64_t seed) override {
    mask_ = growth::GrowthMask();  // its slices name the old layout
    if (optimizer_sharded()) {  // gather, grow, re-shard
      AdamW whole = dp_->gather_optimizer();
      growth::grow_in_place(plan, model_, whole, seed);
      dp_->reset_from(whole);
      return;
    }
    growth::grow_in_place(plan, model_, *opt_, seed);
    if (dp_) dp_->set_layout(model_.params().layout());
  }

 private:
  Model model_;
  AdamWConfig adamw_;
  std::optional<AdamW> opt_;
  std::unique_ptr<HostDataParallel> dp_;
  growth::GrowthMask mask_;
};

CudaBackendFactory g_cuda_factory = nullptr;

}  // namespace

void TrainBackend::load_optimizer(const CheckpointInfo& info, long t) {
  AdamW& opt = host_optimizer();
  const ParamLayout& layout = opt.m().layout();
  load_checkpoint_moments(info, layout, {ShardRange{0, layout.numel()}}, opt.m().data(), opt.v().data());
  opt.set_t(t);
}

void TrainBackend::materialise_learned_growth(const growth::LearnedGrowth& ld) {
  ld.materialise(host_params());
}

void TrainBackend::learned_growth_step(growth::LearnedGrowth& ld, double lr) {
  const ParamBuffer* grads = host_grads();
  STRATA_CHECK(grads != nullptr, "learned_growth_step: the ", name(), " backend keeps no host gradients");
  ld.step(*grads, lr);
}

std::unique_ptr<TrainBackend> make_cpu_backend(const models::ModelConfig& cfg, int B, int T,
                                               const AdamWConfig& adamw, const DataParallelSetup& dp) {
  return std::make_unique<CpuBackend>(cfg, B, T, adamw, dp);
}

void register_cuda_backend(CudaBackendFactory factory) {
  g_cuda_factory = factory;
}

std::unique_ptr<TrainBackend> make_backend(const std::string& device, const models::ModelConfig& cfg, int B,
                                           int T, const AdamWConfig& adamw, uint64_t seed,
                                           const DataParallelSetup& dp, const CudaRunOptions& run) {
  if (device == "cpu") {
    STRATA_REQUIRE(run.recompute == Recompute::kNone, "--recompute ", recompute_name(run.recompute),
                   ": activation recomputation is a CUDA-backend option (--device cuda); the CPU backend "
                   "keeps every activation");
    STRATA_REQUIRE(!run.cudnn_attention,
                   "--attention cudnn: cuDNN's attention is a CUDA-backend option (--device cuda)");
    return make_cpu_backend(cfg, B, T, adamw, dp);
  }
  STRATA_REQUIRE(device == "cuda", "--device ", device, ": unknown device (cpu or cuda)");
  STRATA_REQUIRE(
      g_cuda_factory != nullptr,
      "--device cuda: this strata was built without the CUDA backend (configure with nvcc present, "
      "-DSTRATA_CUDA=ON)");
  return g_cuda_factory(cfg, B, T, adamw, seed, dp, run);
}

}  // namespace strata
