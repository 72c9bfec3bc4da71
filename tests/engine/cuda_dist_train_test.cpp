// `strata train --device cuda` data parallel (engine/cuda_backend.cpp over engine/comm_nccl.h), run by ctest
// under mpirun. Built against the CPU emulation (the emulation's NCCL works on host memory over MPI),
// so the CUDA backend's ZeRO-0 / ZeRO-1 path runs without a GPU; on a machine with 2+ GPUs the same source
// builds against CUDA and NCCL. ctest runs it under 2 and 3 ranks (3: the layer-wise ZeRO-1 shards then have
// tails, engine/shard_map.h). Every rank runs every training run in-process (run_training over the MPI
// world); rank 0 compares:
//   - ZeRO-1 and ZeRO-0 on the CUDA backend against the CPU backend's run on as many ranks (the CPU path is checked
//     against one process in dist_train_test.cpp), within bf16 precision, with a G_stack growth mid-run;
//   - a ZeRO-1 run stopped at a sharded checkpoint and resumed by as many ranks, bit-identical to an
//     uninterrupted one (step rows, weights, every optimizer shard, the bf16 weights);
//   - the bytes each step sends against the ring formula over the bf16 tensors;
//   - the growth phases against the CPU backend, and G_learn under ZeRO-1 against ZeRO-0 (losses, gradient
//     norms, the mixing matrices inside the phase).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>

#include "engine/checkpoint.h"
#include "engine/comm.h"
#include "engine/cuda_backend.h"
#include "engine/cuda_model.h"
#include "engine/fileio.h"
#include "engine/params.h"
#include "engine/train_backend.h"
#include "engine/trainer.h"
#include "growth/comm_cost.h"
#include "growth/plan.h"
#include "growth/spec.h"
#include "tests/engine/growth_state_check.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/test_util.h"
#include "tests/tolerances.h"

namespace strata {
namespace {
namespace fs = std::filesystem;
using test::kRunnerStepLossTol;

Communicator& world() {
  return world_communicator();
}

class CudaDistTrain : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    register_cuda_backend(&make_cuda_backend);
    // One folder for every rank: rank 0's name; rank 0 prepares the data while the others wait.
    root_ = world().all_gather_strings(
        (fs::temp_directory_path() / ("strata_cuda_dist_" + std::to_string(::getpid()))).string())[0];
    if (world().rank() == 0) {
      fs::remove_all(root_);
      fs::create_directories(root_);
      std::string out;
      EXPECT_TRUE(test::prepare_test_corpus(root_, 320, &out)) << out;
    }
    world().barrier();
  }
  static void TearDownTestSuite() {
    world().barrier();
    if (world().rank() == 0) fs::remove_all(root_);
  }

  // A 2-layer LLaMA (GQA, head dim 64), 10 steps of one micro-batch of 2 x 16 tokens per rank.
  static TrainConfig config(const std::string& run, const std::string& device, int zero) {
    TrainConfig c;
    c.model = models::preset("llama-tiny");
    c.model.n_layer = 2;
    c.model.d_model = 128;
    c.model.n_head = 2;
    c.model.n_kv_head = 1;
    c.model.d_ff = 176;
    c.model.vocab_size = 320;
    c.model.max_seq_len = 32;
    c.data_dir = (root_ / "data").string();
    c.batch_size = 2;
    c.seq_len = 16;
    c.global_batch_tokens = 32 * world().world();  // one micro-batch per rank
    c.steps = 10;
    c.schedule.max_lr = 3e-3;
    c.schedule.warmup_steps = 2;
    c.eval_every = 5;  // validation split across the ranks
    c.eval_batches = 2;
    c.sample_tokens = 8;  // a sample at the end: rank 0 samples from the state the ranks gather together
    c.threads = 1;
    c.keep_last = 0;
    c.ckpt_every = 4;
    c.out_dir = (root_ / run).string();
    c.device = device;
    c.zero_stage = zero;
    c.grow.push_back(growth::parse_stage("at=5 steps,op=stack,g=2"));
    c.world = world().world();
    return c;
  }
  static int train(TrainConfig c, const std::string& resume = "") {
    c.finalize();
    return run_training(c, resume, resume.empty());
  }
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
  static std::string file(const std::string& run, long step, const std::string& name) {
    char dir[32];
    std::snprintf(dir, sizeof dir, "ckpt-%08ld", step);
    return read_file((root_ / run / dir / name).string());
  }
  static fs::path root_;
};
fs::path CudaDistTrain::root_;

