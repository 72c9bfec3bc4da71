// Tests for data/loader.h: windows against the raw shard tokens, the rank split (disjoint, complete up to the
// documented tail), the shuffle (per epoch, per seed, portable), resume through JSON text, and the errors.
#include "data/loader.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "data/shard.h"
#include "engine/check.h"
#include "tests/test_util.h"

namespace strata::data {
namespace {

namespace fs = std::filesystem;

constexpr uint32_t kVocab = 50257;

// (shard index in the constructor's list, sample index within the shard)
using SampleId = std::pair<size_t, size_t>;

struct Batch {
  std::vector<int32_t> inputs, targets;
  bool operator==(const Batch&) const = default;
};

class LoaderTest : public strata::test::TempDirTest {
 protected:
  // Writes shards of the given token counts (seeded random tokens in [1, kVocab)) and returns their paths.
  std::vector<std::string> make_shards(const std::vector<size_t>& sizes, uint64_t seed,
                                       const std::string& prefix = "s") {
    std::mt19937_64 rng(seed);
    std::vector<std::string> paths;
    for (size_t s = 0; s < sizes.size(); ++s) {
      std::vector<uint32_t> t(sizes[s]);
      for (auto& v : t) v = 1 + static_cast<uint32_t>(rng() % (kVocab - 1));
      paths.push_back((dir_ / cat(prefix, s, ".bin")).string());
      write_shard(paths.back(), t, kVocab);
      tokens_.push_back(std::move(t));
    }
    return paths;
  }

  // Every sample of the shards made so far, in natural order, and the map from a window's tokens back to it.
  void index_samples(int seq_len) {
    const auto t = static_cast<size_t>(seq_len);
    natural_.clear();
    windows_.clear();
    for (size_t s = 0; s < tokens_.size(); ++s) {
      const size_t n = tokens_[s].size();
      const size_t samples = n >= 1 ? (n - 1) / t : 0;
      for (size_t i = 0; i < samples; ++i) {
        std::vector<int32_t> w(tokens_[s].begin() + static_cast<long>(i * t),
                               tokens_[s].begin() + static_cast<long>(i * t + t + 1));
        ASSERT_TRUE(windows_.emplace(w, SampleId{s, i}).second) << "duplicate window: reseed the test data";
        natural_.emplace_back(s, i);
      }
    }
  }

  // The samples of a batch: each row must be a window of T+1 shard tokens, targets shifted by one.
  std::vector<SampleId> ids(const Batch& b, int batch_size, int seq_len) {
    const auto t = static_cast<size_t>(seq_len);
    std::vector<SampleId> out;
    for (size_t r = 0; r < static_cast<size_t>(batch_size); ++r) {
      std::vector<int32_t> w(b.inputs.begin() + static_cast<long>(r * t),
                             b.inputs.begin() + static_cast<long>(r * t + t));
      w.push_back(b.targets[r * t + t - 1]);
      for (size_t j = 0; j + 1 < t; ++j)
        EXPECT_EQ(b.targets[r * t + j], b.inputs[r * t + j + 1]) << "row " << r;
      const auto it = windows_.find(w);
      if (it == windows_.end()) {
        ADD_FAILURE() << "row " << r << " is not a window of the shards";
        out.emplace_back(SIZE_MAX, SIZE_MAX);
      } else {
        out.push_back(it->second);
      }
    }
    return out;
  }

