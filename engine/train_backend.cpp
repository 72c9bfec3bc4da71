#include "engine/train_backend.h"

#include "engine/check.h"
#include "engine/model.h"
#include "growth/apply.h"

namespace strata {
namespace {

class CpuBackend final : public TrainBackend {
 public:
  CpuBackend(const models::ModelConfig& cfg, int B, int T, const AdamWConfig& adamw)
      : model_(cfg, B, T), opt_(ParamLayout(cfg), adamw) {}
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
  double grad_norm() override { return strata::grad_norm(model_.grads()); }
  void adamw_step(double lr, float grad_scale) override {
    opt_.step(model_.params(), model_.grads(), lr, grad_scale);
  }
  long optimizer_t() const override { return opt_.t(); }
  void download_to_host() override {}
  void upload_from_host() override {}
  ParamBuffer& host_params() override { return model_.params(); }
  AdamW& host_optimizer() override { return opt_; }
  ParamBuffer* host_grads() override { return &model_.grads(); }
  void grow(const growth::GrowthPlan& plan, uint64_t seed) override {
    growth::grow_in_place(plan, model_, opt_, seed);
  }

 private:
  Model model_;
  AdamW opt_;
};

CudaBackendFactory g_cuda_factory = nullptr;

}  // namespace

std::unique_ptr<TrainBackend> make_cpu_backend(const models::ModelConfig& cfg, int B, int T,
                                               const AdamWConfig& adamw) {
  return std::make_unique<CpuBackend>(cfg, B, T, adamw);
}

void register_cuda_backend(CudaBackendFactory factory) {
  g_cuda_factory = factory;
}

std::unique_ptr<TrainBackend> make_backend(const std::string& device, const models::ModelConfig& cfg, int B,
                                           int T, const AdamWConfig& adamw, uint64_t seed) {
  if (device == "cpu") return make_cpu_backend(cfg, B, T, adamw);
  STRATA_REQUIRE(device == "cuda", "--device ", device, ": unknown device (cpu or cuda)");
  STRATA_REQUIRE(
      g_cuda_factory != nullptr,
      "--device cuda: this strata was built without the CUDA backend (configure with nvcc present, "
      "-DSTRATA_CUDA=ON)");
  return g_cuda_factory(cfg, B, T, adamw, seed);
}

}  // namespace strata
