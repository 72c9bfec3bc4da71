// The CUDA model runner (engine/cuda_model.h) against the CPU runner (engine/model.h), end to end: a small
// LLaMA with grouped-query attention and a small GPT-2 start from the same weights (rounded to bf16, so both
// runners see the same numbers) and are compared on the loss, every parameter gradient, and 10 AdamW steps on
// the same batches; two identical CUDA runs give identical bits, and so do runs with and without activation
// recomputation (which plan less memory). Built twice (tests/CMakeLists.txt): on the
// GPU (label gpu, skips without one) and on the CPU emulation (label cpu-emu), where the kernels' logic runs
// on the host.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
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

// The forward hook (what ZeRO-1's overlapped all-gather waits on) fires once per stage, in order: -1 before
// the embedding, each layer l before its attention norm, L before the final norm and the head, each before the
// first op that reads those weights. Checked by starting from NaN weights and writing each stage's true bf16
// weights only when its hook fires: the forward then computes exactly the loss of the true weights (a read of
// a stage before its hook would see NaN).
TEST_P(CudaModelTest, ForwardHookFiresBeforeEachStageReadsItsWeights) {
  STRATA_SKIP_WITHOUT_GPU();
  const models::ModelConfig cfg = config(GetParam());
  const int B = 2, T = 45;
  CudaModel gpu(cfg, B, T);
  gpu.set_params(bf16_weights(cfg, 5));
  const std::vector<uint16_t> truth = gpu.get_weights_bf16();
  const auto in = test::random_tokens(size_t(B) * T, cfg.vocab_size, 50);
  const auto tg = test::random_tokens(in.size(), cfg.vocab_size, 60);
  const float want = gpu.evaluate(in.data(), tg.data());
  ASSERT_TRUE(std::isfinite(want));

  const ParamLayout& layout = gpu.layout();
  int64_t first_layer = layout.numel();
  for (const ParamEntry& e : layout.entries())
    if (e.spec.per_layer) first_layer = std::min(first_layer, e.offset);
  std::vector<uint16_t> now(truth.size(), 0x7FC0);  // bf16 NaN
  std::vector<int> fired;
  gpu.set_layer_forward_hook([&](int l) {
    fired.push_back(l);
    for (const ParamEntry& e : layout.entries()) {
      const int64_t per = e.spec.numel_per_layer();
      int64_t begin = -1;
      if (e.spec.per_layer && l >= 0 && l < cfg.n_layer) begin = e.offset + l * per;
      if (!e.spec.per_layer && (e.offset < first_layer ? l == -1 : l == cfg.n_layer)) begin = e.offset;
      if (begin >= 0) std::copy_n(truth.begin() + begin, per, now.begin() + begin);
    }
    gpu.set_weights_bf16(now.data());
  });
  for (int pass = 0; pass < 2; ++pass) {  // evaluate, then forward with gradients
    std::fill(now.begin(), now.end(), uint16_t{0x7FC0});
    gpu.set_weights_bf16(now.data());
    fired.clear();
    const float got = pass == 0 ? gpu.evaluate(in.data(), tg.data()) : gpu.forward(in.data(), tg.data());
    EXPECT_EQ(got, want) << (pass == 0 ? "evaluate" : "forward");
    std::vector<int> order;
    for (int l = -1; l <= cfg.n_layer; ++l) order.push_back(l);
    EXPECT_EQ(fired, order);
  }
  EXPECT_EQ(now, truth);  // every stage was written
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
                              {"GPU memory", "micro-batch 1048576 x 64", "GiB", "--batch-size",
                               "--recompute all"});
  // Recomputing everything already, the remedy left is the micro-batch.
  CudaModelOptions all;
  all.recompute = Recompute::kAll;
  try {
    CudaModel huge(cfg, 1 << 20, 64, all);
    ADD_FAILURE() << "a terabyte plan was accepted";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("--batch-size"), std::string::npos) << msg;
    EXPECT_EQ(msg.find("--recompute"), std::string::npos) << msg;
  }
}

