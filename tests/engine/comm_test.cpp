// The communicator and host data parallelism (engine/comm.h, engine/data_parallel.h). ctest runs this binary
// twice: as one process (a world of one) and under `mpirun -np 2` (the MPI communicator). Every rank builds
// every rank's inputs from seeds, so each checks the collectives against sums it computes itself, and the
// data-parallel step against AdamW::step on the whole mean gradient.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <random>

#include "engine/checkpoint.h"
#include "engine/comm.h"
#include "engine/data_parallel.h"
#include "engine/optim.h"
#include "engine/params.h"
#include "models/model_config.h"

namespace {
namespace fs = std::filesystem;
using namespace strata;

Communicator& comm() {
  return world_communicator();
}

std::vector<float> seeded(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = static_cast<float>(static_cast<double>(rng() % 2001) / 1000.0 - 1.0);
  return x;
}

TEST(ShardRange, CoversTheBufferInOrderWithoutOverlap) {
  for (int64_t n : {0, 1, 15, 16, 17, 1000, 123457})
    for (int world : {1, 2, 3, 8}) {
      int64_t next = 0;
      for (int r = 0; r < world; ++r) {
        const ShardRange s = shard_range(n, world, r);
        EXPECT_EQ(s.begin, next) << n << " " << world << " " << r;
        EXPECT_GE(s.size(), 0);
        EXPECT_EQ(s.begin % 16 == 0 || s.begin == n, true);
        next = s.end;
      }
      EXPECT_EQ(next, n);
    }
}

TEST(Communicator, CollectivesMatchLocalSums) {
  Communicator& c = comm();
  const int R = c.world();
  const int64_t n = 1000;  // not a multiple of 16 x R: the last shard is short
  std::vector<float> sum(n, 0.0f), mx(n, -1e30f);
  for (int r = 0; r < R; ++r) {
    const std::vector<float> x = seeded(n, 100 + r);
    for (int64_t i = 0; i < n; ++i) {
      sum[i] += x[i];  // rank order: for two ranks a + b == b + a exactly
      mx[i] = std::max(mx[i], x[i]);
    }
  }
  std::vector<float> mine = seeded(n, 100 + c.rank());
  std::vector<float> a = mine;
  c.all_reduce(a.data(), n, ReduceOp::kMax);
  EXPECT_EQ(a, mx);
  if (R <= 2) {  // exact only when the order of the sum cannot matter
    a = mine;
    c.all_reduce(a.data(), n, ReduceOp::kSum);
    EXPECT_EQ(a, sum);
    const ShardRange s = shard_range(n, R, c.rank());
    std::vector<float> shard(static_cast<size_t>(s.size()));
    c.reduce_scatter(mine.data(), shard.data(), n);
    EXPECT_EQ(shard, std::vector<float>(sum.begin() + s.begin, sum.begin() + s.end));
  }
  // all_gather: each rank contributes its own shard of its own buffer.
  std::vector<float> g(n, -7.0f), want(n);
  for (int r = 0; r < R; ++r) {
    const ShardRange s = shard_range(n, R, r);
    const std::vector<float> x = seeded(n, 100 + r);
    std::copy(x.begin() + s.begin, x.begin() + s.end, want.begin() + s.begin);
    if (r == c.rank()) std::copy(x.begin() + s.begin, x.begin() + s.end, g.begin() + s.begin);
  }
  c.all_gather(g.data(), n);
  EXPECT_EQ(g, want);

  double d[2] = {static_cast<double>(c.rank()), static_cast<double>(c.rank())};
  c.all_reduce_small(d, 1, ReduceOp::kSum);
  c.all_reduce_small(d + 1, 1, ReduceOp::kMax);
  EXPECT_EQ(d[0], R * (R - 1) / 2.0);
  EXPECT_EQ(d[1], R - 1.0);
  const std::vector<std::string> names =
      c.all_gather_strings(std::string(static_cast<size_t>(c.rank()), 'x'));
  ASSERT_EQ(static_cast<int>(names.size()), R);
  for (int r = 0; r < R; ++r) EXPECT_EQ(names[r], std::string(static_cast<size_t>(r), 'x'));
  std::vector<char> b(5, c.rank() == 0 ? 'q' : 'z');
  c.broadcast(b.data(), 5, 0);
  EXPECT_EQ(std::string(b.begin(), b.end()), "qqqqq");
}

// A small LLaMA layout: tensors with and without weight decay, padding between tensors.
models::ModelConfig tiny() {
  models::ModelConfig m = models::preset("llama-tiny");
  m.n_layer = 2;
  m.d_model = 32;
  m.n_head = 4;
  m.n_kv_head = 2;
  m.d_ff = 64;
  m.vocab_size = 101;
  m.max_seq_len = 16;
  return m;
}

// Three optimizer steps of ZeRO-0 and of ZeRO-1 over the ranks, each rank with its own gradient (scaled 1/R,
// as the trainer scales micro-batches), against AdamW::step on the summed gradient in one process: the
// parameters, the norms and (ZeRO-1) the moments of each shard agree bit for bit with two ranks.
TEST(HostDataParallel, Zero0AndZero1EqualOneProcessAdamW) {
  Communicator& c = comm();
  const int R = c.world();
  const ParamLayout layout(tiny());
  const AdamWConfig cfg;
  ParamBuffer ref(layout), p0(layout), p1(layout);
  init_params(ref, 7);
  p0 = ref;
  p1 = ref;
  AdamW ref_opt(layout, cfg), opt0(layout, cfg);
  HostDataParallel dp0(c, layout, cfg, 0), dp1(c, layout, cfg, 1);
  for (int step = 0; step < 3; ++step) {
    ParamBuffer g_ref(layout), g0(layout), g1(layout);
    for (int r = 0; r < R; ++r) {
      const std::vector<float> g = seeded(layout.numel(), 1000 * step + r);
      for (const ParamEntry& e : layout.entries())  // padding stays zero, as in real gradients
        for (int64_t i = e.offset; i < e.offset + e.numel(); ++i) {
          const float gi = g[static_cast<size_t>(i)] / static_cast<float>(R);
          g_ref.data()[i] += gi;
          if (r == c.rank()) g0.data()[i] = g1.data()[i] = gi;
        }
    }
    double want = 0.0;
    for (int r = 0; r < R; ++r) {
      const ShardRange s = shard_range(layout.numel(), R, r);
      want += sum_squares(g_ref.data() + s.begin, s.size());
    }
    const double n0 = dp0.reduce_gradients(g0), n1 = dp1.reduce_gradients(g1);
    if (R <= 2) {
      EXPECT_EQ(n0, std::sqrt(want));
      EXPECT_EQ(n1, n0);
    }
    EXPECT_NEAR(n0, grad_norm(g_ref), 1e-9 * grad_norm(g_ref));  // the one-buffer norm, up to summation order
    const float clip = clip_scale(n0, 1.0);
    ref_opt.step(ref, g_ref, 1e-2, clip);
    opt0.step(p0, g0, 1e-2, clip);
    dp1.step(p1, g1, 1e-2, clip);
  }
  if (R <= 2) {
    EXPECT_EQ(0, std::memcmp(p0.data(), ref.data(), sizeof(float) * static_cast<size_t>(layout.numel())));
    EXPECT_EQ(0, std::memcmp(p1.data(), ref.data(), sizeof(float) * static_cast<size_t>(layout.numel())));
    const ShardRange s = dp1.range();
    EXPECT_EQ(
        0, std::memcmp(dp1.m(), ref_opt.m().data() + s.begin, sizeof(float) * static_cast<size_t>(s.size())));
    EXPECT_EQ(
        0, std::memcmp(dp1.v(), ref_opt.v().data() + s.begin, sizeof(float) * static_cast<size_t>(s.size())));
  }
  EXPECT_EQ(dp1.t(), 3);

  // Growth's gather + re-shard: every rank gets the whole moments, and re-sharding keeps each shard.
  AdamW whole = dp1.gather_optimizer();
  if (R <= 2) {
    EXPECT_EQ(0, std::memcmp(whole.m().data(), ref_opt.m().data(), sizeof(float) * layout.numel()));
  }
  const std::vector<float> m_before(dp1.m(), dp1.m() + dp1.range().size());
  dp1.reset_from(whole);
  EXPECT_EQ(std::vector<float>(dp1.m(), dp1.m() + dp1.range().size()), m_before);
  EXPECT_EQ(dp1.t(), 3);
}

// A sharded checkpoint: each rank writes its shard, rank 0 the weights and state.json listing every shard;
// load_checkpoint_moments reads any range back (the re-sharding of a resume on another rank count).
TEST(ShardedCheckpoint, EveryRangeReadsBackFromTheShards) {
  Communicator& c = comm();
  const int R = c.world();
  const ParamLayout layout(tiny());
  ParamBuffer params(layout);
  init_params(params, 3);
  // Moments with known values: element i of m is i, of v is -i.
  const ShardRange s = shard_range(layout.numel(), R, c.rank());
  std::vector<float> m(static_cast<size_t>(s.size())), v(m.size());
  for (int64_t i = 0; i < s.size(); ++i) {
    m[static_cast<size_t>(i)] = static_cast<float>(s.begin + i);
    v[static_cast<size_t>(i)] = -static_cast<float>(s.begin + i);
  }
  // One shared folder: rank 0's name, known to all.
  const std::string run = c.all_gather_strings(
      (fs::temp_directory_path() / ("strata_comm_test_" + std::to_string(::getpid()))).string())[0];
  const std::string dir =
      save_checkpoint_distributed(c, run, 5, params, nullptr, nlohmann::json{{"note", "test"}}, 0, {},
                                  {optimizer_shard_extra(layout, s, m.data(), v.data(), c.rank(), R)});
  EXPECT_EQ(fs::path(dir).filename().string(), "ckpt-00000005");
  const CheckpointInfo info = read_checkpoint_info(dir);
  EXPECT_TRUE(info.has_optimizer());
  EXPECT_EQ(static_cast<int>(info.files.size()), 1 + R);  // the weights and R shards
  for (int world2 : {1, 2, 3, 5})
    for (int r2 = 0; r2 < world2; ++r2) {
      const ShardRange s2 = shard_range(layout.numel(), world2, r2);
      std::vector<float> m2(static_cast<size_t>(s2.size())), v2(m2.size());
      load_checkpoint_moments(info, layout, s2, m2.data(), v2.data());
      for (int64_t i = 0; i < s2.size(); ++i) {
        ASSERT_EQ(m2[static_cast<size_t>(i)], static_cast<float>(s2.begin + i)) << world2 << " " << r2;
        ASSERT_EQ(v2[static_cast<size_t>(i)], -static_cast<float>(s2.begin + i));
      }
    }
  c.barrier();
  if (c.rank() == 0) fs::remove_all(run);
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const int rc = RUN_ALL_TESTS();
  // Every rank must pass: the exit status is the worst over the ranks.
  double worst = rc;
  world_communicator().all_reduce_small(&worst, 1, ReduceOp::kMax);
  finalize_world();
  return static_cast<int>(worst);
}