TEST_F(CudaDistTrain, Zero1AndZero0TrainLikeTheCpuBackendAndResumeBitIdentically) {
  STRATA_SKIP_WITHOUT_GPU();
  const int R = world().world();
  ASSERT_EQ(train(config("cpu", "cpu", 1)), 0);
  ASSERT_EQ(train(config("z1", "cuda", 1)), 0);
  ASSERT_EQ(train(config("z0", "cuda", 0)), 0);
  TrainConfig cut = config("cut", "cuda", 1);
  cut.stop_at = 6;  // past the growth at step 5
  ASSERT_EQ(train(cut), 0);
  cut.stop_at = 0;
  ASSERT_EQ(train(cut, resolve_checkpoint((root_ / "cut").string())), 0);
  world().barrier();
  if (world().rank() != 0) return;

  const auto cpu = steps("cpu"), z1 = steps("z1"), z0 = steps("z0");
  ASSERT_EQ(z1.size(), 10u);
  ASSERT_EQ(cpu.size(), 10u);
  ASSERT_EQ(z0.size(), 10u);
  for (size_t i = 0; i < cpu.size(); ++i) {
    const double c = cpu[i]["loss"].get<double>();
    std::printf("step %zu loss cpu %.5f cuda zero-1 %.5f zero-0 %.5f\n", i + 1, c,
                z1[i]["loss"].get<double>(), z0[i]["loss"].get<double>());
    EXPECT_NEAR(z1[i]["loss"].get<double>(), c, kRunnerStepLossTol * c) << "step " << i + 1;
    EXPECT_NEAR(z0[i]["loss"].get<double>(), c, kRunnerStepLossTol * c) << "step " << i + 1;
  }
  // Resumed from the sharded checkpoint of step 6: the same steps and the same final state, bit for bit.
  auto strip = [](std::vector<nlohmann::json> rows) {
    for (auto& r : rows) r.erase("comm_bytes");
    return rows;
  };
  EXPECT_EQ(strip(steps("z1")), strip(steps("cut")));
  if (R > 1) {
    for (int r = 0; r < R; ++r)
      EXPECT_TRUE(file("z1", 10, optimizer_shard_file(r, R)) == file("cut", 10, optimizer_shard_file(r, R)))
          << optimizer_shard_file(r, R);
  }
  for (const char* name : {"model.safetensors", "weights_bf16.safetensors"})
    EXPECT_TRUE(file("z1", 10, name) == file("cut", 10, name)) << name;

  // Traffic: every tensor's bf16 gradients reduce-scattered and its bf16 weights all-gathered (ZeRO-1, segment
  // by segment: bodies by reduce-scatter / all-gather, tails by reduce / broadcast, each counted as (R-1)/R of
  // its bytes), or all-reduced (ZeRO-0); both layer by layer during the backward pass, over the tensors without
  // the alignment padding between them, for the architecture of each step (after growth: 4 layers).
  const CheckpointInfo before = read_checkpoint_info((root_ / "z1" / "ckpt-00000004").string());
  const CheckpointInfo after = read_checkpoint_info((root_ / "z1" / "ckpt-00000008").string());
  for (size_t i = 0; i < z1.size() && R > 1; ++i) {
    const ParamLayout layout(i < 5 ? before.model : after.model);
    const int64_t n = layout.numel();
    int64_t tensors = 0;
    for (const ParamEntry& e : layout.entries()) tensors += e.numel();
    EXPECT_NEAR(z1[i]["comm_bytes"].get<double>(),
                growth::dp_bytes_per_rank(static_cast<double>(tensors), R, 1, 2, 2).total(),
                1e-6 * static_cast<double>(n))
        << "step " << i + 1;
    EXPECT_NEAR(z0[i]["comm_bytes"].get<double>(),
                growth::dp_bytes_per_rank(static_cast<double>(tensors), R, 0, 2, 2).total(),
                1e-6 * static_cast<double>(n))
        << "step " << i + 1;
  }
}