// Activation recomputation (engine/recompute.h) is the same computation: for every mode, the losses, the
// accumulated gradients, and the weights (fp32 master and bf16) after a few AdamW steps with clipping are
// bitwise those of no recomputation from the same weights and batches; the arena is what plan_memory says,
// and smaller by what the mode no longer keeps.
TEST_P(CudaModelTest, RecomputationGivesIdenticalBitsInLessMemory) {
  STRATA_SKIP_WITHOUT_GPU();
  const models::ModelConfig cfg = config(GetParam());
  const int B = 2, T = 29, steps = 2, accum = 2;
  const ParamBuffer w = bf16_weights(cfg, 17);
  AdamWConfig ac;
  ac.weight_decay = 0.1;
  struct Run {
    std::vector<float> losses;      // per micro-batch, then an evaluation after the last step
    std::vector<float> grads;       // the first step's accumulated gradients
    std::vector<float> params;      // the fp32 master weights at the end
    std::vector<uint16_t> weights;  // the bf16 weights at the end
    size_t activations = 0;
  };
  auto run = [&](Recompute r) {
    CudaModelOptions opt;
    opt.recompute = r;
    CudaModel gpu(cfg, B, T, opt);
    EXPECT_EQ(CudaModel::plan_memory(cfg, B, T, opt).activations, gpu.activation_bytes())
        << recompute_name(r);
    gpu.set_params(w);
    Run out;
    for (int s = 0; s < steps; ++s) {
      gpu.zero_grad();
      for (int k = 0; k < accum; ++k) {
        const auto in = test::random_tokens(size_t(B) * T, cfg.vocab_size, 70 + 2 * (s * accum + k));
        auto tg = test::random_tokens(in.size(), cfg.vocab_size, 71 + 2 * (s * accum + k));
        tg[5] = kIgnoreIndex;
        out.losses.push_back(gpu.forward(in.data(), tg.data(), 1.0f / accum));
        gpu.backward();
      }
      if (s == 0) {
        ParamBuffer g{gpu.layout()};
        gpu.get_grads(g);
        out.grads.assign(g.data(), g.data() + g.numel());
      }
      gpu.adamw_step(ac, s + 1, 3e-3, clip_scale(gpu.grad_norm(), 1.0), 21);
    }
    const auto in = test::random_tokens(size_t(B) * T, cfg.vocab_size, 99);
    out.losses.push_back(gpu.evaluate(in.data(), in.data()));  // after the last step
    ParamBuffer p{gpu.layout()};
    gpu.get_params(p);
    out.params.assign(p.data(), p.data() + p.numel());
    out.weights = gpu.get_weights_bf16();
    out.activations = gpu.activation_bytes();
    return out;
  };
  const Run base = run(Recompute::kNone);
  // The reference is not vacuous: finite non-zero losses and gradients, and weights that moved.
  for (float l : base.losses) ASSERT_TRUE(std::isfinite(l) && l > 0.0f) << l;
  double gsq = 0, moved = 0;
  for (float g : base.grads) gsq += double(g) * g;
  for (size_t i = 0; i < base.params.size(); ++i) moved += std::abs(double(base.params[i]) - w.data()[i]);
  ASSERT_TRUE(std::isfinite(gsq) && gsq > 0) << gsq;
  ASSERT_GT(moved, 0);

  const bool llama = cfg.family == models::Family::kLlama;
  const size_t N = size_t(B) * T, L = size_t(cfg.n_layer), C = size_t(cfg.d_model), F = size_t(cfg.d_ff);
  const size_t H1 = llama ? 2 * F : F, stats = llama ? 1 : 2;  // the MLP's first product; per-row statistics
  // What each mode no longer keeps, less its one-layer scratch; each array is 256-byte aligned, so the arena
  // may differ from this by up to 256 bytes per array carved.
  const double norm_saved = double(2 * L * N * C * 2) - double(N * C * 2 + stats * N * 4);
  const double mlp_saved = double((L - 1) * N * (H1 + F) * 2);
  std::map<Recompute, size_t> bytes{{Recompute::kNone, base.activations}};
  for (Recompute r : {Recompute::kNorm, Recompute::kMlp, Recompute::kAll}) {
    SCOPED_TRACE(recompute_name(r));
    const Run rc = run(r);
    bytes[r] = rc.activations;
    ASSERT_EQ(rc.losses.size(), base.losses.size());
    EXPECT_EQ(0, std::memcmp(rc.losses.data(), base.losses.data(), base.losses.size() * sizeof(float)));
    ASSERT_EQ(rc.grads.size(), base.grads.size());
    size_t differ = 0;
    for (size_t i = 0; i < base.grads.size(); ++i)
      differ += std::memcmp(&rc.grads[i], &base.grads[i], sizeof(float)) != 0;
    EXPECT_EQ(differ, 0u) << "gradient elements that differ in their bits";
    EXPECT_EQ(0, std::memcmp(rc.params.data(), base.params.data(), base.params.size() * sizeof(float)));
    EXPECT_TRUE(rc.weights == base.weights) << "bf16 weights differ";
    const double saved = double(base.activations) - double(rc.activations);
    const double expected = (recomputes_norm(r) ? norm_saved : 0.0) + (recomputes_mlp(r) ? mlp_saved : 0.0);
    EXPECT_NEAR(saved, expected, 256.0 * 8)
        << "activation bytes " << rc.activations << " vs " << base.activations;
  }
  std::printf("%s activation bytes: none %zu, norm %zu, mlp %zu, all %zu\n", cfg.name.c_str(),
              bytes[Recompute::kNone], bytes[Recompute::kNorm], bytes[Recompute::kMlp],
              bytes[Recompute::kAll]);
  EXPECT_GT(bytes[Recompute::kNone], bytes[Recompute::kNorm]);
  EXPECT_GT(bytes[Recompute::kNone], bytes[Recompute::kMlp]);
  EXPECT_GT(bytes[Recompute::kNorm], bytes[Recompute::kAll]);
  EXPECT_GT(bytes[Recompute::kMlp], bytes[Recompute::kAll]);
}

