// `strata train / eval / sample` end to end on a small prepared corpus: training lowers the loss, an
// interrupted-and-resumed run is bit-identical to an uninterrupted one, and bad input (flags, config files,
// presets, shapes, checkpoints) is one error line with a non-zero exit that overwrites nothing.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "engine/fileio.h"
#include "tests/test_util.h"
#include "tests/tolerances.h"

namespace {
namespace fs = std::filesystem;
using strata::test::run_strata;

// One corpus for the whole suite: a 512-token BPE vocabulary trained on the embedded State of the Union
// corpus, and shards of it (train) and Moby-Dick (val).
class TrainCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("strata_train_cli_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
    std::string out;
    ASSERT_TRUE(strata::test::prepare_test_corpus(root_, 512, &out)) << out;
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }

  static std::string base_args(const std::string& out_dir) {
    return "train --data " + (root_ / "data").string() +
           " --model llama-tiny --n-layer 2 --d-model 32 --n-head 4 --n-kv-head 2 --d-ff 64 --max-seq-len 64"
           " --batch-size 2 --seq-len 32 --global-batch-tokens 128 --steps 8 --warmup 2 --lr 3e-3"
           " --eval-every 4 --eval-batches 2 --sample-tokens 8 --threads 1 --keep-last 0 --out " +
           (root_ / out_dir).string();
  }

  // metrics.jsonl rows without the wall-clock field.
  static std::vector<nlohmann::json> metrics(const std::string& run) {
    std::vector<nlohmann::json> rows;
    std::istringstream in(strata::read_file((root_ / run / "metrics.jsonl").string()));
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line);
      j.erase("tokens_per_s");
      j.erase("wall_s");  // growth rows: wall time of the growth
      rows.push_back(j);
    }
    return rows;
  }

  // A failing command: non-zero exit, the error is the last line and mentions every fragment.
  static void expect_error(const std::string& args, const std::vector<std::string>& fragments) {
    std::string out;
    EXPECT_NE(run_strata(args, &out), 0) << out;
    const auto err = out.find("strata: error: ");
    ASSERT_NE(err, std::string::npos) << out;
    EXPECT_EQ(out.find('\n', err), out.size() - 1) << "not one line at the end: " << out;
    for (const auto& f : fragments)
      EXPECT_NE(out.find(f, err), std::string::npos) << "lacks '" << f << "': " << out;
  }

  static std::string bytes_of(const fs::path& p) { return strata::read_file(p.string()); }

  static fs::path root_;

 public:
  static std::string base_args_public(const std::string& out_dir) { return base_args(out_dir); }
};
fs::path TrainCli::root_;

TEST_F(TrainCli, TrainsEvaluatesSamplesAndCheckpoints) {
  std::string out;
  ASSERT_EQ(run_strata(base_args("run") + " --steps 30 --lr 1e-2 --eval-every 10 --ckpt-every 10", &out), 0)
      << out;
  EXPECT_NE(out.find("non-embedding"), std::string::npos) << out;  // the resolved-config table
  EXPECT_NE(out.find("sample step 30:"), std::string::npos) << out;
  EXPECT_NE(out.find("done: 30 steps"), std::string::npos) << out;
  const auto rows = metrics("run");
  std::vector<double> losses, evals;
  double last_flops = 0;
  for (const auto& r : rows) {
    if (r["type"] == "step") {
      losses.push_back(r["loss"].get<double>());
      EXPECT_GT(r["flops"].get<double>(), last_flops);
      last_flops = r["flops"].get<double>();
      EXPECT_EQ(r["tokens"].get<long>(), r["step"].get<long>() * 128);
    } else {
      evals.push_back(r["val_loss"].get<double>());
      EXPECT_GT(r["val_bpb"].get<double>(), 0.0);
    }
  }
  ASSERT_EQ(losses.size(), 30u);
  ASSERT_EQ(evals.size(), 4u);  // before training, at steps 10, 20 and 30
  const double first = (losses[0] + losses[1] + losses[2]) / 3,
               last = (losses[27] + losses[28] + losses[29]) / 3;
  EXPECT_LT(last, first - 0.5) << "training loss did not fall";
  EXPECT_LT(evals.back(), evals.front()) << "validation loss did not fall";
  EXPECT_TRUE(fs::exists(root_ / "run" / "ckpt-00000010" / "model.safetensors"));
  EXPECT_TRUE(fs::exists(root_ / "run" / "ckpt-00000030" / "optimizer.safetensors"));

  ASSERT_EQ(
      run_strata("eval --checkpoint " + (root_ / "run").string() + " --batch-size 2 --seq-len 32 --batches 2",
                 &out),
      0)
      << out;
  EXPECT_NE(out.find("step 30"), std::string::npos) << out;
  EXPECT_NE(out.find("bits/byte"), std::string::npos) << out;
  // eval of the same batches as the trainer's last validation gives the same loss.
  char want[32];
  std::snprintf(want, sizeof want, "loss %.4f", evals.back());
  EXPECT_NE(out.find(want), std::string::npos) << out << " lacks " << want;

  std::string s1, s2;
  const std::string sample =
      "sample --checkpoint " + (root_ / "run").string() + " --prompt 'The' --tokens 12 --seed 3";
  ASSERT_EQ(run_strata(sample, &s1), 0) << s1;
  ASSERT_EQ(run_strata(sample, &s2), 0) << s2;
  EXPECT_EQ(s1, s2);                        // seeded
  EXPECT_EQ(s1.rfind("The", 0), 0u) << s1;  // continues the prompt
}

