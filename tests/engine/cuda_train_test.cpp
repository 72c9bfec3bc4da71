// `strata train --device cuda` (engine/trainer.h over engine/train_backend.h's CUDA backend) against the CPU
// backend, end to end on a small prepared corpus: a small LLaMA (GQA) and a small GPT-2 train 10 steps on
// both backends from the same seed, without and with a G_stack growth at step 5, and their losses agree
// within bf16 precision; growth on the CUDA backend produces exactly the CPU's grown state; a CUDA run
// interrupted and resumed (with another --recompute mode) is bit-identical to an uninterrupted one, as is a
// run that recomputes every activation it can (--recompute all);
// checkpoints move between the backends; G_random's masked phase and G_learn's phase follow the CPU backend
// and resume bit-identically from inside the phase; G_learn on ZeRO-1 shards of the runner gives the host's
// weights and mixing gradient. Built twice (tests/CMakeLists.txt): on the GPU (label
// gpu) and on the CPU emulation (label cpu-emu).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "engine/cuda_backend.h"
#include "engine/cuda_growth.h"
#include "engine/cuda_model.h"
#include "engine/fileio.h"
#include "engine/train_backend.h"
#include "engine/trainer.h"
#include "growth/apply.h"
#include "growth/plan.h"
#include "growth/spec.h"
#include "tests/engine/growth_state_check.h"
#if !defined(STRATA_CUDA_EMU) && defined(STRATA_HAVE_CUDNN_SDPA)
#include "kernels/cuda/cudnn_sdpa.h"
#endif
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/test_util.h"
#include "tests/tolerances.h"

namespace strata {
namespace {
namespace fs = std::filesystem;
using test::kRunnerGradTol;  // tolerances: tests/tolerances.h
using test::kRunnerStepLossTol;

class CudaTrain : public ::testing::TestWithParam<models::Family> {
 protected:
  static void SetUpTestSuite() {
    register_cuda_backend(&make_cuda_backend);
    root_ = fs::temp_directory_path() / ("strata_cuda_train_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
    std::string out;
    ASSERT_TRUE(test::prepare_test_corpus(root_, 320, &out)) << out;
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }

  // A 2-layer model with head dim 64 (the CUDA attention's smallest), 10 steps of 2 micro-batches of 2 x 16.
  static TrainConfig config(models::Family f, const std::string& run, const std::string& device) {
    TrainConfig c;
    c.model = models::preset(f == models::Family::kLlama ? "llama-tiny" : "gpt2-tiny");
    c.model.n_layer = 2;
    c.model.d_model = 128;
    c.model.n_head = 2;
    c.model.n_kv_head = f == models::Family::kLlama ? 1 : 2;
    c.model.d_ff = f == models::Family::kLlama ? 176 : 512;
    c.model.vocab_size = 320;
    c.model.max_seq_len = 32;
    c.data_dir = (root_ / "data").string();
    c.batch_size = 2;
    c.seq_len = 16;
    c.global_batch_tokens = 64;
    c.steps = 10;
    c.schedule.max_lr = 3e-3;
    c.schedule.warmup_steps = 2;
    c.eval_every = 0;
    c.eval_batches = 1;
    c.sample_tokens = 0;
    c.threads = 1;
    c.keep_last = 0;
    c.out_dir = (root_ / run).string();
    c.device = device;
    return c;
  }
  static int train(TrainConfig c, const std::string& resume = "") {
    c.finalize();
    return run_training(c, resume, resume.empty());
  }
  // A run folder holding only `from`'s checkpoint of `step` and its metrics, to resume elsewhere.
  static std::string fork_run(const std::string& from, long step, const std::string& to) {
    char dir[32];
    std::snprintf(dir, sizeof dir, "ckpt-%08ld", step);
    fs::create_directories(root_ / to);
    fs::copy(root_ / from / dir, root_ / to / dir, fs::copy_options::recursive);
    fs::copy_file(root_ / from / "metrics.jsonl", root_ / to / "metrics.jsonl");
    return (root_ / to / dir).string();
  }
  // The step rows of a run's metrics.jsonl without wall-clock fields.
  static std::vector<nlohmann::json> steps(const std::string& run) {
    std::vector<nlohmann::json> rows;
    std::istringstream in(read_file((root_ / run / "metrics.jsonl").string()));
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line);
      if (j["type"] != "step") continue;
      j.erase("tokens_per_s");
      j.erase("mfu");
      rows.push_back(j);
    }
    return rows;
  }
  // The eval rows of a run's metrics.jsonl.
  static std::vector<nlohmann::json> evals(const std::string& run) {
    std::vector<nlohmann::json> rows;
    std::istringstream in(read_file((root_ / run / "metrics.jsonl").string()));
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line);
      if (j["type"] == "eval") rows.push_back(j);
    }
    return rows;
  }
  static std::string file(const std::string& run, long step, const std::string& name) {
    char dir[32];
    std::snprintf(dir, sizeof dir, "ckpt-%08ld", step);
    return read_file((root_ / run / dir / name).string());
  }
  static std::string family(models::Family f) { return models::family_name(f); }
  static fs::path root_;
};
fs::path CudaTrain::root_;

void expect_losses_close(const std::vector<nlohmann::json>& cuda, const std::vector<nlohmann::json>& cpu) {
  ASSERT_EQ(cuda.size(), cpu.size());
  for (size_t i = 0; i < cpu.size(); ++i) {
    const double a = cuda[i]["loss"].get<double>(), b = cpu[i]["loss"].get<double>();
    std::printf("step %zu loss cpu %.5f cuda %.5f\n", i + 1, b, a);
    EXPECT_NEAR(a, b, kRunnerStepLossTol * b) << "step " << i + 1;
  }
}