// The growth phases under ranks on the GPU, against the CPU backend's run on as many ranks: G_random (its
// masked gradients are reduced after mask_end scales them, not during the backward pass) under both ZeRO
// stages, G_learn in depth under ZeRO-0 (replicated state; ZeRO-1 is the next test, which ctest also runs on
// 3 ranks), and G_learn in width (on the host) under both: under ZeRO-1 each rank's expansion gradient comes
// from its reduced pieces and every rank uploads all of the bf16 weights and its pieces' master weights.
TEST_F(CudaDistTrain, GrowthPhasesTrainLikeTheCpuBackend) {
  STRATA_SKIP_WITHOUT_GPU();
  struct Case {
    const char* name;
    const char* spec;
    int zero;
  };
  for (const Case& k :
       {Case{"random_z1", "at=5 steps,op=random,g=2,mask_steps=3", 1},
        Case{"random_z0", "at=5 steps,op=random,g=2,mask_steps=3", 0},
        Case{"learn_z0", "at=5 steps,op=learn,g=2,learn_steps=3", 0},
        Case{"learn_width_z0", "at=5 steps,op=learn,d_model=256,n_kv_head=2,d_ff=256,learn_steps=3", 0},
        Case{"learn_width_z1", "at=5 steps,op=learn,d_model=256,n_kv_head=2,d_ff=256,learn_steps=3", 1}}) {
    const std::string cpu_run = std::string("cpu_") + k.name, gpu_run = std::string("gpu_") + k.name;
    for (const auto& [run, device] : {std::pair{cpu_run, "cpu"}, std::pair{gpu_run, "cuda"}}) {
      TrainConfig c = config(run, device, k.zero);
      c.grow[0] = growth::parse_stage(k.spec);
      c.ckpt_every = 0;
      c.sample_tokens = 0;
      ASSERT_EQ(train(c), 0) << k.name << " on " << device;
    }
    world().barrier();
    if (world().rank() != 0) continue;
    const auto cpu = steps(cpu_run), gpu = steps(gpu_run);
    ASSERT_EQ(cpu.size(), 10u);
    ASSERT_EQ(gpu.size(), 10u);
    // The gradient norm too: AdamW hardly sees a masked gradient left unscaled (its update is scale-free), but
    // the norm of the reduced gradient does.
    for (size_t i = 0; i < cpu.size(); ++i) {
      const double c = cpu[i]["loss"].get<double>(), n = cpu[i]["grad_norm"].get<double>();
      std::printf("%s step %zu loss cpu %.5f cuda %.5f, grad norm cpu %.5f cuda %.5f\n", k.name, i + 1, c,
                  gpu[i]["loss"].get<double>(), n, gpu[i]["grad_norm"].get<double>());
      EXPECT_NEAR(gpu[i]["loss"].get<double>(), c, kRunnerStepLossTol * c) << k.name << " step " << i + 1;
      EXPECT_NEAR(gpu[i]["grad_norm"].get<double>(), n, kRunnerStepLossTol * n) << k.name << " step " << i + 1;
    }
  }
}

// Growth of a ZeRO-1 runner on the device: each rank copies its own pieces of the copied layers' fp32 state (no
// data crosses ranks; engine/cuda_model.h, CudaModel::grown). From the same full state on every rank, the state
// the ranks gather afterwards is the CPU backend's grown state bit for bit (master weights, moments mapped or
// reset, t), the bf16 weights of each copied layer are its source's, and the grown sharded runner trains.
// Under 3 ranks the segments have tails (owned by the last rank).
TEST_F(CudaDistTrain, Zero1GrowthOnTheDeviceProducesTheCpuBackendsState) {
  STRATA_SKIP_WITHOUT_GPU();
  const TrainConfig c = config("unused", "cuda", 1);
  DataParallelSetup dp;
  dp.comm = &world();
  dp.zero_stage = 1;
  for (const std::string spec : {"at=1 steps,op=stack,g=2,optimizer=map", "at=1 steps,op=stack,g=2",
                                  "at=1 steps,op=interpolate,g=2", "at=1 steps,op=zero,g=2"}) {
    SCOPED_TRACE(spec);
    const growth::GrowthPlan plan = growth::make_plan(c.model, growth::parse_stage(spec));
    ASSERT_TRUE(CudaModel::layer_copies_only(plan));
    auto cpu = make_cpu_backend(c.model, 2, 16, c.adamw);  // one process's reference, on every rank
    auto cuda = make_cuda_backend(c.model, 2, 16, c.adamw, 7, dp);
    ASSERT_EQ(cuda->optimizer_sharded(), world().world() > 1);
    test::seed_growth_state(*cpu, *cuda);  // each rank takes its pieces
    const std::vector<uint16_t> old_bits = test::bf16_weight_bits(*cuda);
    cpu->grow(plan, 99);
    cuda->grow(plan, 99);
    test::expect_same_grown_state(*cuda, *cpu, plan.to.n_layer);  // the ranks gather every piece
    test::expect_grown_bf16_weights(plan, old_bits, test::bf16_weight_bits(*cuda), cpu->host_params().data());
    // The grown sharded runner trains like the CPU backend: every rank takes the same batch at 1 / R (the
    // reduced gradient is the batch's), three steps, then the loss on another batch (one growth: the emulation
    // is slow).
    if (spec.find("map") == std::string::npos) continue;
    const auto in = test::random_tokens(32, c.model.vocab_size, 1),
               tg = test::random_tokens(32, c.model.vocab_size, 2),
               in2 = test::random_tokens(32, c.model.vocab_size, 3),
               tg2 = test::random_tokens(32, c.model.vocab_size, 4);
    for (int k = 0; k < 3; ++k) {
      cuda->zero_grad();
      cpu->zero_grad();
      const float loss = cuda->train_micro_batch(in.data(), tg.data(), 1.0f / float(world().world()));
      const float ref = cpu->train_micro_batch(in.data(), tg.data(), 1.0f);
      EXPECT_NEAR(loss, ref, kRunnerStepLossTol * ref) << "step " << k + 1;
      const double norm = cuda->grad_norm(), ref_norm = cpu->grad_norm();
      EXPECT_NEAR(norm, ref_norm, kRunnerStepLossTol * ref_norm) << "step " << k + 1;
      cuda->adamw_step(1e-3, 1.0f);  // small: a reset optimizer's first steps are sign(g) x lr
      cpu->adamw_step(1e-3, 1.0f);
    }
    int64_t n = 0;
    const float eval = cuda->evaluate(in2.data(), tg2.data(), &n);
    const float ref_eval = cpu->evaluate(in2.data(), tg2.data(), &n);
    EXPECT_NEAR(eval, ref_eval, kRunnerStepLossTol * ref_eval);
    double worst = eval, least = eval;  // and the ranks agree exactly
    world().all_reduce_small(&worst, 1, ReduceOp::kMax);
    world().all_reduce_small(&least, 1, ReduceOp::kMin);
    EXPECT_EQ(worst, least);
  }
}