TEST_F(TrainCli, ResumedRunIsBitIdenticalToAnUninterruptedOne) {
  std::string out;
  ASSERT_EQ(run_strata(base_args("full"), &out), 0) << out;
  ASSERT_EQ(run_strata(base_args("cut") + " --ckpt-every 3 --stop-at 5", &out), 0) << out;
  ASSERT_TRUE(fs::exists(root_ / "cut" / "ckpt-00000005"));
  // Only the run folder: options not given come from the checkpoint.
  ASSERT_EQ(run_strata("train --resume " + (root_ / "cut").string(), &out), 0) << out;
  EXPECT_NE(out.find("resumed from"), std::string::npos) << out;
  const auto a = metrics("full"), b = metrics("cut");
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << "row " << i;
  EXPECT_EQ(bytes_of(root_ / "full" / "ckpt-00000008" / "model.safetensors"),
            bytes_of(root_ / "cut" / "ckpt-00000008" / "model.safetensors"));
  EXPECT_EQ(bytes_of(root_ / "full" / "ckpt-00000008" / "optimizer.safetensors"),
            bytes_of(root_ / "cut" / "ckpt-00000008" / "optimizer.safetensors"));
}

TEST_F(TrainCli, GradientAccumulationMatchesOneLargeBatch) {
  std::string out;
  // 4 micro-batches of 2 x 16 vs one batch of 8 x 16 over the same samples? The loader hands each micro-batch
  // the next B samples, so B=2 x 4 and B=8 x 1 read the same 8 samples per step in the same order.
  const std::string common =
      " --steps 3 --eval-every 0 --sample-tokens 0 --seq-len 16 --global-batch-tokens 128";
  ASSERT_EQ(run_strata(base_args("acc") + common + " --batch-size 2", &out), 0) << out;
  ASSERT_EQ(run_strata(base_args("big") + common + " --batch-size 8", &out), 0) << out;
  const auto a = metrics("acc"), b = metrics("big");
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i]["type"] != "step") continue;
    EXPECT_NEAR(a[i]["loss"].get<double>(), b[i]["loss"].get<double>(), strata::test::kCliAccumTol)
        << "row " << i;
    EXPECT_NEAR(a[i]["grad_norm"].get<double>(), b[i]["grad_norm"].get<double>(),
                strata::test::kCliAccumTol * b[i]["grad_norm"].get<double>())
        << "row " << i;
  }
}

TEST_F(TrainCli, InterruptWritesACheckpointThatResumes) {
  // SIGINT once the first step is logged: the run finishes that step, checkpoints and exits 128 + 2.
  const fs::path run = root_ / "intr";
  const std::string cmd = "sh -c '" + std::string(STRATA_BINARY) + " " + base_args("intr") +
                          " --steps 100000 --eval-every 0 --sample-tokens 0 > " +
                          (root_ / "intr.log").string() + " 2>&1 & p=$!; until grep -q step " +
                          (run / "metrics.jsonl").string() +
                          " 2>/dev/null; do sleep 0.05; done; kill -INT $p; wait $p; echo rc=$?'";
  FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[64] = {};
  const size_t n = std::fread(buf, 1, sizeof(buf) - 1, p);
  ::pclose(p);
  const std::string out(buf, n), log = bytes_of(root_ / "intr.log");
  EXPECT_EQ(out, "rc=130\n") << log;
  EXPECT_NE(log.find("interrupted (signal 2) after step"), std::string::npos) << log;
  std::vector<std::string> ckpts;
  for (const auto& e : fs::directory_iterator(run))
    if (e.path().filename().string().starts_with("ckpt-")) ckpts.push_back(e.path().filename().string());
  ASSERT_EQ(ckpts.size(), 1u) << log;
  const long step = std::stol(ckpts[0].substr(5));
  std::string resumed;
  ASSERT_EQ(run_strata("train --resume " + run.string() + " --stop-at " + std::to_string(step + 2), &resumed),
            0)
      << resumed;
  EXPECT_TRUE(fs::exists(
      run / ("ckpt-" + std::string(8 - std::to_string(step + 2).size(), '0') + std::to_string(step + 2))))
      << resumed;
}