TEST_P(CudaTrain, TrainsLikeTheCpuBackendWithAndWithoutGrowth) {
  STRATA_SKIP_WITHOUT_GPU();
  const std::string f = family(GetParam());
  for (const std::string grow : {"", "at=5 steps,op=stack,g=2"}) {
    SCOPED_TRACE(grow.empty() ? "no growth" : grow);
    const std::string tag = f + (grow.empty() ? "_plain" : "_grown");
    TrainConfig cpu = config(GetParam(), tag + "_cpu", "cpu"),
                cuda = config(GetParam(), tag + "_cuda", "cuda");
    if (!grow.empty()) {
      cpu.grow.push_back(growth::parse_stage(grow));
      cuda.grow.push_back(growth::parse_stage(grow));
    }
    ASSERT_EQ(train(cpu), 0);
    ASSERT_EQ(train(cuda), 0);
    expect_losses_close(steps(tag + "_cuda"), steps(tag + "_cpu"));
    const auto last = steps(tag + "_cuda");
    EXPECT_LT(last.back()["loss"].get<double>(), last.front()["loss"].get<double>() - 0.3)
        << "loss did not fall";
  }
}

// --attention cudnn (cuDNN's fused SDPA engines, kernels/cuda/cudnn_sdpa.h): trains like the CPU backend with
// and without a G_stack growth (the attention re-planned for the grown model), deterministically (cuDNN's
// deterministic backward: two runs, the same step rows), and a checkpoint of it resumes with Strata's kernels
// within bf16 precision. Where the build has no cuDNN attention (the emulation) it is one clear error.
TEST_P(CudaTrain, CudnnAttentionTrainsLikeTheCpuBackend) {
  STRATA_SKIP_WITHOUT_GPU();
  const std::string f = family(GetParam());
#if defined(STRATA_CUDA_EMU) || !defined(STRATA_HAVE_CUDNN_SDPA)
  TrainConfig c = config(GetParam(), f + "_cudnn_refused", "cuda");
  c.attention = "cudnn";
  test::expect_one_line_error([&] { train(c); }, {"attention through cuDNN", "not in this build"});
#else
  if (!cuda::cudnn::library().ok) GTEST_SKIP() << "cuDNN unavailable: " << cuda::cudnn::library().error;
  for (const std::string grow : {"", "at=5 steps,op=stack,g=2"}) {
    SCOPED_TRACE(grow.empty() ? "no growth" : grow);
    const std::string tag = f + (grow.empty() ? "_cudnn_plain" : "_cudnn_grown");
    TrainConfig cpu = config(GetParam(), tag + "_cpu", "cpu"), a = config(GetParam(), tag + "_a", "cuda");
    if (!grow.empty()) {
      cpu.grow.push_back(growth::parse_stage(grow));
      a.grow.push_back(growth::parse_stage(grow));
    }
    a.attention = "cudnn";
    a.ckpt_every = 4;
    TrainConfig b = a;
    b.out_dir = (root_ / (tag + "_b")).string();
    ASSERT_EQ(train(cpu), 0);
    ASSERT_EQ(train(a), 0);
    ASSERT_EQ(train(b), 0);
    expect_losses_close(steps(tag + "_a"), steps(tag + "_cpu"));
    EXPECT_EQ(steps(tag + "_a"), steps(tag + "_b")) << "two --attention cudnn runs differ";
    // Resumed at step 4 with Strata's flash kernels: within bf16 precision of the cuDNN run it left.
    TrainConfig flash = a;
    flash.attention = "flash";
    flash.out_dir = (root_ / (tag + "_flash")).string();
    ASSERT_EQ(train(flash, fork_run(tag + "_a", 4, tag + "_flash")), 0);
    expect_losses_close(steps(tag + "_flash"), steps(tag + "_a"));
  }
#endif
}

// Growth on the CUDA backend, on the device (engine/cuda_model.h, CudaModel::grown): layer copies (G_stack,
// interpolation, G_zero) and the plans whose rules run as kernels with host-drawn randoms: G_random's
// init-filled layers, noise, widening by splitting neurons (G_direct: the row and column maps with their
// factors), by zeros and by random new parts. From the same state the grown state is the CPU backend's, bit
// for bit (fp32 weights, moments mapped or reset, t); the bf16 weights of a layer copied unchanged are its
// source layer's (so the grown model computes what the stacked original would), all others the grown master
// weights rounded to nearest. The grown model then trains a step on the device.
TEST_P(CudaTrain, GrowthProducesTheCpuBackendsState) {
  STRATA_SKIP_WITHOUT_GPU();
  const TrainConfig c = config(GetParam(), "unused", "cuda");
  const bool llama = GetParam() == models::Family::kLlama;
  for (const std::string spec :
       {"at=1 steps,op=stack,g=2,optimizer=map", "at=1 steps,op=interpolate,g=2", "at=1 steps,op=zero,g=2",
        "at=1 steps,op=random,g=2", "at=1 steps,op=stack,g=2,noise=0.25,optimizer=map",
        llama ? "at=1 steps,op=direct,d_ff=352" : "at=1 steps,op=direct,d_ff=1024",
        llama ? "at=1 steps,op=direct,d_model=256,n_kv_head=2,optimizer=map"
              : "at=1 steps,op=direct,d_model=256,optimizer=map",
        llama ? "at=1 steps,op=zero,d_model=256,d_ff=256,optimizer=map"
              : "at=1 steps,op=zero,d_model=192,optimizer=map",
        "at=1 steps,op=random,d_model=256,noise=0.1"}) {
    SCOPED_TRACE(spec);
    const growth::GrowthPlan plan = growth::make_plan(c.model, growth::parse_stage(spec));
    auto cpu = make_cpu_backend(c.model, 2, 16, c.adamw);
    auto cuda = make_cuda_backend(c.model, 2, 16, c.adamw, 7);
    test::seed_growth_state(*cpu, *cuda);
    const std::vector<uint16_t> old_bits = test::bf16_weight_bits(*cuda);
    cpu->grow(plan, 99);
    cuda->grow(plan, 99);
    test::expect_same_grown_state(*cuda, *cpu, plan.to.n_layer);
    test::expect_grown_bf16_weights(plan, old_bits, test::bf16_weight_bits(*cuda), cpu->host_params().data());
    // And the grown model trains on the device.
    const auto in = test::random_tokens(32, c.model.vocab_size, 1),
               tg = test::random_tokens(32, c.model.vocab_size, 2);
    cuda->zero_grad();
    EXPECT_TRUE(std::isfinite(cuda->train_micro_batch(in.data(), tg.data(), 1.0f)));
    const long t = cuda->optimizer_t();
    cuda->adamw_step(1e-3, 1.0f);
    EXPECT_EQ(cuda->optimizer_t(), t + 1);
  }
}

