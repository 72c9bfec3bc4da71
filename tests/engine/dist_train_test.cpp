// `strata train` under `mpirun -np 2` end to end (CPU backend, MPI communicator): 2 ranks train the same
// model as 1 rank with the same global batch; ZeRO-1 equals ZeRO-0 bit for bit; a G_stack growth mid-run
// under 2 ranks matches 1 rank; a sharded checkpoint resumes bit-identically, and on another rank count; the
// per-step communication equals the ZeRO formula; mismatched configs, a killed rank and a stalled rank end
// the job with a clear message within a bounded time.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "engine/fileio.h"
#include "engine/params.h"
#include "growth/comm_cost.h"
#include "models/model_config.h"
#include "tests/test_util.h"

extern char** environ;

namespace {
namespace fs = std::filesystem;
using strata::test::run_strata;
using Json = nlohmann::json;

// The launcher, allowed to run as root (containers, CI) and to place more ranks than cores.
std::string mpirun(int np) {
  return std::string("env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 ") + STRATA_MPIEXEC +
         " --oversubscribe -np " + std::to_string(np) + " ";
}

int run_shell(const std::string& cmd, std::string* output) {
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return -1;
  char buf[4096];
  output->clear();
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) output->append(buf, n);
  const int status = ::pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

class DistTrain : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("strata_dist_train_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
    std::string out;
    ASSERT_TRUE(strata::test::prepare_test_corpus(root_, 512, &out)) << out;
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }

  // B = 2, T = 32, 256 tokens per step: 4 micro-batches on 1 rank, 2 per rank on 2 ranks.
  static std::string args(const std::string& out_dir, int steps = 8) {
    return "train --data " + (root_ / "data").string() +
           " --model llama-tiny --n-layer 2 --d-model 32 --n-head 4 --n-kv-head 2 --d-ff 64 --max-seq-len 64"
           " --batch-size 2 --seq-len 32 --global-batch-tokens 256 --steps " +
           std::to_string(steps) +
           " --warmup 2 --lr 3e-3 --eval-every 4 --eval-batches 4 --sample-tokens 8 --threads 1"
           " --keep-last 0 --log-every 1 --out " +
           (root_ / out_dir).string();
  }
  static std::string strata_bin() { return strata::test::binary_path() + " "; }

  static std::vector<Json> metrics(const std::string& run) {
    std::vector<Json> rows;
    std::istringstream in(strata::read_file((root_ / run / "metrics.jsonl").string()));
    for (std::string line; std::getline(in, line);) {
      Json j = Json::parse(line);
      j.erase("tokens_per_s");
      j.erase("wall_s");
      rows.push_back(j);
    }
    return rows;
  }
  static std::vector<Json> rows_of(const std::vector<Json>& all, const std::string& type) {
    std::vector<Json> out;
    for (const Json& j : all)
      if (j.value("type", "") == type) out.push_back(j);
    return out;
  }
  static std::string ckpt_file(const std::string& run, long step, const std::string& file) {
    char name[32];
    std::snprintf(name, sizeof name, "ckpt-%08ld", step);
    return strata::read_file((root_ / run / name / file).string());
  }
  // Losses (and norms, validation losses) of two runs agree to `tol` relative, step by step.
  static void expect_close(const std::vector<Json>& a, const std::vector<Json>& b, double tol) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i)
      for (const char* key : {"loss", "grad_norm", "val_loss"})
        if (a[i].contains(key)) {
          const double x = a[i][key].get<double>(), y = b[i][key].get<double>();
          EXPECT_LE(std::fabs(x - y), tol * std::fabs(x))
              << key << " at row " << i << ": " << x << " vs " << y;
        }
  }

  static fs::path root_;
};
fs::path DistTrain::root_;

// Reduction order is the only difference between 1 and 2 ranks: float sums of the same terms, grouped
// differently. Over 8 steps of AdamW this stays within a few ulps of the loss.
constexpr double kRankCountTol = 1e-5;