// MFU is reported against --peak-tflops (the CPU backend has no datasheet peak): each metrics row's mfu is its
// model FLOPs per token (the flops counter's step) times its tokens/s over the peak, and the progress line shows it.
TEST_F(TrainCli, ReportsMfuAgainstTheGivenPeak) {
  std::string out;
  ASSERT_EQ(run_strata(base_args("mfu") + " --steps 3 --eval-every 0 --sample-tokens 0 --log-every 1"
                                          " --peak-tflops 0.5", &out), 0) << out;
  EXPECT_NE(out.find("0.5 TFLOP/s per device, --peak-tflops"), std::string::npos) << out;
  EXPECT_NE(out.find("% | ETA"), std::string::npos) << out;
  std::istringstream in(strata::read_file((root_ / "mfu" / "metrics.jsonl").string()));
  double prev_flops = 0;
  int rows = 0;
  for (std::string line; std::getline(in, line);) {
    const auto r = nlohmann::json::parse(line);
    if (r["type"] != "step") continue;
    const double per_token = (r["flops"].get<double>() - prev_flops) / 128.0;
    prev_flops = r["flops"].get<double>();
    ASSERT_TRUE(r.contains("mfu")) << line;
    EXPECT_NEAR(r["mfu"].get<double>(), per_token * r["tokens_per_s"].get<double>() / 0.5e12,
                1e-12 + 1e-9 * r["mfu"].get<double>()) << line;
    ++rows;
  }
  EXPECT_EQ(rows, 3);
  ASSERT_EQ(run_strata(base_args("no_mfu") + " --steps 2 --eval-every 0 --sample-tokens 0", &out), 0) << out;
  EXPECT_NE(out.find("none on the CPU backend (give --peak-tflops"), std::string::npos) << out;
  EXPECT_EQ(strata::read_file((root_ / "no_mfu" / "metrics.jsonl").string()).find("mfu"), std::string::npos);
}