// A width G_learn stage for config(): every axis grows (LLaMA keeps its query group of 2, GPT-2 its heads =
// K/V heads).
std::string learn_width_spec(models::Family f) {
  return f == models::Family::kLlama ? "at=5 steps,op=learn,d_model=256,n_kv_head=2,d_ff=352,learn_steps=3"
                                     : "at=5 steps,op=learn,d_model=256,d_ff=768,learn_steps=3";
}

// The growth's memory plan (cuda_growth_peak_bytes, what the backend checks at startup) against what the
// emulation's allocator counts: the most bytes held at once while the backend grows by the plan, installs the
// growth phase (G_random's mask, G_learn's mixing state) and trains a step of the grown model. The plan
// counts cuBLASLt's workspace, which the emulation does not allocate; beyond that it may only over-estimate,
// by at most 1%.
TEST_P(CudaTrain, GrowthPeakMemoryIsPlanned) {
#if !defined(STRATA_CUDA_EMU)
  GTEST_SKIP() << "counts allocations through the CPU emulation's allocator";
#else
  const TrainConfig c = config(GetParam(), "unused", "cuda");
  for (const std::string spec :
       {"at=1 steps,op=stack,g=3,optimizer=map", "at=1 steps,op=stack,g=2",
        "at=1 steps,op=direct,d_model=256,optimizer=map", "at=1 steps,op=random,g=2,noise=0.1",
        "at=1 steps,op=learn,g=2", "at=1 steps,op=random,d_ff=1024", "at=1 steps,op=learn,d_ff=1024"}) {
    SCOPED_TRACE(spec);
    const growth::GrowthPlan plan = growth::make_plan(c.model, growth::parse_stage(spec));
    const size_t planned = cuda_growth_peak_bytes(plan, 2, 16, CudaModelOptions{}) -
                           CudaModel::plan_memory(plan.to, 2, 16).library;
    const size_t before = emu::allocated_bytes();
    {
      auto cpu = make_cpu_backend(c.model, 2, 16, c.adamw);
      auto cuda = make_cuda_backend(c.model, 2, 16, c.adamw, 7);
      test::seed_growth_state(*cpu, *cuda);  // a step: the moments exist, as at a growth point
      std::unique_ptr<growth::LearnedGrowth> ld;
      if (plan.stage.op == growth::Op::kLearn) {
        cuda->download_to_host();
        ld = growth::make_learned_growth(plan, cuda->host_params(), 0.9, 0.95, 1e-8, 3);
      }
      emu::reset_peak_allocated();
      cuda->grow(plan, 99);
      if (ld) {
        cuda->begin_learned_growth(*ld);
        cuda->materialise_learned_growth(*ld);
      }
      if (plan.stage.op == growth::Op::kRandom)
        cuda->set_growth_mask(growth::GrowthMask(plan.masks, 1, plan.stage.mask_steps));
      const auto in = test::random_tokens(32, c.model.vocab_size, 1),
                 tg = test::random_tokens(32, c.model.vocab_size, 2);
      cuda->zero_grad();
      cuda->train_micro_batch(in.data(), tg.data(), 1.0f);
      if (ld) cuda->learned_growth_step(*ld, 1e-3);
      cuda->adamw_step(1e-3, 1.0f);
    }
    const size_t measured = emu::peak_allocated_bytes() - before;
    std::printf("%s: planned %zu bytes, measured peak %zu\n", spec.c_str(), planned, measured);
    EXPECT_LE(measured, planned);
    EXPECT_GE(double(measured), 0.99 * double(planned));
  }
#endif
}