TEST_F(DistTrain, TwoRanksMatchOneRankAndZero1EqualsZero0) {
  std::string out;
  ASSERT_EQ(run_strata(args("one"), &out), 0) << out;
  ASSERT_EQ(run_shell(mpirun(2) + strata_bin() + args("z1") + " --zero 1", &out), 0) << out;
  EXPECT_NE(out.find("ranks                  2 (mpi"), std::string::npos) << out;
  EXPECT_NE(out.find("ZeRO-1"), std::string::npos);
  ASSERT_EQ(run_shell(mpirun(2) + strata_bin() + args("z0") + " --zero 0", &out), 0) << out;

  const std::vector<Json> one = metrics("one"), z1 = metrics("z1"), z0 = metrics("z0");
  ASSERT_EQ(rows_of(one, "step").size(), 8u);
  expect_close(one, z1, kRankCountTol);
  // ZeRO-1 and ZeRO-0: the same sums (two ranks), the same norm order, the same AdamW arithmetic per element.
  ASSERT_EQ(z1.size(), z0.size());
  for (size_t i = 0; i < z1.size(); ++i) {
    Json a = z1[i], b = z0[i];
    a.erase("comm_bytes");
    b.erase("comm_bytes");
    EXPECT_EQ(a, b) << "row " << i;
  }
  EXPECT_EQ(ckpt_file("z1", 8, "model.safetensors"), ckpt_file("z0", 8, "model.safetensors"));

  // Per-step traffic against the ring formula (growth/comm_cost.h) over the flat parameter buffer, fp32.
  strata::models::ModelConfig m = strata::models::preset("llama-tiny");
  m.n_layer = 2, m.d_model = 32, m.n_head = 4, m.n_kv_head = 2, m.d_ff = 64, m.max_seq_len = 64;
  m.vocab_size = 512;
  const double n = static_cast<double>(strata::ParamLayout(m).numel());
  const double want1 = strata::growth::dp_bytes_per_rank(n, 2, 1, 4, 4).total();
  const double want0 = strata::growth::dp_bytes_per_rank(n, 2, 0, 4, 4).total();
  for (const Json& r : rows_of(z1, "step")) EXPECT_EQ(r.at("comm_bytes").get<double>(), want1);
  for (const Json& r : rows_of(z0, "step")) EXPECT_EQ(r.at("comm_bytes").get<double>(), want0);
}

// Every growth operator with a phase of its own runs under ranks too: G_random's mask applies to every rank's
// replicated weights; G_learn's gradient (dL/dD in depth, dL/dB in width) is summed from the ranks' reduced
// gradients (ZeRO-0: the all-reduced whole; ZeRO-1: each rank's shard, gathered exactly and summed in rank
// order), so every rank takes the same Adam step.
TEST_F(DistTrain, GrowthUnderTwoRanksMatchesOneRank) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"stack", " --grow \"at=3 steps,op=stack,g=2\""},
      {"random", " --grow \"at=3 steps,op=random,g=2,mask_steps=3\""},
      {"learn", " --grow \"at=3 steps,op=learn,g=2,learn_steps=3\""},
      {"learn_width", " --grow \"at=3 steps,op=learn,d_model=48,n_kv_head=3,d_ff=96,learn_steps=3\""},
  };
  for (const auto& [name, grow] : cases)
    for (const char* zero : {"1", "0"}) {
      if (name == "stack" && std::string(zero) == "0") continue;  // ZeRO-0 equals ZeRO-1 (the test above)
      std::string out;
      const std::string one_dir = "g_one_" + name, two_dir = "g_two_" + name + "_z" + zero;
      if (std::string(zero) == "1") {
        ASSERT_EQ(run_strata(args(one_dir) + grow, &out), 0) << out;
      }
      ASSERT_EQ(run_shell(mpirun(2) + strata_bin() + args(two_dir) + grow + " --zero " + zero, &out), 0) << out;
      const std::vector<Json> one = metrics(one_dir), two = metrics(two_dir);
      ASSERT_EQ(rows_of(two, "growth").size(), 1u) << name;
      if (name == "learn_width")
        EXPECT_EQ(rows_of(two, "growth")[0]["to"]["d_model"], 48) << name;
      else
        EXPECT_EQ(rows_of(two, "growth")[0]["to"]["n_layer"], 4) << name;
      SCOPED_TRACE(name + " under ZeRO-" + zero);
      expect_close(one, two, kRankCountTol);
    }
}