TEST_F(TrainCli, BadInputIsOneLineAndOverwritesNothing) {
  std::string out;
  ASSERT_EQ(run_strata(base_args("keep") + " --steps 2 --eval-every 0 --sample-tokens 0", &out), 0) << out;
  const fs::path ckpt = root_ / "keep" / "ckpt-00000002";
  const std::string model_before = bytes_of(ckpt / "model.safetensors");
  const std::string metrics_before = bytes_of(root_ / "keep" / "metrics.jsonl");

  expect_error(base_args("x") + " --bogus-flag 3", {"--bogus-flag"});
  expect_error(base_args("x") + " --model llama-huge", {"llama-huge", "known"});
  expect_error(base_args("x") + " --d-model 30", {"n_head 4 does not divide d_model 30"});
  expect_error(base_args("x") + " --seq-len 100", {"--seq-len 100", "max_seq_len 64"});
  expect_error(base_args("x") + " --global-batch-tokens 100", {"--global-batch-tokens 100"});
  expect_error(base_args("x") + " --peak-tflops -3", {"--peak-tflops", "-3"});
  expect_error(base_args("x") + " --profile-steps 2:3", {"--profile-steps", "needs --device cuda"});
  expect_error(base_args("x") + " --device cuda --profile-steps 3", {"--profile-steps '3'", "A:B"});
  expect_error(base_args("x") + " --device cuda --profile-steps 2:9", {"--profile-steps '2:9'", "8 steps"});
  expect_error(base_args("x") + " --op-times 2:3", {"--op-times", "needs --device cuda"});
  expect_error(base_args("x") + " --device cuda --op-times 3:2", {"--op-times '3:2'", "A:B"});
  expect_error(base_args("x") + " --device cuda --op-times 2:9", {"--op-times '2:9'", "8 steps"});
  // Without a GPU (or a CUDA build) --device cuda is one clear error, whichever of the two this build lacks.
  expect_error(base_args("x") + " --device cuda", {"--device cuda"});
  expect_error(base_args("x") + " --device tpu", {"--device", "tpu"});
  expect_error(base_args("x") + " --device cuda --recompute lots",
               {"--recompute 'lots'", "none, norm, mlp or all"});
  expect_error(base_args("x") + " --recompute mlp", {"--recompute mlp", "CUDA-backend option"});
  expect_error(base_args("x") + " --device cuda --attention fast", {"--attention 'fast'", "flash or cudnn"});
  expect_error(base_args("x") + " --attention cudnn", {"--attention cudnn", "CUDA-backend option"});
  const std::string bad_cfg = (root_ / "bad.toml").string();
  strata::write_file_atomic(bad_cfg, "[train]\nweight-decay = \"lots\"\n");
  expect_error("--config " + bad_cfg + " " + base_args("x"), {"weight-decay"});
  strata::write_file_atomic(bad_cfg, "[train]\nbatch-sise = 8\n");
  expect_error("--config " + bad_cfg + " " + base_args("x"), {"batch-sise"});
  EXPECT_FALSE(fs::exists(root_ / "x"));
  // A fresh run into a folder with checkpoints is refused.
  expect_error(base_args("keep") + " --steps 2", {"already holds checkpoints", "--resume"});
  // Checkpoint problems: a model that does not match, a missing file, truncation, corruption.
  expect_error("train --resume " + (root_ / "keep").string() + " --d-model 64 --n-head 4",
               {"--resume", "model"});
  expect_error("sample --checkpoint " + (root_ / "nothing").string(), {"nothing"});
  fs::copy(root_ / "keep", root_ / "broken", fs::copy_options::recursive);
  const fs::path bad = root_ / "broken" / "ckpt-00000002";
  fs::resize_file(bad / "model.safetensors", fs::file_size(bad / "model.safetensors") - 10);
  expect_error("eval --checkpoint " + bad.string(), {"model.safetensors"});
  fs::copy_file(ckpt / "model.safetensors", bad / "model.safetensors", fs::copy_options::overwrite_existing);
  {
    std::fstream f(bad / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-5, std::ios::end);
    f.put('\x7f');
  }
  expect_error("train --resume " + bad.string(), {"model.safetensors"});
  fs::copy_file(ckpt / "model.safetensors", bad / "model.safetensors", fs::copy_options::overwrite_existing);
  fs::remove(bad / "optimizer.safetensors");
  expect_error("train --resume " + bad.string(), {"optimizer.safetensors"});
  // Nothing of the original run changed.
  EXPECT_EQ(bytes_of(ckpt / "model.safetensors"), model_before);
  EXPECT_EQ(bytes_of(root_ / "keep" / "metrics.jsonl"), metrics_before);
}

// ---- growth in `strata train` ----------------------------------------------------------------------------

// A growth run: 2 layers grown after step 3 of 8.
std::string grow_args(const std::string& out_dir, const std::string& stage) {
  return TrainCli::base_args_public(out_dir) + " --grow \"" + stage + "\"";
}