// G_learn under ZeRO-1 on the GPU (each rank sums its pieces' share of the mixing gradient, the shares are
// added in rank order; every rank writes all the bf16 weights W' = D W and the master weights of its pieces):
// the same steps as ZeRO-0 on the GPU and as the CPU backend's ZeRO-1 on as many ranks (losses and gradient
// norms within bf16 precision), and the mixing matrices checkpointed inside the phase (after 2 of its 3
// steps) those of ZeRO-0: each step moves an entry of D by about learn_lr (Adam, whose first steps follow
// the gradient's sign), so a mixing gradient summed wrongly (a rank's share missing) moves many entries the
// other way, a difference of 2 learn_lr. Under 3 ranks the segments have tails (a second run of pieces per
// kind on the last rank).
TEST_F(CudaDistTrain, GLearnUnderZero1TrainsLikeZero0AndTheCpuBackend) {
  STRATA_SKIP_WITHOUT_GPU();
  const growth::Stage stage = growth::parse_stage("at=5 steps,op=learn,g=2,learn_steps=3");
  struct Run {
    const char* name;
    const char* device;
    int zero;
  };
  for (const Run& r :
       {Run{"learn_cpu_z1", "cpu", 1}, Run{"learn_gpu_z1", "cuda", 1}, Run{"learn_gpu_z0", "cuda", 0}}) {
    TrainConfig c = config(r.name, r.device, r.zero);
    c.grow[0] = stage;
    c.ckpt_every = 7;  // inside the phase (steps 6-8): the checkpoint carries D
    c.sample_tokens = 0;
    ASSERT_EQ(train(c), 0) << r.name;
  }
  world().barrier();
  if (world().rank() != 0) return;
  const auto cpu = steps("learn_cpu_z1"), z1 = steps("learn_gpu_z1"), z0 = steps("learn_gpu_z0");
  ASSERT_EQ(cpu.size(), 10u);
  ASSERT_EQ(z1.size(), 10u);
  ASSERT_EQ(z0.size(), 10u);
  for (size_t i = 0; i < cpu.size(); ++i) {
    const double c = cpu[i]["loss"].get<double>(), n = cpu[i]["grad_norm"].get<double>();
    const double a = z1[i]["loss"].get<double>(), b = z0[i]["loss"].get<double>();
    const double na = z1[i]["grad_norm"].get<double>(), nb = z0[i]["grad_norm"].get<double>();
    std::printf(
        "G_learn step %zu loss cpu %.5f cuda zero-1 %.5f zero-0 %.5f, grad norm cpu %.5f zero-1 %.5f "
        "zero-0 %.5f\n",
        i + 1, c, a, b, n, na, nb);
    EXPECT_NEAR(a, b, kRunnerStepLossTol * b) << "step " << i + 1;
    EXPECT_NEAR(a, c, kRunnerStepLossTol * c) << "step " << i + 1;
    EXPECT_NEAR(na, nb, kRunnerStepLossTol * nb) << "step " << i + 1;
    EXPECT_NEAR(na, n, kRunnerStepLossTol * n) << "step " << i + 1;
  }
  // D after 2 of the phase's 3 steps, ZeRO-1 against ZeRO-0. The runs' weights already differ slightly (from
  // step 2 on: the optimizer's stochastic rounding), so a mixing gradient near 0 may take the other sign on
  // one of them (that entry then differs by about 2 learn_lr): measured on the emulation, 1 (2 ranks) and 2
  // (3 ranks) of 48 entries. A wrongly summed gradient flips many: each rank stepping on its own share alone
  // gave 18 of 48 (2 ranks), while the losses stayed within their tolerance.
  const SafetensorsFile f1 = open_checkpoint_file((root_ / "learn_gpu_z1" / "ckpt-00000007").string(),
                                                  "growth.safetensors"),
                        f0 = open_checkpoint_file((root_ / "learn_gpu_z0" / "ckpt-00000007").string(),
                                                  "growth.safetensors");
  size_t entries = 0, differ = 0;
  double moved = 0.0;
  for (const std::string& name : f0.names()) {
    if (name.rfind("D.", 0) != 0) continue;
    const std::vector<float> a = f1.to_f32(name), b = f0.to_f32(name);
    ASSERT_EQ(a.size(), b.size()) << name;
    size_t off = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      off += std::abs(double(a[i]) - double(b[i])) > 0.5 * stage.learn_lr;
      moved = std::max(moved, std::abs(double(b[i]) - std::round(double(b[i]))));  // off G_stack's 0 / 1
    }
    std::printf("G_learn %s after 2 steps: %zu of %zu entries of D differ by more than learn_lr / 2\n",
                name.c_str(), off, a.size());
    entries += a.size();
    differ += off;
  }
  EXPECT_GT(entries, 0u) << "no mixing matrix in the checkpoint";
  EXPECT_LE(differ * 4, entries) << "more than a quarter of D differs between ZeRO-1 and ZeRO-0";
  EXPECT_GT(moved, 0.5 * stage.learn_lr) << "vacuous: D did not move";
}