// A growth that will not fit the device is refused at startup, before anything is written, with one line
// naming the stage, the need and the remedies (the emulated device sized between the start's and the
// growth's needs).
TEST_P(CudaTrain, GrowthThatWillNotFitIsRefusedAtStartup) {
#if !defined(STRATA_CUDA_EMU)
  GTEST_SKIP() << "sizes the CPU emulation's device (STRATA_EMU_DEVICE_BYTES)";
#else
  TrainConfig c = config(GetParam(), family(GetParam()) + "_nofit", "cuda");
  const std::string spec = "at=5 steps,op=stack,g=4";
  c.grow.push_back(growth::parse_stage(spec));
  const growth::GrowthPlan plan = growth::make_plan(c.model, growth::parse_stage(spec));
  const size_t start = CudaModel::plan_memory(c.model, c.batch_size, c.seq_len).total();
  const size_t peak = cuda_growth_peak_bytes(plan, c.batch_size, c.seq_len, CudaModelOptions{});
  ASSERT_GT(peak, start);
  const size_t device = (size_t{256} << 20) + (start + peak) / 2;  // the margin is 256 MiB at this size
  ::setenv("STRATA_EMU_DEVICE_BYTES", std::to_string(device).c_str(), 1);
  test::expect_one_line_error([&] { train(c); }, {"--grow 'at=5 steps,op=stack,g=4'", "GPU memory", "GiB",
                                                  "8 layers", "--batch-size", "--recompute all"});
  ::unsetenv("STRATA_EMU_DEVICE_BYTES");
  EXPECT_FALSE(fs::exists(root_ / (family(GetParam()) + "_nofit"))) << "the refused run wrote its folder";
#endif
}

// A growth stage to a configuration the CUDA ops cannot run (GPT-2's d_ff must be a multiple of 8: the GELU
// epilogue's saved pre-activation) is refused at startup, not at its growth step: one line naming the stage,
// and no run folder. LLaMA has no such constraint (SwiGLU is a kernel of its own): the same widening passes
// the check.
TEST_P(CudaTrain, GrowthTheCudaOpsCannotRunIsRefusedAtStartup) {
  STRATA_SKIP_WITHOUT_GPU();
  const std::string f = family(GetParam());
  TrainConfig c = config(GetParam(), f + "_unsupported", "cuda");
  const std::string spec = "at=5 steps,op=direct,d_ff=" + std::to_string(c.model.d_ff + 4);
  c.grow.push_back(growth::parse_stage(spec));
  const growth::GrowthPlan plan = growth::make_plan(c.model, growth::parse_stage(spec));
  if (GetParam() == models::Family::kLlama) {
    EXPECT_NO_THROW(CudaModel::require_supported(plan.to, "--grow"));
    return;
  }
  test::expect_one_line_error([&] { train(c); }, {"--grow '" + spec + "'", "d_ff", "multiple of 8",
                                                  std::to_string(c.model.d_ff + 4)});
  EXPECT_FALSE(fs::exists(root_ / (f + "_unsupported"))) << "the refused run wrote its folder";
}

// Resume and determinism on the CUDA backend: an uninterrupted run, the same run again, and one stopped at
// step 4 (a checkpoint) and resumed give identical step rows and identical final checkpoints (fp32 master
// weights, moments and the bf16 weights). Checkpoints cross backends: the CUDA checkpoint of step 4 resumes
// on the CPU and a CPU checkpoint resumes on CUDA, and both continue within bf16 precision of the runs they
// left.
TEST_P(CudaTrain, ResumeIsBitIdenticalAndCheckpointsCrossBackends) {
  STRATA_SKIP_WITHOUT_GPU();
  const std::string f = family(GetParam());
  TrainConfig full = config(GetParam(), f + "_full", "cuda"),
              again = config(GetParam(), f + "_again", "cuda");
  full.ckpt_every = 4;
  again.ckpt_every = 4;
  again.recompute = "all";  // activation recomputation computes the same bits (engine/recompute.h)
  ASSERT_EQ(train(full), 0);
  ASSERT_EQ(train(again), 0);
  EXPECT_EQ(steps(f + "_full"), steps(f + "_again")) << "a run with --recompute all differs from one without";
  for (const char* name : {"model.safetensors", "optimizer.safetensors", "weights_bf16.safetensors"})
    EXPECT_TRUE(file(f + "_full", 10, name) == file(f + "_again", 10, name)) << name << ", --recompute all";
  // Interrupted with one recomputation mode and resumed with another.
  TrainConfig cut = config(GetParam(), f + "_cut", "cuda");
  cut.ckpt_every = 4;
  cut.stop_at = 4;
  cut.recompute = "mlp";
  ASSERT_EQ(train(cut), 0);
  cut.stop_at = 0;
  cut.recompute = "norm";
  ASSERT_EQ(train(cut, resolve_checkpoint((root_ / (f + "_cut")).string())), 0);
  EXPECT_EQ(steps(f + "_full"), steps(f + "_cut")) << "resumed CUDA run differs";
  for (const char* name : {"model.safetensors", "optimizer.safetensors", "weights_bf16.safetensors"})
    EXPECT_TRUE(file(f + "_full", 10, name) == file(f + "_cut", 10, name)) << name;

  // CUDA -> CPU: resume the CUDA run's step-4 checkpoint on the CPU.
  const std::string cuda_ckpt = fork_run(f + "_full", 4, f + "_to_cpu");
  ASSERT_EQ(train(config(GetParam(), f + "_to_cpu", "cpu"), cuda_ckpt), 0);
  expect_losses_close(steps(f + "_to_cpu"), steps(f + "_full"));
  // CPU -> CUDA: a CPU run's step-4 checkpoint resumed on CUDA follows the CPU run.
  TrainConfig cpu = config(GetParam(), f + "_cpu4", "cpu");
  cpu.ckpt_every = 4;
  ASSERT_EQ(train(cpu), 0);
  const std::string cpu_ckpt = fork_run(f + "_cpu4", 4, f + "_to_cuda");
  ASSERT_EQ(train(config(GetParam(), f + "_to_cuda", "cuda"), cpu_ckpt), 0);
  expect_losses_close(steps(f + "_to_cuda"), steps(f + "_cpu4"));
}