TEST_F(TrainCli, GrowthIsLoggedCheckpointedAndChangesTheArchitecture) {
  std::string out;
  ASSERT_EQ(run_strata(grow_args("g_stack", "at=3 steps,op=stack,g=2"), &out), 0) << out;
  EXPECT_NE(out.find("growth: op=stack (depth)"), std::string::npos) << out;
  const auto rows = metrics("g_stack");
  int growth_rows = 0;
  long last_step_before = -1;
  for (const auto& r : rows) {
    if (r["type"] == "step" && r["step"].get<long>() <= 3) last_step_before = r["step"].get<long>();
    if (r["type"] != "growth") continue;
    ++growth_rows;
    EXPECT_EQ(r["step"], 3);
    EXPECT_EQ(r["from"]["n_layer"], 2);
    EXPECT_EQ(r["to"]["n_layer"], 4);
    EXPECT_EQ(r["tokens"], 3 * 128);
    EXPECT_GT(r["params_after"].get<long>(), r["params_before"].get<long>());
  }
  EXPECT_EQ(growth_rows, 1);
  EXPECT_EQ(last_step_before, 3);
  // FLOPs accumulate across stages: per-step FLOPs grow after the growth.
  double f3 = 0, f4 = 0, f5 = 0;
  for (const auto& r : rows)
    if (r["type"] == "step") {
      if (r["step"] == 3) f3 = r["flops"].get<double>();
      if (r["step"] == 4) f4 = r["flops"].get<double>();
      if (r["step"] == 5) f5 = r["flops"].get<double>();
    }
  EXPECT_GT(f4 - f3, f3 / 3 * 1.2) << "a step of the grown model costs more";
  EXPECT_DOUBLE_EQ(f5 - f4, f4 - f3);
  const auto state = nlohmann::json::parse(bytes_of(root_ / "g_stack" / "ckpt-00000008" / "state.json"));
  EXPECT_EQ(state["model"]["n_layer"], 4);
  EXPECT_EQ(state["trainer"]["growth"]["done"], 1);
  ASSERT_EQ(state["trainer"]["growth"]["history"].size(), 1u);
  EXPECT_EQ(state["trainer"]["growth"]["history"][0]["step"], 3);
  // The data stream continues exactly: after 8 steps the loader is where a run without growth is.
  ASSERT_EQ(run_strata(base_args("g_plain"), &out), 0) << out;
  const auto plain = nlohmann::json::parse(bytes_of(root_ / "g_plain" / "ckpt-00000008" / "state.json"));
  EXPECT_EQ(state["trainer"]["loader"], plain["trainer"]["loader"]);
  // The grown checkpoint evaluates as the grown model.
  ASSERT_EQ(run_strata("eval --checkpoint " + (root_ / "g_stack").string() + " --data " +
                           (root_ / "data").string() + " --batches 2 --threads 1",
                       &out),
            0)
      << out;
}

TEST_F(TrainCli, ScheduleRestartsWithWarmupOrContinues) {
  std::string out;
  ASSERT_EQ(run_strata(grow_args("g_restart", "at=3 steps,op=stack,g=2,warmup=2"), &out), 0) << out;
  ASSERT_EQ(run_strata(grow_args("g_continue", "at=3 steps,op=stack,g=2,schedule=continue"), &out), 0) << out;
  ASSERT_EQ(run_strata(base_args("g_none"), &out), 0) << out;
  auto lr_at = [&](const std::string& run, long step) {
    for (const auto& r : metrics(run))
      if (r["type"] == "step" && r["step"] == step) return r["lr"].get<double>();
    return -1.0;
  };
  // Restart: step 4 (0-based step 3) is the first of a new 2-step warmup: lr = 3e-3 * 1/2.
  EXPECT_NEAR(lr_at("g_restart", 4), 3e-3 / 2, 1e-12);
  EXPECT_NEAR(lr_at("g_restart", 5), 3e-3, 1e-12);
  // Continue: the rates of the run without growth.
  for (long s = 1; s <= 8; ++s) EXPECT_EQ(lr_at("g_continue", s), lr_at("g_none", s)) << s;
}

// Growth + checkpoint + resume reproduces the uninterrupted run bit for bit, whether the run was cut before,
// at or after the growth point, for an operator with no phase (stack), a masked one (random), a learned one
// in depth and in width (learn), and a widening (zero).
TEST_F(TrainCli, GrowthResumesBitIdenticallyBeforeAtAndAfterTheGrowthPoint) {
  const std::vector<std::string> stages = {
      "at=3 steps,op=stack,g=2", "at=3 steps,op=random,g=2,mask_steps=3",
      "at=3 steps,op=learn,g=2,learn_steps=2", "at=3 steps,op=zero,d_ff=96,optimizer=map",
      "at=3 steps,op=learn,d_model=48,n_kv_head=3,d_ff=96,learn_steps=2"};
  for (size_t i = 0; i < stages.size(); ++i) {
    const std::string full = "gr_full" + std::to_string(i);
    std::string out;
    ASSERT_EQ(run_strata(grow_args(full, stages[i]), &out), 0) << out;
    for (int cut : {2, 3, 4}) {
      const std::string run = "gr_cut" + std::to_string(i) + "_" + std::to_string(cut);
      ASSERT_EQ(run_strata(grow_args(run, stages[i]) + " --stop-at " + std::to_string(cut), &out), 0) << out;
      ASSERT_EQ(run_strata("train --resume " + (root_ / run).string(), &out), 0) << out;
      const auto a = metrics(full), b = metrics(run);
      ASSERT_EQ(a.size(), b.size()) << stages[i] << " cut at " << cut;
      for (size_t r = 0; r < a.size(); ++r)
        EXPECT_EQ(a[r], b[r]) << stages[i] << " cut " << cut << " row " << r;
      for (const char* f : {"model.safetensors", "optimizer.safetensors"})
        EXPECT_EQ(bytes_of(root_ / full / "ckpt-00000008" / f), bytes_of(root_ / run / "ckpt-00000008" / f))
            << stages[i] << " cut at " << cut << ": " << f;
    }
  }
}