// --nccl-loopback: one process runs the data-parallel path anyway (NCCL on a world of one, ZeRO-0's
// layer-by-layer all-reduce on the communication stream). A world of one's all-reduce is the identity, so the
// run is bit-identical to a plain one (the point of the flag is the time it costs on a GPU); the flag is refused
// with the CPU backend. ctest runs this without mpirun.
TEST_F(CudaDistTrain, NcclLoopbackTrainsTheSameBitsAsOneProcess) {
  STRATA_SKIP_WITHOUT_GPU();
  if (world().world() != 1) GTEST_SKIP() << "--nccl-loopback is for one process; ctest runs it without mpirun";
  const int64_t calls0 = world().counters().calls;
  ASSERT_EQ(train(config("plain", "cuda", 0)), 0);
  const int64_t calls1 = world().counters().calls;
  TrainConfig loop = config("loopback", "cuda", 0);
  loop.nccl_loopback = true;
  ASSERT_EQ(train(loop), 0);
  // The NCCL collectives count into the host communicator: none in the plain run, one group per layer and
  // one for the global tensors per step (its all-reduces counted one by one) in the loopback run.
  EXPECT_EQ(calls1, calls0);
  EXPECT_GE(world().counters().calls - calls1, 10 * 3);
  const auto plain = steps("plain"), looped = steps("loopback");
  ASSERT_EQ(plain.size(), 10u);
  EXPECT_EQ(plain, looped);
  for (const char* name : {"model.safetensors", "optimizer.safetensors", "weights_bf16.safetensors"})
    EXPECT_TRUE(file("plain", 10, name) == file("loopback", 10, name)) << name;
  TrainConfig cpu = config("cpu-loopback", "cpu", 0);
  cpu.nccl_loopback = true;
  try {
    cpu.finalize();
    ADD_FAILURE() << "--nccl-loopback with --device cpu was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--nccl-loopback"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace strata

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const int rc = RUN_ALL_TESTS();
  double worst = rc;
  strata::world_communicator().all_reduce_small(&worst, 1, strata::ReduceOp::kMax);
  strata::finalize_world();
  return static_cast<int>(worst);
}