// --op-times 3:5 (kernels/cuda/op_timer.h): one metrics row after step 5 with the GPU time of every op over
// steps 3-5, per step. Invariants: the ops a step must run, each as often as the step runs it (2
// micro-batches of a 2-layer model: 4 attention forwards and backwards, 2 classifier calls, one AdamW and one
// grad norm; the evaluation after step 4, which runs the forward and the classifier again, is outside the
// timed steps); times non-negative and their sum within the steps' wall time; and the run's losses those of
// an untimed run.
TEST_P(CudaTrain, OpTimesCountEveryOpOfTheTimedSteps) {
  STRATA_SKIP_WITHOUT_GPU();
  const std::string f = family(GetParam());
  TrainConfig timed = config(GetParam(), f + "_optimes", "cuda"),
              plain = config(GetParam(), f + "_untimed", "cuda");
  timed.eval_every = plain.eval_every = 2;
  timed.op_times = "3:5";
  ASSERT_EQ(train(timed), 0);
  ASSERT_EQ(train(plain), 0);
  EXPECT_EQ(steps(f + "_optimes"), steps(f + "_untimed")) << "timing the ops changed the run";
  std::vector<nlohmann::json> reports;
  std::istringstream in(read_file((root_ / (f + "_optimes") / "metrics.jsonl").string()));
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j["type"] == "op_times") reports.push_back(j);
  }
  ASSERT_EQ(reports.size(), 1u);
  const nlohmann::json& r = reports[0];
  EXPECT_EQ(r["first_step"], 3);
  EXPECT_EQ(r["last_step"], 5);
  std::map<std::string, double> calls;
  double sum_ms = 0.0;
  for (const auto& op : r["ops"]) {
    calls[op["op"].get<std::string>()] = op["calls_per_step"].get<double>();
    EXPECT_GE(op["ms_per_step"].get<double>(), 0.0) << op["op"];
    sum_ms += op["ms_per_step"].get<double>();
  }
  EXPECT_NEAR(sum_ms, r["ops_ms_per_step"].get<double>(), 1e-9 + 1e-9 * sum_ms);
  EXPECT_GT(sum_ms, 0.0);
  EXPECT_LE(sum_ms, r["step_ms"].get<double>()) << "the ops took longer than the steps";
  // Per micro-batch: 4 products per layer forward (LLaMA's gate and up as one) and the LM head's, the same
  // backward (GPT-2's MLP: its GELU forward and derivative in the products' epilogues).
  const bool llama = GetParam() == models::Family::kLlama;
  const double fwd = llama ? 2 * (2 * 4 + 1) : 2 * (2 * 3 + 1), fwd_gelu = llama ? 0 : 2 * 2;
  const std::map<std::string, double> expected = {{"embedding fwd", 2},
                                                  {"embedding bwd", 2},
                                                  {"flash attention fwd", 4},
                                                  {"flash attention bwd", 4},
                                                  {"classifier", 2},
                                                  {"adamw", 1},
                                                  {"grad norm", 1},
                                                  {"matmul fwd", fwd},
                                                  {"matmul gelu fwd", fwd_gelu},
                                                  {"matmul bwd", fwd},
                                                  {"matmul bwd dgelu", fwd_gelu}};
  for (const auto& [op, n] : expected) {
    if (n == 0) {
      EXPECT_FALSE(calls.count(op)) << op;
      continue;
    }
    ASSERT_TRUE(calls.count(op)) << op << " was not timed";
    EXPECT_EQ(calls[op], n) << op << " calls per step";
  }
}

// The growth phases that change how a step trains run on the CUDA backend (engine/cuda_growth.h): G_random's
// masked phase (mask_steps 3: steps 6-8 scaled, and the evaluation at step 6 too) and G_learn's phase
// (learn_steps 3: steps 6-8 train only the mixing matrices in depth, or the expansion matrices in width (on
// the host), then plain training) follow the CPU backend's losses, train and validation, within bf16
// precision from the same initial weights.
TEST_P(CudaTrain, MaskedAndLearnedGrowthTrainLikeTheCpuBackend) {
  STRATA_SKIP_WITHOUT_GPU();
  const std::string f = family(GetParam());
  for (const auto& [grow, suffix] :
       {std::pair<std::string, std::string>{"at=5 steps,op=random,g=2,mask_steps=3", "_random"},
        {"at=5 steps,op=learn,g=2,learn_steps=3", "_learn"},
        {learn_width_spec(GetParam()), "_learn_width"}}) {
    SCOPED_TRACE(grow);
    const std::string tag = f + suffix;
    TrainConfig cpu = config(GetParam(), tag + "_cpu", "cpu"),
                cuda = config(GetParam(), tag + "_cuda", "cuda");
    for (TrainConfig* c : {&cpu, &cuda}) {
      c->grow.push_back(growth::parse_stage(grow));
      c->eval_every = 3;
    }
    ASSERT_EQ(train(cpu), 0);
    ASSERT_EQ(train(cuda), 0);
    expect_losses_close(steps(tag + "_cuda"), steps(tag + "_cpu"));
    const auto a = evals(tag + "_cuda"), b = evals(tag + "_cpu");
    ASSERT_EQ(a.size(), b.size());
    ASSERT_GE(a.size(), 3u);
    for (size_t i = 0; i < a.size(); ++i) {
      const double x = a[i]["val_loss"].get<double>(), y = b[i]["val_loss"].get<double>();
      std::printf("eval step %ld val loss cpu %.5f cuda %.5f\n", b[i]["step"].get<long>(), y, x);
      EXPECT_NEAR(x, y, kRunnerStepLossTol * y) << "eval at step " << b[i]["step"];
    }
  }
}