TEST_P(CudaModelTest, BadTokensAndHeadDimsAreErrors) {
  STRATA_SKIP_WITHOUT_GPU();
  models::ModelConfig cfg = config(GetParam());
  CudaModel gpu(cfg, 1, 4);
  const int32_t in[4] = {1, 2, 3, 301}, ok[4] = {1, 2, 3, 4}, tg[4] = {1, 2, 302, 4};
  EXPECT_THROW(gpu.forward(in, ok), Error);
  EXPECT_THROW(gpu.forward(ok, tg), Error);
  models::ModelConfig odd_ff = cfg;
  cfg.d_model = 96;  // head dim 48
  cfg.n_kv_head = cfg.n_head;
  EXPECT_THROW(CudaModel(cfg, 1, 4), Error);
  // GPT-2's d_ff must be a multiple of 8 (the GELU epilogue's saved pre-activation); LLaMA's need not be.
  odd_ff.d_ff += 4;
  if (odd_ff.family == models::Family::kGpt2)
    EXPECT_THROW(CudaModel(odd_ff, 1, 4), Error);
  else
    EXPECT_NO_THROW(CudaModel(odd_ff, 1, 4));
}

// The plan of a real configuration, GPT-2 124M at a micro-batch of 16 x 1024 (no device needed): each mode
// saves what it no longer keeps, to within the 256-byte alignment of the arrays carved.
TEST(CudaModelPlan, RecomputationShrinksGpt2_124mActivations) {
  STRATA_SKIP_WITHOUT_GPU();  // the plan asks CUB for its sort's scratch size, which needs a device
  const models::ModelConfig cfg = models::preset("gpt2-124m");
  const int B = 16, T = 1024;
  const double N = double(B) * T, L = cfg.n_layer, C = cfg.d_model, F = cfg.d_ff;  // GPT-2: H1 = F
  auto plan = [&](Recompute r) {
    CudaModelOptions opt;
    opt.recompute = r;
    return CudaModel::plan_memory(cfg, B, T, opt);
  };
  const CudaMemoryPlan none = plan(Recompute::kNone);
  std::printf("gpt2-124m B=16 T=1024: model state %.3f GiB; activations", double(none.weights + none.grads +
              none.master + none.moments) / double(1 << 30));
  for (Recompute r : {Recompute::kNone, Recompute::kNorm, Recompute::kMlp, Recompute::kAll}) {
    const CudaMemoryPlan p = plan(r);
    std::printf(" %s %zu (%.3f GiB)", recompute_name(r), p.activations,
                double(p.activations) / double(1 << 30));
    // Recomputation changes the arena only.
    EXPECT_EQ(p.total() - p.activations, none.total() - none.activations);
    const double expected = (recomputes_norm(r) ? 2 * L * N * C * 2 - (N * C * 2 + 2 * N * 4) : 0.0) +
                            (recomputes_mlp(r) ? (L - 1) * N * (F + F) * 2 : 0.0);
    EXPECT_NEAR(double(none.activations) - double(p.activations), expected, 256.0 * 8) << recompute_name(r);
  }
  std::printf("\n");
  EXPECT_GT(plan(Recompute::kNone).activations, plan(Recompute::kNorm).activations);
  EXPECT_GT(plan(Recompute::kNorm).activations, plan(Recompute::kMlp).activations);  // GPT-2's MLP is 8C wide
  EXPECT_GT(plan(Recompute::kMlp).activations, plan(Recompute::kAll).activations);
}

INSTANTIATE_TEST_SUITE_P(Families, CudaModelTest,
                         ::testing::Values(models::Family::kLlama, models::Family::kGpt2),
                         [](const auto& p) { return std::string(models::family_name(p.param)); });

}  // namespace
}  // namespace strata