TEST_F(DistTrain, ShardedCheckpointResumesBitIdenticallyAndOnOtherRankCounts) {
  const std::string grow = " --grow \"at=4 steps,op=stack,g=2\"";
  std::string out;
  ASSERT_EQ(run_shell(mpirun(2) + strata_bin() + args("full", 10) + grow, &out), 0) << out;
  // Interrupted after step 6 (past the growth), then resumed with 2 ranks.
  ASSERT_EQ(run_shell(mpirun(2) + strata_bin() + args("cut", 10) + grow + " --stop-at 6", &out), 0) << out;
  EXPECT_TRUE(fs::exists(root_ / "cut/ckpt-00000006/optimizer-00000-of-00002.safetensors"));
  EXPECT_TRUE(fs::exists(root_ / "cut/ckpt-00000006/optimizer-00001-of-00002.safetensors"));
  fs::copy(root_ / "cut", root_ / "cut_to_one", fs::copy_options::recursive);
  ASSERT_EQ(run_shell(mpirun(2) + strata_bin() + "train --resume " + (root_ / "cut").string(), &out), 0)
      << out;
  EXPECT_EQ(metrics("full"), metrics("cut"));
  for (const char* f :
       {"model.safetensors", "optimizer-00000-of-00002.safetensors", "optimizer-00001-of-00002.safetensors"})
    EXPECT_EQ(ckpt_file("full", 10, f), ckpt_file("cut", 10, f)) << f;

  // The same checkpoint resumed by 1 rank: the shards are re-read as one range; the run continues within
  // reduction-order tolerance and writes the single-process optimizer file.
  ASSERT_EQ(run_strata("train --resume " + (root_ / "cut_to_one").string() + " --out " +
                           (root_ / "cut_to_one").string(),
                       &out),
            0)
      << out;
  expect_close(metrics("full"), metrics("cut_to_one"), kRankCountTol);
  EXPECT_TRUE(fs::exists(root_ / "cut_to_one/ckpt-00000010/optimizer.safetensors"));

  // And a 1-rank checkpoint resumed by 2 ranks.
  ASSERT_EQ(run_strata(args("one_cut", 10) + grow + " --stop-at 6", &out), 0) << out;
  ASSERT_EQ(run_shell(mpirun(2) + strata_bin() + "train --resume " + (root_ / "one_cut").string(), &out), 0)
      << out;
  expect_close(metrics("full"), metrics("one_cut"), kRankCountTol);
}

TEST_F(DistTrain, MismatchedConfigsAreRefusedAtStartup) {
  std::string out;
  const std::string a = strata_bin() + args("mismatch");
  // MPMD: rank 0 and rank 1 get different learning rates.
  const int rc = run_shell(mpirun(1) + a + " : -np 1 " + a + " --lr 1e-3", &out);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find("strata: error: rank 1 (host "), std::string::npos) << out;
  EXPECT_NE(out.find("config.schedule.max_lr: 0.001 vs 0.003"), std::string::npos) << out;
  // Printed once (rank 0), and nothing was trained or written.
  EXPECT_EQ(out.find("strata: error:"), out.rfind("strata: error:")) << out;
  EXPECT_FALSE(fs::exists(root_ / "mismatch" / "metrics.jsonl"));
}

// Starts `cmd` under /bin/sh with output to `log`; returns the pid of `cmd` (the shell execs it).
pid_t spawn(const std::string& cmd, const fs::path& log) {
  const std::string line = "exec " + cmd + " > " + log.string() + " 2>&1";
  const char* argv[] = {"/bin/sh", "-c", line.c_str(), nullptr};
  pid_t pid = -1;
  EXPECT_EQ(posix_spawn(&pid, "/bin/sh", nullptr, nullptr, const_cast<char**>(argv), environ), 0);
  return pid;
}

// A /proc file (its reported size is 0: read to the end).
std::string read_proc(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// The pid of the strata process of rank `rank` whose command line mentions `marker`, or -1.
pid_t find_rank(const std::string& marker, int rank) {
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string cmdline = read_proc(e.path() / "cmdline"), env = read_proc(e.path() / "environ");
    if (cmdline.find(marker) == std::string::npos || cmdline.find("strata") == std::string::npos) continue;
    if (env.find("OMPI_COMM_WORLD_RANK=" + std::to_string(rank) + '\0') != std::string::npos)
      return static_cast<pid_t>(std::stol(name));
  }
  return -1;
}

// Waits for pid for up to `seconds`; returns the exit status (128 + signal), or -1 on timeout.
int wait_for(pid_t pid, double seconds, double* waited) {
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      *waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > seconds) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// Kills a job still running (not yet reaped by wait_for) and its stalled rank.
void stop_job(pid_t job, pid_t stalled_rank) {
  int st = 0;
  if (::waitpid(job, &st, WNOHANG) != 0) return;  // reaped already (or not ours)
  if (stalled_rank > 0) ::kill(stalled_rank, SIGKILL);
  ::kill(job, SIGKILL);
  ::waitpid(job, &st, 0);
}

// Starts a long 2-rank run and waits until it has trained a few steps; returns mpirun's pid and rank 1's.
std::pair<pid_t, pid_t> start_long_run(const std::string& cmd, const fs::path& out_dir, const fs::path& log) {
  const pid_t job = spawn(cmd, log);
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    std::string m;
    try {
      m = strata::read_file((out_dir / "metrics.jsonl").string());
    } catch (...) {
    }
    if (m.find("\"step\":3") != std::string::npos) break;
    if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(120)) {
      ADD_FAILURE() << "the run did not reach step 3: " << strata::read_file(log.string());
      ::kill(job, SIGKILL);
      return {job, -1};
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return {job, find_rank(out_dir.string(), 1)};
}