// One step of each growth phase from the same grown, bf16-representable state on both backends (the premise
// of the runner tolerances), after fitting the batch a little so the loss responds to the function:
// G_random's masked loss (c = 1/4) agrees to a tenth of what the mask changes, its gradient norm within the
// runners' gradient tolerance, and the raw bf16 weights are back afterwards; G_learn's materialised weights
// bit for bit (before and after the mixing matrices move), and its mixing gradients, recovered from one Adam
// step with betas 0 and eps 1 (D moves by -lr g / (|g| + 1)), within kRunnerMixGradTol.
TEST_P(CudaTrain, GrowthPhaseStepsMatchTheCpuBackend) {
  STRATA_SKIP_WITHOUT_GPU();
  const TrainConfig c = config(GetParam(), "unused", "cuda");
  const auto in = test::random_tokens(32, c.model.vocab_size, 1),
             tg = test::random_tokens(32, c.model.vocab_size, 2);
  auto cpu = make_cpu_backend(c.model, 2, 16, c.adamw);
  auto cuda = make_cuda_backend(c.model, 2, 16, c.adamw, 7);
  // The CPU's weights, rounded to bf16, on both backends.
  auto same_weights = [&] {
    ParamBuffer& p = cpu->host_params();
    for (int64_t i = 0; i < p.numel(); ++i)
      p.data()[i] = test::bf16_to_float(test::float_to_bf16(p.data()[i]));
    cuda->download_to_host();
    std::memcpy(cuda->host_params().data(), p.data(), size_t(p.numel()) * sizeof(float));
    cuda->upload_from_host();
  };
  init_params(cpu->host_params(), 3);
  // Fitted to the batch first (6 CPU steps), so the loss is far from uniform and responds to what the growth
  // phases do to the function.
  for (int s = 0; s < 6; ++s) {
    cpu->zero_grad();
    cpu->train_micro_batch(in.data(), tg.data(), 1.0f);
    cpu->adamw_step(1e-2, 1.0f);
  }
  same_weights();

  {
    SCOPED_TRACE("G_random");
    const growth::GrowthPlan plan =
        growth::make_plan(c.model, growth::parse_stage("at=1 steps,op=random,g=2,mask_steps=4"));
    cpu->grow(plan, 99);
    cuda->grow(plan, 99);
    // The new layers' masked outputs (whole layer slices of their tensors) scaled up, so that the mask moves
    // the loss well beyond the tolerance; then bf16-representable (the init draws are fp32).
    for (const growth::MaskSlice& m : plan.masks) {
      const ParamEntry* e = cpu->host_params().layout().find(m.name);
      ASSERT_TRUE(e != nullptr && m.layer >= 0 && m.row_begin == 0 && m.row_end == e->spec.shape[0])
          << m.name;
      float* w = cpu->host_params().tensor(m.name) + m.layer * e->spec.numel_per_layer();
      for (int64_t i = 0; i < e->spec.numel_per_layer(); ++i) w[i] *= 30.0f;
    }
    same_weights();
    const growth::GrowthMask mask(plan.masks, 0, 4);
    float plain[2], masked[2], after[2];
    double norm[2];
    int64_t valid = 0;
    for (int b = 0; b < 2; ++b) {
      TrainBackend& be = b == 0 ? *cpu : *cuda;
      be.set_growth_mask(mask);
      plain[b] = be.evaluate(in.data(), tg.data(), &valid);
      be.zero_grad();
      be.mask_begin(1);  // c = 1/4
      masked[b] = be.train_micro_batch(in.data(), tg.data(), 1.0f);
      be.mask_end(true);
      norm[b] = be.grad_norm();
      after[b] = be.evaluate(in.data(), tg.data(), &valid);
    }
    std::printf("G_random: masked loss cpu %.6f cuda %.6f (unmasked %.6f), grad norm cpu %.6f cuda %.6f\n",
                masked[0], masked[1], plain[0], norm[0], norm[1]);
    // The backends agree on the masked loss to a tenth of what the mask changes (a mask left out on one of
    // them is off by all of it). Measured on the emulation: 2e-4 (LLaMA) and 0.05 (GPT-2, whose loss the mask
    // moves by 1.3%) of the mask's effect; as a fraction of the loss 9e-4 and 6e-4, within a training step's
    // tolerance.
    EXPECT_LT(std::abs(masked[1] - masked[0]), 0.1 * std::abs(plain[0] - masked[0]));
    EXPECT_NEAR(masked[1], masked[0], kRunnerStepLossTol * masked[0]);
    EXPECT_NEAR(norm[1], norm[0], kRunnerGradTol * norm[0]);
    EXPECT_EQ(after[1], plain[1]) << "mask_end did not restore the bf16 weights";
    EXPECT_EQ(after[0], plain[0]) << "mask_end did not restore the CPU weights";
  }

  {
    SCOPED_TRACE("G_learn");
    const growth::GrowthPlan plan =
        growth::make_plan(cpu->config(), growth::parse_stage("at=1 steps,op=learn,g=2,learn_steps=2"));
    cuda->download_to_host();
    growth::LearnedDepth ld_cpu(plan, cpu->host_params(), 0.0, 0.0, 1.0),
        ld_cuda(plan, cuda->host_params(), 0.0, 0.0, 1.0);
    cpu->grow(plan, 99);
    cuda->grow(plan, 99);
    cpu->begin_learned_growth(ld_cpu);
    cuda->begin_learned_growth(ld_cuda);
    auto expect_same_weights = [&](const char* when) {
      cuda->download_to_host();
      const ParamBuffer &a = cpu->host_params(), &b = cuda->host_params();
      ASSERT_EQ(a.numel(), b.numel());
      EXPECT_EQ(0, std::memcmp(a.data(), b.data(), size_t(a.numel()) * sizeof(float))) << when;
    };
    cpu->materialise_learned_growth(ld_cpu);
    cuda->materialise_learned_growth(ld_cuda);
    expect_same_weights("materialised at G_stack");
    for (int b = 0; b < 2; ++b) {
      TrainBackend& be = b == 0 ? *cpu : *cuda;
      be.zero_grad();
      be.train_micro_batch(in.data(), tg.data(), 1.0f);
      be.learned_growth_step(b == 0 ? ld_cpu : ld_cuda, 1.0);
    }
    for (int k = 0; k < ld_cpu.kind_count(); ++k) {
      // D started at the layer map's 0/1 entries; g = -delta / (1 - |delta|).
      auto grads = [&](const growth::LearnedDepth& ld) {
        std::vector<double> g;
        for (int l = 0; l < ld.to_layers(); ++l)
          for (int j = 0; j < ld.from_layers(); ++j) {
            const double d0 = plan.layer_map[size_t(l)] == j ? 1.0 : 0.0;
            const double delta = ld.mixing(k)[size_t(l * ld.from_layers() + j)] - d0;
            g.push_back(-delta / (1.0 - std::abs(delta)));
          }
        return g;
      };
      const std::vector<double> a = grads(ld_cuda), b = grads(ld_cpu);
      if (std::all_of(b.begin(), b.end(), [](double x) { return x == 0.0; })) {
        // A kind whose small-model weights are all zero (GPT-2's biases at init): every <g, 0> is 0 exactly.
        EXPECT_EQ(a, b) << ld_cpu.kind_name(k);
        continue;
      }
      const test::Comparison cmp = test::compare(a, b);
      std::printf("G_learn dD %s: max |cuda - cpu| / max |cpu| = %.3g\n", ld_cpu.kind_name(k).c_str(),
                  cmp.rel());
      EXPECT_LE(cmp.rel(), test::kRunnerMixGradTol) << ld_cpu.kind_name(k);
    }
    // Both backends mix the same (now dense) D into the same weights.
    cpu->materialise_learned_growth(ld_cpu);
    cuda->materialise_learned_growth(ld_cpu);
    expect_same_weights("materialised from a dense D");
    cpu->end_learned_growth();
    cuda->end_learned_growth();
  }
}