TEST_F(TrainCli, FlopsBudgetSetsTheRunLength) {
  std::string out;
  // Budget between the cumulative FLOPs of steps 6 and 7 of the growth run.
  ASSERT_EQ(run_strata(grow_args("g_ref", "at=3 steps,op=stack,g=2"), &out), 0) << out;
  double f6 = 0, f7 = 0;
  for (const auto& r : metrics("g_ref"))
    if (r["type"] == "step") {
      if (r["step"] == 6) f6 = r["flops"].get<double>();
      if (r["step"] == 7) f7 = r["flops"].get<double>();
    }
  ASSERT_GT(f7, f6);
  const std::string budget = std::to_string((f6 + f7) / 2);
  std::string args = grow_args("g_flops", "at=3 steps,op=stack,g=2");
  args.replace(args.find(" --steps 8"), 10, " --flops " + budget);
  ASSERT_EQ(run_strata(args, &out), 0) << out;
  EXPECT_TRUE(fs::exists(root_ / "g_flops" / "ckpt-00000007")) << out;
  EXPECT_FALSE(fs::exists(root_ / "g_flops" / "ckpt-00000008")) << out;
  // A FLOPs-budget run resumes like any other (its saved config holds the budget and the resolved steps).
  std::string cut = args;
  cut.replace(cut.find("g_flops"), 7, "g_flops_cut");
  ASSERT_EQ(run_strata(cut + " --stop-at 4", &out), 0) << out;
  ASSERT_EQ(run_strata("train --resume " + (root_ / "g_flops_cut").string(), &out), 0) << out;
  EXPECT_EQ(bytes_of(root_ / "g_flops" / "ckpt-00000007" / "model.safetensors"),
            bytes_of(root_ / "g_flops_cut" / "ckpt-00000007" / "model.safetensors"));
  // --flops and --steps that disagree.
  expect_error(args + " --steps 3", {"--flops", "give one"});
}

TEST_F(TrainCli, BadGrowthSpecsFailAtStartupWithOneLine) {
  expect_error(grow_args("gb", "at=3 steps,op=stack,g=1"), {"g=1", "integer >= 2"});
  expect_error(grow_args("gb", "at=3 steps,op=stack,g=2.5"), {"g=2.5"});
  expect_error(grow_args("gb", "at=3 steps,op=stack,layers=0-1,5"), {"layer 5 does not exist", "2 layers"});
  expect_error(grow_args("gb", "at=3 steps,op=zero,d_model=36"), {"d_model 36", "head dim 8"});
  expect_error(grow_args("gb", "at=30 steps,op=stack,g=2"), {"not before the end of the run"});
  expect_error(grow_args("gb", "at=3 steps,op=direct,g=2"), {"op=direct"});
  expect_error(grow_args("gb", "at=3 steps,op=stack,d_ff=96"), {"op=stack", "depth operator"});
  expect_error(grow_args("gb", "at=3 bananas,op=stack,g=2"), {"bananas"});
  expect_error(grow_args("gb", "op=stack,g=2"), {"missing at="});
  expect_error(
      base_args("gb") +
          " --model gpt2-tiny --n-head 4 --n-kv-head 4 --grow \"at=3 steps,op=zero,d_model=64,n_kv_head=4\"",
      {"GPT-2", "grouped-query"});
  expect_error(
      grow_args("gb", "at=3 steps,op=random,g=2,mask_steps=4") + " --grow \"at=5 steps,op=stack,g=2\"",
      {"previous stage's phase"});
  EXPECT_FALSE(fs::exists(root_ / "gb")) << "nothing may be written before the error";
  // A growth point that has already passed when resuming.
  std::string out;
  ASSERT_EQ(run_strata(base_args("g_late") + " --stop-at 5", &out), 0) << out;
  expect_error("train --resume " + (root_ / "g_late").string() + " --grow \"at=3 steps,op=stack,g=2\"",
               {"already passed", "step 5"});
}

}  // namespace
