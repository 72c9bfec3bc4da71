// The communicator and host data parallelism (engine/comm.h, engine/data_parallel.h). ctest runs this binary
// twice: as one process (a world of one) and under `mpirun -np 2` (the MPI communicator). Every rank builds
// every rank's inputs from seeds, so each checks the collectives against sums it computes itself, and the
// data-parallel step against AdamW::step on the whole mean gradient.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <numeric>
#include <random>

#include "engine/checkpoint.h"
#include "engine/comm.h"
#include "engine/data_parallel.h"
#include "engine/optim.h"
#include "engine/params.h"
#include "engine/shard_map.h"
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
// load_checkpoint_moments reads any set of ranges back (the re-sharding of a resume on another rank count or
// backend). Written and read both ways the state is split: contiguous ranges (the CPU backend) and layer-wise
// pieces (engine/shard_map.h, the CUDA backend), which leave out the alignment gaps between tensors.
TEST(ShardedCheckpoint, EveryRangeReadsBackFromTheShards) {
  Communicator& c = comm();
  const int R = c.world();
  const ParamLayout layout(tiny());
  ParamBuffer params(layout);
  init_params(params, 3);
  std::vector<bool> in_tensor(static_cast<size_t>(layout.numel()), false);
  for (const ParamEntry& e : layout.entries())
    std::fill(in_tensor.begin() + e.offset, in_tensor.begin() + e.offset + e.numel(), true);
  const auto contiguous = [&](int world, int rank) {
    return std::vector<ShardRange>{shard_range(layout.numel(), world, rank)};
  };
  const auto layerwise = [&](int world, int rank) { return LayerShards(layout, world, rank).ranges(); };
  // One shared folder: rank 0's name, known to all.
  const std::string run = c.all_gather_strings(
      (fs::temp_directory_path() / ("strata_comm_test_" + std::to_string(::getpid()))).string())[0];
  long step = 5;
  for (const bool written_layerwise : {false, true}) {
    const std::vector<ShardRange> mine = written_layerwise ? layerwise(R, c.rank()) : contiguous(R, c.rank());
    // Moments with known values: element i of m is i, of v is -i.
    std::vector<float> m, v;
    for (const ShardRange& r : mine)
      for (int64_t i = r.begin; i < r.end; ++i) {
        m.push_back(static_cast<float>(i));
        v.push_back(-static_cast<float>(i));
      }
    const std::string dir =
        save_checkpoint_distributed(c, run, step, params, nullptr, nlohmann::json{{"note", "test"}}, 0, {},
                                    {optimizer_shard_extra(layout, mine, m.data(), v.data(), c.rank(), R)});
    ++step;
    const CheckpointInfo info = read_checkpoint_info(dir);
    EXPECT_TRUE(info.has_optimizer());
    EXPECT_EQ(static_cast<int>(info.files.size()), 1 + R);  // the weights and R shards
    for (int world2 : {1, 2, 3, 5})
      for (int r2 = 0; r2 < world2; ++r2)
        for (const bool read_layerwise : {false, true}) {
          const std::vector<ShardRange> want = read_layerwise ? layerwise(world2, r2) : contiguous(world2, r2);
          int64_t n = 0;
          for (const ShardRange& r : want) n += r.size();
          std::vector<float> m2(static_cast<size_t>(n), 7.0f), v2(m2.size(), 7.0f);
          load_checkpoint_moments(info, layout, want, m2.data(), v2.data());
          size_t k = 0;
          for (const ShardRange& r : want)
            for (int64_t i = r.begin; i < r.end; ++i, ++k) {
              // A gap between tensors reads as 0 unless the writer's split held it.
              const float e = in_tensor[static_cast<size_t>(i)] || !written_layerwise ? static_cast<float>(i) : 0.0f;
              ASSERT_EQ(m2[k], e) << written_layerwise << " " << world2 << " " << r2 << " " << i;
              ASSERT_EQ(v2[k], -e);
            }
        }
  }
  c.barrier();
  if (c.rank() == 0) fs::remove_all(run);
}

// The layer-wise split (engine/shard_map.h): the ranks' pieces hold every tensor element once and no gap;
// bodies are equal 8-aligned chunks, tails (< 8 R elements) are the last rank's; compact offsets are 8-aligned
// and pack / unpack round-trip the pieces.
TEST(LayerShards, EveryTensorElementHasOneOwner) {
  const ParamLayout layout(tiny());
  for (int R : {1, 2, 3, 4, 7}) {
    std::vector<int> owners(static_cast<size_t>(layout.numel()), 0);
    for (int r = 0; r < R; ++r) {
      const LayerShards s(layout, R, r);
      int64_t owned = 0;
      for (const ShardPiece& p : s.pieces()) {
        EXPECT_EQ(p.compact % 8, 0) << R << " " << r;
        EXPECT_LE(p.compact + p.size(), s.compact_size());
        if (R == 1) {
          EXPECT_EQ(p.compact, p.begin);
        }
        for (int64_t i = p.begin; i < p.end; ++i) ++owners[static_cast<size_t>(i)];
        owned += p.size();
      }
      EXPECT_EQ(owned, s.owned());
      std::vector<float> flat(static_cast<size_t>(layout.numel())), compact(static_cast<size_t>(s.compact_size()));
      for (size_t i = 0; i < flat.size(); ++i) flat[i] = static_cast<float>(i);
      s.pack(flat.data(), compact.data());
      std::vector<float> back(flat.size(), -1.0f);
      s.unpack(compact.data(), back.data());
      for (const ShardPiece& p : s.pieces())
        for (int64_t i = p.begin; i < p.end; ++i) ASSERT_EQ(back[size_t(i)], flat[size_t(i)]);
    }
    for (const ParamEntry& e : layout.entries())
      for (int64_t i = e.offset; i < e.offset + e.numel(); ++i) ASSERT_EQ(owners[size_t(i)], 1) << R << " " << i;
    int64_t in_tensors = 0;
    for (const ParamEntry& e : layout.entries()) in_tensors += e.numel();
    EXPECT_EQ(std::accumulate(owners.begin(), owners.end(), int64_t{0}), in_tensors) << "gaps are owned";
    const LayerShards s0(layout, R, 0);
    for (const ShardSegment& g : s0.segments()) {
      EXPECT_EQ(g.chunk % 8, 0);
      EXPECT_EQ(g.body, g.chunk * R);
      EXPECT_LT(g.tail(), R == 1 ? 1 : 8 * R);
      if (R > 1) {
        EXPECT_EQ(g.layer >= 0, layout.entries()[size_t(g.entry)].spec.per_layer);
      }
    }
  }
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