  std::vector<std::vector<uint32_t>> tokens_;
  std::vector<SampleId> natural_;
  std::map<std::vector<int32_t>, SampleId> windows_;
};

// The next `n` batches; outputs poisoned with -1 (no token is negative) so an unwritten element fails.
std::vector<Batch> take(DataLoader& dl, size_t n) {
  const auto bt = static_cast<size_t>(dl.options().batch_size) * static_cast<size_t>(dl.options().seq_len);
  std::vector<Batch> out(n);
  for (auto& b : out) {
    b.inputs.assign(bt, -1);
    b.targets.assign(bt, -1);
    dl.next(b.inputs.data(), b.targets.data());
    EXPECT_TRUE(std::none_of(b.inputs.begin(), b.inputs.end(), [](int32_t v) { return v < 0; }));
    EXPECT_TRUE(std::none_of(b.targets.begin(), b.targets.end(), [](int32_t v) { return v < 0; }));
  }
  return out;
}

LoaderOptions options(int b, int t, int rank, int world, uint64_t seed, bool shuffle = true) {
  LoaderOptions o;
  o.batch_size = b;
  o.seq_len = t;
  o.rank = rank;
  o.world = world;
  o.seed = seed;
  o.shuffle = shuffle;
  o.vocab_size = kVocab;
  return o;
}

using strata::test::expect_one_line_error;

// T = 8. Samples per shard: 12, 0 (shorter than T+1), 1 (exactly T+1), 32, 7, 4 -> 56.
const std::vector<size_t> kSizes = {100, 5, 9, 257, 64, 33};
constexpr int kT = 8;
constexpr uint64_t kSamples = 56;

TEST_F(LoaderTest, NaturalOrderWindowsMatchTheShards) {
  const auto paths = make_shards(kSizes, 1);
  index_samples(kT);
  ASSERT_EQ(natural_.size(), kSamples);
  for (const int b : {1, 3}) {
    DataLoader dl(paths, options(b, kT, 0, 1, 0, /*shuffle=*/false));
    EXPECT_EQ(dl.samples_per_epoch(), kSamples);
    EXPECT_EQ(dl.batches_per_epoch(), kSamples / static_cast<uint64_t>(b));
    EXPECT_EQ(dl.total_tokens(), 468u);
    EXPECT_EQ(dl.num_shards(), kSizes.size());
    for (uint64_t epoch = 0; epoch < 2; ++epoch) {  // natural order, every epoch
      EXPECT_EQ(dl.epoch(), epoch);
      std::vector<SampleId> got;
      for (const Batch& batch : take(dl, dl.batches_per_epoch())) {
        const auto row = ids(batch, b, kT);
        got.insert(got.end(), row.begin(), row.end());
      }
      const std::vector<SampleId> want(natural_.begin(), natural_.begin() + static_cast<long>(got.size()));
      EXPECT_EQ(got, want);
    }
  }
}

TEST_F(LoaderTest, RanksAreDisjointAndCompleteUpToTheTail) {
  const auto paths = make_shards(kSizes, 2);
  index_samples(kT);
  const std::set<SampleId> all(natural_.begin(), natural_.end());
  for (const int b : {3, 5}) {
    for (const int world : {1, 2, 3}) {
      SCOPED_TRACE(cat("B=", b, " R=", world));
      const auto gb = static_cast<uint64_t>(b * world);
      // The same global batches taken by one rank with batch B*R: rank r's rows are its slice r.
      DataLoader global(paths, options(b * world, kT, 0, 1, 9));
      const std::vector<Batch> global_batches = take(global, global.batches_per_epoch());

      std::set<SampleId> seen;
      for (int rank = 0; rank < world; ++rank) {
        DataLoader dl(paths, options(b, kT, rank, world, 9));
        ASSERT_EQ(dl.batches_per_epoch(), kSamples / gb);
        const std::vector<Batch> batches = take(dl, dl.batches_per_epoch());
        EXPECT_EQ(dl.epoch(), 1u);
        for (size_t k = 0; k < batches.size(); ++k) {
          const size_t bt = static_cast<size_t>(b) * kT;
          const auto slice = [&](const std::vector<int32_t>& v) {
            return std::vector<int32_t>(v.begin() + static_cast<long>(rank * bt),
                                        v.begin() + static_cast<long>((rank + 1) * bt));
          };
          EXPECT_EQ(batches[k].inputs, slice(global_batches[k].inputs)) << "rank " << rank << " batch " << k;
          EXPECT_EQ(batches[k].targets, slice(global_batches[k].targets))
              << "rank " << rank << " batch " << k;
          for (const SampleId& id : ids(batches[k], b, kT)) {
            EXPECT_TRUE(all.count(id));
            EXPECT_TRUE(seen.insert(id).second)
                << "sample (" << id.first << ", " << id.second << ") taken twice";
          }
        }
      }
      // Together the ranks took every sample but the tail of S mod (B*R).
      EXPECT_EQ(seen.size(), kSamples / gb * gb);
      EXPECT_EQ(all.size() - seen.size(), kSamples % gb);
    }
  }
}

// Sample order of one epoch with B = 1, R = 1 (no tail: every sample once).
class LoaderShuffleTest : public LoaderTest {
 protected:
  std::vector<SampleId> order(DataLoader& dl) {
    std::vector<SampleId> out;
    for (const Batch& b : take(dl, dl.batches_per_epoch())) out.push_back(ids(b, 1, kT).front());
    return out;
  }
};

TEST_F(LoaderShuffleTest, OrderDependsOnEpochAndSeedOnly) {
  const auto paths = make_shards(kSizes, 3);
  index_samples(kT);
  const std::vector<SampleId> sorted_all = natural_;

  DataLoader a(paths, options(1, kT, 0, 1, 42));
  DataLoader a2(paths, options(1, kT, 0, 1, 42));
  DataLoader c(paths, options(1, kT, 0, 1, 43));
  const auto a_e0 = order(a), a_e1 = order(a);
  const auto a2_e0 = order(a2), a2_e1 = order(a2);
  const auto c_e0 = order(c);

  for (const auto* o : {&a_e0, &a_e1, &c_e0}) {  // each epoch is a permutation of all samples
    auto s = *o;
    std::sort(s.begin(), s.end());
    EXPECT_EQ(s, sorted_all);
  }
  EXPECT_NE(a_e0, natural_);
  EXPECT_NE(a_e0, a_e1);   // a new order every epoch
  EXPECT_EQ(a_e0, a2_e0);  // deterministic for a seed
  EXPECT_EQ(a_e1, a2_e1);
  EXPECT_NE(a_e0, c_e0);  // different between seeds

  // Within an epoch, a shard's samples are contiguous (shard order, then sample order) and not in natural
  // order.
  std::vector<size_t> shard_runs;
  for (const SampleId& id : a_e0)
    if (shard_runs.empty() || shard_runs.back() != id.first) shard_runs.push_back(id.first);
  EXPECT_EQ(shard_runs.size(), 5u) << "5 shards have samples";
  std::vector<size_t> in_shard3;
  for (const SampleId& id : a_e0)
    if (id.first == 3) in_shard3.push_back(id.second);
  EXPECT_FALSE(std::is_sorted(in_shard3.begin(), in_shard3.end()));
}

// The order is fixed by (seed, epoch): the same on every standard library and machine. Recorded from this
// implementation; a change here breaks bit-exact resume of existing runs.
TEST_F(LoaderShuffleTest, OrderIsPortable) {
  std::mt19937_64 engine;  // the C++ standard fixes its 10000th output ([rand.predef])
  engine.discard(9999);
  ASSERT_EQ(engine(), 9981545732273789042ull);
  const auto paths = make_shards({9, 17, 25}, 4);  // T = 4 below: 2, 4 and 6 samples
  DataLoader dl(paths, options(1, 4, 0, 1, 12345));
  std::vector<SampleId> got;
  std::vector<int32_t> in(4), tg(4);
  for (uint64_t e = 0; e < 2; ++e) {
    for (uint64_t k = 0; k < dl.batches_per_epoch(); ++k) {
      dl.next(in.data(), tg.data());
      // Identify the sample by its first token's position.
      bool found = false;
      for (size_t s = 0; s < tokens_.size() && !found; ++s)
        for (size_t i = 0; (i + 1) * 4 < tokens_[s].size() && !found; ++i)
          if (std::equal(in.begin(), in.end(), tokens_[s].begin() + static_cast<long>(i * 4))) {
            got.emplace_back(s, i);
            found = true;
          }
      ASSERT_TRUE(found);
    }
  }
  const std::vector<SampleId> want = {{0, 0}, {0, 1}, {1, 2}, {1, 0}, {1, 3}, {1, 1},
                                      {2, 5}, {2, 1}, {2, 0}, {2, 3}, {2, 2}, {2, 4},  // epoch 0
                                      {1, 0}, {1, 3}, {1, 2}, {1, 1}, {2, 3}, {2, 2},
                                      {2, 4}, {2, 0}, {2, 5}, {2, 1}, {0, 0}, {0, 1}};  // epoch 1
  EXPECT_EQ(got, want);
}

TEST_F(LoaderTest, ResumeThroughJsonMatchesAnUninterruptedRun) {
  const auto paths = make_shards(kSizes, 5);
  index_samples(kT);
  // B = 2, R = 2: 14 global batches per epoch. Interrupt at 11 (mid-epoch; the next 8 cross into epoch 1) and
  // at 14 (exactly at the boundary), for both ranks, and also resume rank 1 from rank 0's state (states are
  // rank-free).
  for (const int rank : {0, 1}) {
    DataLoader full(paths, options(2, kT, rank, 2, 77));
    ASSERT_EQ(full.batches_per_epoch(), 14u);
    const std::vector<Batch> uninterrupted = take(full, 30);
    for (const size_t n : {size_t{11}, size_t{14}, size_t{27}}) {
      for (const int saver_rank : {rank, 0}) {
        SCOPED_TRACE(cat("rank ", rank, " interrupted after ", n, " saved by rank ", saver_rank));
        DataLoader first(paths, options(2, kT, saver_rank, 2, 77));
        take(first, n);
        const LoaderState saved = first.state();
        EXPECT_EQ(saved.epoch, n / 14);
        EXPECT_EQ(saved.next_sample, (n % 14) * 4);
        const std::string text = saved.to_json().dump();

        DataLoader resumed(paths, options(2, kT, rank, 2, 77));
        resumed.restore(LoaderState::from_json(nlohmann::json::parse(text)));
        EXPECT_EQ(resumed.epoch(), n / 14);
        const std::vector<Batch> rest = take(resumed, 30 - n);
        for (size_t k = 0; k < rest.size(); ++k)
          EXPECT_EQ(rest[k], uninterrupted[n + k]) << "batch " << n + k;
      }
    }
  }
}

TEST_F(LoaderTest, StateJsonRoundTrip) {
  LoaderState s;
  s.epoch = 3;
  s.next_sample = 1234;
  s.seed = 0xFEDCBA9876543210ull;  // above INT64_MAX: must survive JSON
  s.batch_size = 16;
  s.seq_len = 1024;
  s.world = 8;
  s.total_tokens = 10'000'000'000ull;
  s.num_shards = 100;
  s.shard_layout = 0xF00DF00DF00DF00Dull;
  const LoaderState r = LoaderState::from_json(nlohmann::json::parse(s.to_json().dump()));
  EXPECT_EQ(r.epoch, s.epoch);
  EXPECT_EQ(r.next_sample, s.next_sample);
  EXPECT_EQ(r.seed, s.seed);
  EXPECT_EQ(r.batch_size, s.batch_size);
  EXPECT_EQ(r.seq_len, s.seq_len);
  EXPECT_EQ(r.world, s.world);
  EXPECT_EQ(r.total_tokens, s.total_tokens);
  EXPECT_EQ(r.num_shards, s.num_shards);
  EXPECT_EQ(r.shard_layout, s.shard_layout);

  nlohmann::json j = s.to_json();
  j.erase("seed");
  expect_one_line_error([&] { LoaderState::from_json(j); }, {"loader state", "missing field 'seed'"});
  j = s.to_json();
  j["epoch"] = "three";
  expect_one_line_error([&] { LoaderState::from_json(j); }, {"field 'epoch'", "non-negative integer", "three"});
  j = s.to_json();
  j["next_sample"] = -1;
  expect_one_line_error([&] { LoaderState::from_json(j); }, {"field 'next_sample'", "-1"});
  j = s.to_json();
  j["batch_size"] = 1e12;
  expect_one_line_error([&] { LoaderState::from_json(j); }, {"field 'batch_size'"});
  j = s.to_json();
  j["world"] = 5'000'000'000ll;
  expect_one_line_error([&] { LoaderState::from_json(j); }, {"field 'world'", "fits in int"});
  expect_one_line_error([&] { LoaderState::from_json(nlohmann::json::array()); }, {"loader state", "JSON object"});
}

TEST_F(LoaderTest, RestoreRefusesAnotherRun) {
  const auto paths = make_shards(kSizes, 6);
  DataLoader dl(paths, options(2, kT, 0, 2, 1));
  const LoaderState good = [&] {
    DataLoader other(paths, options(2, kT, 1, 2, 1));
    take(other, 3);
    return other.state();
  }();
  dl.restore(good);  // same run: accepted

  auto state_of = [](DataLoader&& other) { return other.state(); };
  expect_one_line_error([&] { dl.restore(state_of(DataLoader(paths, options(2, kT, 0, 2, 2)))); },
               {"loader state", "seed 2 differs from this loader's 1"});
  expect_one_line_error([&] { dl.restore(state_of(DataLoader(paths, options(3, kT, 0, 2, 1)))); },
               {"batch_size 3 differs from this loader's 2"});
  expect_one_line_error([&] { dl.restore(state_of(DataLoader(paths, options(2, 4, 0, 2, 1)))); },
               {"seq_len 4 differs from this loader's 8"});
  expect_one_line_error([&] { dl.restore(state_of(DataLoader(paths, options(2, kT, 0, 1, 1)))); },
               {"world 1 differs from this loader's 2"});
  // Another dataset: fewer shards; or as many shards of other sizes.
  const std::vector<std::string> fewer(paths.begin(), paths.end() - 1);
  expect_one_line_error([&] { dl.restore(state_of(DataLoader(fewer, options(2, kT, 0, 2, 1)))); },
               {"num_shards 5 differs from this loader's 6", "different dataset"});
  auto other_sizes = kSizes;
  other_sizes[0] += 1;
  const auto other_paths = make_shards(other_sizes, 7, "o");
  expect_one_line_error([&] { dl.restore(state_of(DataLoader(other_paths, options(2, kT, 0, 2, 1)))); },
               {"total_tokens 469 differs from this loader's 468", "different dataset"});
  // The same shards in another order: same count and total, different layout.
  std::vector<std::string> reordered(paths.rbegin(), paths.rend());
  expect_one_line_error([&] { dl.restore(state_of(DataLoader(reordered, options(2, kT, 0, 2, 1)))); },
               {"shard_layout", "shards reordered or replaced"});
  // Out of range positions.
  LoaderState bad = good;
  bad.next_sample = 6;
  expect_one_line_error([&] { dl.restore(bad); }, {"next_sample 6", "not a multiple", "4"});
  bad.next_sample = 56;
  expect_one_line_error([&] { dl.restore(bad); }, {"next_sample 56", "past the last global batch", "14 batches"});
  // A refused state leaves the position alone.
  DataLoader fresh(paths, options(2, kT, 0, 2, 1));
  fresh.restore(good);
  EXPECT_EQ(take(dl, 1)[0], take(fresh, 1)[0]);
}

TEST_F(LoaderTest, ResetReturnsToTheStart) {
  const auto paths = make_shards(kSizes, 8);
  DataLoader dl(paths, options(4, kT, 0, 1, 5));
  const auto first = take(dl, 3);
  take(dl, 20);  // past the end of epoch 0 (14 batches)
  EXPECT_EQ(dl.epoch(), 1u);
  dl.reset();
  EXPECT_EQ(dl.epoch(), 0u);
  EXPECT_EQ(dl.state().next_sample, 0u);
  EXPECT_EQ(take(dl, 3), first);
}

TEST_F(LoaderTest, TooSmallDataset) {
  const auto paths = make_shards(kSizes, 9);
  expect_one_line_error([&] { DataLoader(paths, options(20, kT, 0, 3, 0)); },
               {"has 56 samples of T+1 = 9 tokens", "fewer than one global batch", "20 x 3"});
  DataLoader ok(paths, options(28, kT, 1, 2, 0));  // exactly one global batch
  EXPECT_EQ(ok.batches_per_epoch(), 1u);
  const auto tiny = make_shards({3, 8}, 10, "t");  // both shorter than T+1
  expect_one_line_error([&] { DataLoader(tiny, options(1, kT, 0, 1, 0)); }, {"has 0 samples"});
}

TEST_F(LoaderTest, BadOptions) {
  const auto paths = make_shards(kSizes, 11);
  expect_one_line_error([&] { DataLoader({}, options(1, kT, 0, 1, 0)); }, {"no shards"});
  expect_one_line_error([&] { DataLoader(paths, options(0, kT, 0, 1, 0)); }, {"batch_size", "got 0"});
  expect_one_line_error([&] { DataLoader(paths, options(1, -3, 0, 1, 0)); }, {"seq_len", "got -3"});
  expect_one_line_error([&] { DataLoader(paths, options(1, kT, 0, 0, 0)); }, {"world", "got 0"});
  expect_one_line_error([&] { DataLoader(paths, options(1, kT, 2, 2, 0)); }, {"rank 2", "world 2"});
  expect_one_line_error([&] { DataLoader(paths, options(1, kT, -1, 2, 0)); }, {"rank -1"});
}

TEST_F(LoaderTest, ShardsAreValidatedAgainstTheVocabulary) {
  const auto paths = make_shards(kSizes, 12);
  LoaderOptions o = options(1, kT, 0, 1, 0);
  o.vocab_size = 100;  // the random tokens go up to kVocab
  expect_one_line_error([&] { DataLoader(paths, o); }, {"shard '", "outside the vocabulary (size 100)"});
  const std::vector<std::string> missing = {paths[0], (dir_ / "nope.bin").string()};
  expect_one_line_error([&] { DataLoader(missing, options(1, kT, 0, 1, 0)); }, {"nope.bin", "cannot open"});
}

}  // namespace
}  // namespace strata::data