TEST_F(DistTrain, AKilledRankEndsTheJobWithAClearMessage) {
  const fs::path out_dir = root_ / "killed", log = root_ / "killed.log";
  const auto [job, rank1] = start_long_run(mpirun(2) + strata_bin() + args("killed", 1000000), out_dir, log);
  // Whatever fails below, the job does not outlive the test.
  const std::unique_ptr<void, std::function<void(void*)>> reap(reinterpret_cast<void*>(1),
                                                               [job = job](void*) { stop_job(job, -1); });
  ASSERT_GT(rank1, 0) << strata::read_file(log.string());
  ASSERT_EQ(::kill(rank1, SIGKILL), 0);
  double waited = 0;
  const int rc = wait_for(job, 60, &waited);
  const std::string text = strata::read_file(log.string());
  ASSERT_NE(rc, -1) << "the job still runs 60 s after rank 1 was killed: " << text;
  EXPECT_NE(rc, 0) << text;
  EXPECT_NE(text.find("rank 1"), std::string::npos) << text;
  EXPECT_NE(text.find("signal 9"), std::string::npos) << text;
  std::printf("job ended %.1f s after rank 1 was killed, status %d\n", waited, rc);
}

// --comm-timeout 10: long enough that the ranks' start-up on a loaded machine (ctest -j) never trips it.
TEST_F(DistTrain, AStalledRankTripsTheCollectiveTimeout) {
  const fs::path out_dir = root_ / "stalled", log = root_ / "stalled.log";
  const auto [job, rank1] = start_long_run(
      mpirun(2) + strata_bin() + args("stalled", 1000000) + " --comm-timeout 10", out_dir, log);
  const std::unique_ptr<void, std::function<void(void*)>> reap(
      reinterpret_cast<void*>(1), [job = job, rank1 = rank1](void*) { stop_job(job, rank1); });
  ASSERT_GT(rank1, 0) << strata::read_file(log.string());
  ASSERT_EQ(::kill(rank1, SIGSTOP), 0);  // alive but silent: the launcher sees nothing wrong
  double waited = 0;
  const int rc = wait_for(job, 60, &waited);
  const std::string text = strata::read_file(log.string());
  ASSERT_NE(rc, -1) << "the job still runs 60 s after rank 1 stalled: " << text;
  EXPECT_NE(rc, 0) << text;
  EXPECT_NE(text.find("strata: error: rank 0/2 on host "), std::string::npos) << text;
  // While what: the step, or the evaluation every 4 steps, depending on where rank 1 was stopped.
  EXPECT_NE(text.find("did not complete within 10 s while "), std::string::npos) << text;
  EXPECT_TRUE(text.find("while training step ") != std::string::npos ||
              text.find("while evaluating at step ") != std::string::npos)
      << text;
  std::printf("job ended %.1f s after rank 1 stalled (timeout 10 s), status %d\n", waited, rc);
}

// SIGTERM (a scheduler preempting the job): the ranks agree to stop after the same step, write one checkpoint
// together and exit with 128 + 15; the run then resumes from it.
TEST_F(DistTrain, SigtermStopsEveryRankWithOneCheckpointAndResumes) {
  const fs::path out_dir = root_ / "preempted", log = root_ / "preempted.log";
  const auto [job, rank1] =
      start_long_run(mpirun(2) + strata_bin() + args("preempted", 1000000), out_dir, log);
  const std::unique_ptr<void, std::function<void(void*)>> reap(reinterpret_cast<void*>(1),
                                                               [job = job](void*) { stop_job(job, -1); });
  ASSERT_GT(rank1, 0);
  // One rank is enough: the ranks agree on a pending signal after every step (a scheduler signals them all,
  // each at its own moment).
  ASSERT_EQ(::kill(rank1, SIGTERM), 0);
  double waited = 0;
  const int rc = wait_for(job, 60, &waited);
  const std::string text = strata::read_file(log.string());
  ASSERT_NE(rc, -1) << text;
  EXPECT_EQ(rc, 143) << text;
  EXPECT_NE(text.find("interrupted (signal 15) after step"), std::string::npos) << text;
  const auto ckpts = [&] {
    std::vector<std::string> c;
    for (const auto& e : fs::directory_iterator(out_dir))
      if (e.path().filename().string().rfind("ckpt-", 0) == 0) c.push_back(e.path().string());
    return c;
  }();
  ASSERT_EQ(ckpts.size(), 1u) << text;
  const Json state = Json::parse(strata::read_file(ckpts[0] + "/state.json"));
  const long step = state.at("step").get<long>();
  EXPECT_EQ(rows_of(metrics("preempted"), "step").back().at("step").get<long>(), step);
  std::string out;
  ASSERT_EQ(run_shell(mpirun(2) + strata_bin() + "train --resume " + out_dir.string() + " --stop-at " +
                          std::to_string(step + 2),
                      &out),
            0)
      << out;
  EXPECT_EQ(rows_of(metrics("preempted"), "step").back().at("step").get<long>(), step + 2);
}

}  // namespace