// A CUDA run stopped inside a growth phase (after step 7: G_learn's checkpoint, depth or width, carries
// growth.safetensors; G_random's raw weights) and resumed is bit-identical to the uninterrupted run: step
// rows and final checkpoint files.
TEST_P(CudaTrain, ResumeInsideAGrowthPhaseIsBitIdentical) {
  STRATA_SKIP_WITHOUT_GPU();
  const std::string f = family(GetParam());
  for (const auto& [grow, suffix] :
       {std::pair<std::string, std::string>{"at=5 steps,op=learn,g=2,learn_steps=3", "_learn"},
        {"at=5 steps,op=random,g=2,mask_steps=3", "_random"},
        {learn_width_spec(GetParam()), "_learn_width"}}) {
    SCOPED_TRACE(grow);
    const bool learn = grow.find("learn") != std::string::npos;
    const std::string tag = f + suffix;
    TrainConfig full = config(GetParam(), tag + "_full", "cuda"),
                cut = config(GetParam(), tag + "_cut", "cuda");
    full.grow.push_back(growth::parse_stage(grow));
    cut.grow.push_back(growth::parse_stage(grow));
    ASSERT_EQ(train(full), 0);
    cut.stop_at = 7;
    ASSERT_EQ(train(cut), 0);
    EXPECT_EQ(fs::exists(root_ / (tag + "_cut") / "ckpt-00000007" / "growth.safetensors"), learn)
        << "the mid-phase checkpoint's G_learn state";
    cut.stop_at = 0;
    ASSERT_EQ(train(cut, resolve_checkpoint((root_ / (tag + "_cut")).string())), 0);
    EXPECT_EQ(steps(tag + "_full"), steps(tag + "_cut")) << "resumed CUDA run differs";
    for (const char* name : {"model.safetensors", "optimizer.safetensors", "weights_bf16.safetensors"})
      EXPECT_TRUE(file(tag + "_full", 10, name) == file(tag + "_cut", 10, name)) << name;
  }
}

