// The CUDA model runner (engine/cuda_model.h) against the CPU runner (engine/model.h), end to end: a small
// LLaMA with grouped-query attention and a small GPT-2 start from the same weights (rounded to bf16, so both
// runners see the same numbers) and are compared on the loss, every parameter gradient, and 10 AdamW steps on
// the same batches; two identical CUDA runs give identical bits. Built twice (tests/CMakeLists.txt): on the
// GPU (label gpu, skips without one) and on the CPU emulation (label cpu-emu), where the kernels' logic runs
// on the host.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "engine/cuda_model.h"
#include "engine/model.h"
#include "engine/optim.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/test_util.h"
#include "tests/tolerances.h"

namespace strata {
namespace {

using test::kRunnerGradTol;  // tolerances: tests/tolerances.h
using test::kRunnerLossTol;
using test::kRunnerUpdateTol;
using test::kRunnerStepLossTol;

// Head dim 64 (flash attention's smaller instantiation); sizes not multiples of the kernels' tiles.
models::ModelConfig config(models::Family f) {
  models::ModelConfig c = models::preset(f == models::Family::kLlama ? "llama-tiny" : "gpt2-tiny");
  c.n_layer = 2;
  c.d_model = 128;
  c.n_head = 2;
  c.n_kv_head = f == models::Family::kLlama ? 1 : 2;  // GQA (a group of 2) for LLaMA
  c.d_ff = f == models::Family::kLlama ? 176 : 512;
  c.vocab_size = 301;
  c.max_seq_len = 64;
  return c;
}

// Weights from init_params, rounded to bf16 so the fp32 CPU runner starts from the values the GPU holds.
ParamBuffer bf16_weights(const models::ModelConfig& cfg, uint64_t seed) {
  ParamBuffer p{ParamLayout(cfg)};
  init_params(p, seed);
  for (int64_t i = 0; i < p.numel(); ++i) p.data()[i] = test::bf16_to_float(test::float_to_bf16(p.data()[i]));
  return p;
}

// max |a - b| / max |b| over one tensor.
double rel_err(const float* a, const float* b, int64_t n) {
  double err = 0, scale = 0;
  for (int64_t i = 0; i < n; ++i) {
    err = std::max(err, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return scale > 0 ? err / scale : err;
}

class CudaModelTest : public ::testing::TestWithParam<models::Family> {};

TEST_P(CudaModelTest, LossAndGradientsMatchTheCpuRunner) {
  STRATA_SKIP_WITHOUT_GPU();
  const models::ModelConfig cfg = config(GetParam());
  const int B = 2, T = 37;
  const ParamBuffer w = bf16_weights(cfg, 11);
  auto in = test::random_tokens(size_t(B) * T, cfg.vocab_size, 1);
  auto tg = test::random_tokens(in.size(), cfg.vocab_size, 2);
  tg[3] = tg[40] = kIgnoreIndex;  // ignored targets count neither in the loss nor in its mean

  Model cpu(cfg, B, T);
  std::memcpy(cpu.params().data(), w.data(), size_t(w.numel()) * sizeof(float));
  cpu.zero_grad();
  const float cpu_loss = cpu.forward(in.data(), tg.data());
  cpu.backward(0.5f);

  CudaModel gpu(cfg, B, T);
  gpu.set_params(w);
  gpu.zero_grad();
  const float gpu_loss = gpu.forward(in.data(), tg.data(), 0.5f);
  gpu.backward();
  EXPECT_EQ(gpu.num_valid_targets(), B * T - 2);
  EXPECT_NEAR(gpu_loss, cpu_loss, kRunnerLossTol * cpu_loss);
  EXPECT_NEAR(gpu.evaluate(in.data(), tg.data()), gpu_loss, 0.0) << "evaluate() is the same forward";

  ParamBuffer g{gpu.layout()};
  gpu.get_grads(g);
  double worst = 0;
  for (const ParamEntry& e : gpu.layout().entries()) {
    const double err = rel_err(g.data() + e.offset, cpu.grads().data() + e.offset, e.numel());
    EXPECT_LE(err, kRunnerGradTol) << e.spec.name;
    worst = std::max(worst, err);
  }
  RecordProperty("worst_grad_rel_err", std::to_string(worst));
  std::printf("loss cpu %.6f cuda %.6f; worst gradient error %.4f of the tensor's max\n", cpu_loss, gpu_loss,
              worst);
  // The gradient norm on the device against the CPU's norm of the same (bf16) gradients.
  EXPECT_NEAR(gpu.grad_norm(), grad_norm(g), 1e-5 * grad_norm(g));
}

// Ten AdamW steps with gradient accumulation (2 micro-batches) and clipping on both runners from the same
// weights and batches: the losses follow each other within bf16 precision.
TEST_P(CudaModelTest, TenTrainingStepsFollowTheCpuRunner) {
  STRATA_SKIP_WITHOUT_GPU();
  const models::ModelConfig cfg = config(GetParam());
  const int B = 1, T = 32, accum = 2, steps = 10;
  const ParamBuffer w = bf16_weights(cfg, 3);
  AdamWConfig ac;
  ac.weight_decay = 0.1;
  Model cpu(cfg, B, T);
  std::memcpy(cpu.params().data(), w.data(), size_t(w.numel()) * sizeof(float));
  AdamW opt(cpu.params().layout(), ac);
  CudaModel gpu(cfg, B, T);
  gpu.set_params(w);
  const double lr = 3e-3, max_norm = 1.0;
  std::vector<double> cpu_losses, gpu_losses;
  for (int s = 0; s < steps; ++s) {
    cpu.zero_grad();
    gpu.zero_grad();
    double lc = 0, lg = 0;
    for (int k = 0; k < accum; ++k) {
      // A small vocabulary slice makes the batches learnable, so the loss moves visibly in 10 steps.
      auto in = test::random_tokens(size_t(B) * T, 40, 100 + 2 * (s * accum + k));
      std::vector<int32_t> tg(in.size());
      for (size_t i = 0; i < in.size(); ++i) tg[i] = (in[i] * 7 + 3) % 40;
      lc += cpu.forward(in.data(), tg.data()) / accum;
      cpu.backward(1.0f / accum);
      lg += gpu.forward(in.data(), tg.data(), 1.0f / accum) / accum;
      gpu.backward();
    }
    opt.step(cpu.params(), cpu.grads(), lr, clip_scale(grad_norm(cpu.grads()), max_norm));
    gpu.adamw_step(ac, s + 1, lr, clip_scale(gpu.grad_norm(), max_norm), 1234);
    cpu_losses.push_back(lc);
    gpu_losses.push_back(lg);
  }
  for (int s = 0; s < steps; ++s) {
    std::printf("step %d loss cpu %.5f cuda %.5f\n", s + 1, cpu_losses[size_t(s)], gpu_losses[size_t(s)]);
    EXPECT_NEAR(gpu_losses[size_t(s)], cpu_losses[size_t(s)], kRunnerStepLossTol * cpu_losses[size_t(s)])
        << "step " << s + 1;
  }
  EXPECT_LT(gpu_losses.back(), gpu_losses.front() - 0.5) << "training did not lower the loss";
  // The two runners made nearly the same update: the distance between their fp32 weights after 10 steps is a
  // small fraction of how far the CPU runner's weights moved (Adam's normalised steps move every weight by ~lr per
  // step, so a weight whose gradient is near zero may step differently on each: a bound on the largest element
  // would say little; the L2 distance says whether the updates agree).
  ParamBuffer p{gpu.layout()};
  gpu.get_params(p);
  double diff = 0, moved = 0;
  for (int64_t i = 0; i < p.numel(); ++i) {
    diff += std::pow(static_cast<double>(p.data()[i]) - cpu.params().data()[i], 2);
    moved += std::pow(static_cast<double>(cpu.params().data()[i]) - w.data()[i], 2);
  }
  const double ratio = std::sqrt(diff / moved);
  std::printf("weights after %d steps: |cuda - cpu| = %.4f x |cpu - initial|\n", steps, ratio);
  EXPECT_LE(ratio, kRunnerUpdateTol);
}

// Two identical runs (two steps each, fresh runners) give the same bits: loss, gradients, weights.
TEST_P(CudaModelTest, IdenticalRunsGiveIdenticalBits) {
  STRATA_SKIP_WITHOUT_GPU();
  const models::ModelConfig cfg = config(GetParam());
  const int B = 2, T = 45;
  const ParamBuffer w = bf16_weights(cfg, 5);
  auto run = [&](std::vector<float>* losses, ParamBuffer* params) {
    CudaModel gpu(cfg, B, T);
    gpu.set_params(w);
    for (int s = 0; s < 2; ++s) {
      const auto in = test::random_tokens(size_t(B) * T, cfg.vocab_size, 50 + s);
      const auto tg = test::random_tokens(in.size(), cfg.vocab_size, 60 + s);
      gpu.zero_grad();
      losses->push_back(gpu.forward(in.data(), tg.data()));
      gpu.backward();
      gpu.adamw_step(AdamWConfig{}, s + 1, 1e-3, 1.0f, 9);
    }
    gpu.get_params(*params);
  };
  std::vector<float> l1, l2;
  ParamBuffer p1{ParamLayout(cfg)}, p2{ParamLayout(cfg)};
  run(&l1, &p1);
  run(&l2, &p2);
  EXPECT_EQ(0, std::memcmp(l1.data(), l2.data(), l1.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(p1.data(), p2.data(), size_t(p1.numel()) * sizeof(float)));
}

// The memory plan made before allocating is what the runner then holds, and a configuration larger than the
// device is refused up front with a message that names the need and the remedy.
TEST_P(CudaModelTest, MemoryIsPlannedBeforeAllocating) {
  STRATA_SKIP_WITHOUT_GPU();
  const models::ModelConfig cfg = config(GetParam());
  const CudaMemoryPlan plan = CudaModel::plan_memory(cfg, 2, 37);
  CudaModel gpu(cfg, 2, 37);
  gpu.adamw_step(AdamWConfig{}, 1, 1e-3, 1.0f, 1);  // allocates the moments
  EXPECT_EQ(plan.weights + plan.grads + plan.master + plan.moments, gpu.state_bytes());
  EXPECT_EQ(plan.activations, gpu.activation_bytes());
  // 2^20 sequences of 64 tokens: terabytes of activations, on any device (the emulation's is 80 GiB).
  test::expect_one_line_error([&] { CudaModel huge(cfg, 1 << 20, 64); },
                              {"GPU memory", "micro-batch 1048576 x 64", "GiB", "--batch-size"});
}

TEST_P(CudaModelTest, BadTokensAndHeadDimsAreErrors) {
  STRATA_SKIP_WITHOUT_GPU();
  models::ModelConfig cfg = config(GetParam());
  CudaModel gpu(cfg, 1, 4);
  const int32_t in[4] = {1, 2, 3, 301}, ok[4] = {1, 2, 3, 4}, tg[4] = {1, 2, 302, 4};
  EXPECT_THROW(gpu.forward(in, ok), Error);
  EXPECT_THROW(gpu.forward(ok, tg), Error);
  cfg.d_model = 96;  // head dim 48
  cfg.n_kv_head = cfg.n_head;
  EXPECT_THROW(CudaModel(cfg, 1, 4), Error);
}

INSTANTIATE_TEST_SUITE_P(Families, CudaModelTest,
                         ::testing::Values(models::Family::kLlama, models::Family::kGpt2),
                         [](const auto& p) { return std::string(models::family_name(p.param)); });

}  // namespace
}  // namespace strata