// G_learn on ZeRO-1 shards of the grown runner (engine/cuda_growth.h), every rank of 2 and 3 built in this
// process (no collectives: the test plays the reduction), against the host's LearnedDepth and the whole
// runner: from a dense D, materialise() writes every bf16 weight of every rank as the host's W' = D W rounded
// to nearest (the whole runner's bits), and each rank's fp32 master weights of its pieces exactly as the
// host's (the ranks' pieces together give the host's buffer bit for bit); dots() from each rank's compact
// reduced-gradient pieces, added in rank order, give the host's double mixing gradient within fp32 summation.
// Under 3 ranks the segments have tails (a second run per kind on the last rank), and GPT-2's 12 kinds then
// need two kernel calls for materialise (more than kDepthMixMaxKinds entries).
TEST_P(CudaTrain, LearnedDepthOnZero1ShardsMatchesTheHostAndTheWholeRunner) {
  STRATA_SKIP_WITHOUT_GPU();
  const TrainConfig c = config(GetParam(), "unused", "cuda");
  const growth::GrowthPlan plan =
      growth::make_plan(c.model, growth::parse_stage("at=1 steps,op=learn,g=2,learn_steps=2"));
  ParamBuffer small{ParamLayout(plan.from)};
  const std::vector<float> w = test::random_bf16_values(size_t(small.numel()), 3);
  for (int64_t i = 0; i < small.numel(); ++i) small.data()[i] = w[size_t(i)] * 0.5f + 1e-4f * float(i % 7);
  growth::LearnedDepth ld(plan, small, 0.0, 0.0, 1.0);
  const int L = ld.from_layers(), L2 = ld.to_layers(), K = ld.kind_count();
  const size_t pairs = size_t(L2) * size_t(L);
  {  // a dense D: one Adam step with betas 0 and eps 1 from random mixing gradients moves every entry
    std::vector<double> g(size_t(K) * pairs);
    std::mt19937_64 rng(5);
    std::uniform_real_distribution<double> uni(-1.0, 1.0);
    for (double& x : g) x = uni(rng);
    ld.step_from_dots(g, 0.3);
  }
  const ParamLayout layout(plan.to);
  ParamBuffer start(layout), ref(layout);
  init_params(start, 4);  // the global tensors keep these
  std::memcpy(ref.data(), start.data(), size_t(layout.numel()) * sizeof(float));
  ld.materialise(ref);
  // The reduced gradient every rank would hold after the reduction: bf16 values; the host's mixing gradient.
  const std::vector<float> gv = test::random_bf16_values(size_t(layout.numel()), 6, -2.0f, 2.0f);
  const std::vector<test::bf16> gb = test::to_bf16(gv);
  ParamBuffer grads(layout);
  std::memcpy(grads.data(), gv.data(), gv.size() * sizeof(float));
  const std::vector<double> ref_dots = ld.dots(grads);

  std::vector<double> whole_dots;
  for (const int R : {1, 2, 3}) {
    SCOPED_TRACE("ranks " + std::to_string(R));
    ParamBuffer gathered(layout);  // every rank's master pieces
    std::fill(gathered.data(), gathered.data() + gathered.numel(), std::nanf(""));
    std::vector<double> dots(size_t(K) * pairs, 0.0);
    for (int r = 0; r < R; ++r) {
      CudaModelOptions o;
      o.shard_world = R;
      o.shard_rank = r;
      CudaModel gpu(plan.to, 2, 16, o);
      gpu.set_params(start);
      CudaLearnedDepth cl(gpu, ld);
      cl.materialise(ld);
      const std::vector<uint16_t> bits = gpu.get_weights_bf16();
      int64_t wrong = 0;
      for (int64_t i = 0; i < layout.numel(); ++i) {
        const test::bf16 want = test::float_to_bf16(ref.data()[i]);
        uint16_t want_bits;
        std::memcpy(&want_bits, &want, 2);
        if (bits[size_t(i)] != want_bits && ++wrong <= 3)
          ADD_FAILURE() << "rank " << r << ": bf16 weight " << i << " differs from the host's W' = D W";
      }
      EXPECT_EQ(wrong, 0) << "rank " << r;
      ParamBuffer mine(layout);
      std::fill(mine.data(), mine.data() + mine.numel(), std::nanf(""));
      gpu.get_params(mine);  // the pieces only
      for (const ShardPiece& p : gpu.shards().pieces())
        std::copy(mine.data() + p.begin, mine.data() + p.end, gathered.data() + p.begin);
      // The reduced gradient as the reduction leaves it: the whole buffer (one rank) or this rank's pieces,
      // compact.
      if (R == 1) {
        CUDA_CHECK(cudaMemcpy(gpu.grads_device(), gb.data(), gb.size() * sizeof(test::bf16),
                              cudaMemcpyHostToDevice));
      } else {
        std::vector<test::bf16> compact(size_t(gpu.shards().compact_size()), test::float_to_bf16(0.0f));
        for (const ShardPiece& p : gpu.shards().pieces())
          std::copy(gb.begin() + p.begin, gb.begin() + p.end, compact.begin() + p.compact);
        CUDA_CHECK(cudaMemcpy(gpu.grad_shard_device(), compact.data(), compact.size() * sizeof(test::bf16),
                              cudaMemcpyHostToDevice));
      }
      const std::vector<double> share = cl.dots();
      ASSERT_EQ(share.size(), dots.size());
      for (size_t i = 0; i < dots.size(); ++i) dots[i] += share[i];  // rank order, as sum_in_rank_order
    }
    EXPECT_EQ(0, std::memcmp(gathered.data(), ref.data(), size_t(layout.numel()) * sizeof(float)))
        << "the ranks' master pieces together differ from the host's W' = D W";
    for (int k = 0; k < K; ++k) {
      const auto part = [&](const std::vector<double>& v) {
        return std::vector<double>(v.begin() + k * std::ptrdiff_t(pairs),
                                   v.begin() + (k + 1) * std::ptrdiff_t(pairs));
      };
      STRATA_EXPECT_CLOSE(part(dots), part(ref_dots), test::kTolFloatVsDouble, ld.kind_name(k));
    }
    if (R == 1)
      whole_dots = dots;
    else
      STRATA_EXPECT_CLOSE(dots, whole_dots, test::kTolFloatVsDouble,
                          "the shards' mixing gradient vs the whole runner's");
  }
}

INSTANTIATE_TEST_SUITE_P(Families, CudaTrain,
                         ::testing::Values(models::Family::kLlama, models::Family::kGpt2),
                         [](const auto& p) { return std::string(models::family_name(p.param)); });

}  // namespace
}  // namespace strata
