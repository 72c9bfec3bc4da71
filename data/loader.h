// data/loader.h: the distributed, resumable data loader over token shards (data/shard.h).
//
// Samples. A sample is a window of T+1 tokens at offset i*T within one shard, i in [0, (n-1)/T) for a shard
// of n tokens; windows never cross shards. inputs = window[0, T), targets = window[1, T] (next-token
// prediction). Consecutive windows overlap by one token: the m = (n-1)/T samples' inputs cover the shard's
// first m*T tokens exactly once; a shard with fewer than T+1 tokens contributes no sample.
//
// Order of an epoch (S = all usable samples of all shards). With shuffle = true:
//   1. the shard order is a permutation of the shards drawn from (seed, epoch);
//   2. the shards' samples follow in that order, each shard's samples permuted by a draw from
//      (seed, epoch, shard index in the constructor's list).
// With shuffle = false both permutations are the identity (natural order: shard 0's samples 0, 1, ..., then
// shard 1's, ...). Draws use std::mt19937_64 (its output is fixed by the C++ standard) seeded through
// splitmix64, and our own Fisher-Yates with rejection sampling, so the order is identical with every standard
// library. Only the shard permutation, cumulative sample counts and one shard's sample permutation (cached)
// are held: memory is O(shards + samples of one shard), never O(S).
//
// Ranks. Global batch k of an epoch is the global samples [k*B*R, (k+1)*B*R); rank r of R takes the r-th
// slice of B samples, [k*B*R + r*B, k*B*R + (r+1)*B). Ranks are disjoint and together cover the global batch.
//
// Tail. An epoch has floor(S / (B*R)) global batches (= optimizer steps); the last S mod (B*R) samples of the
// epoch's order are skipped, and the next epoch starts (with a new order, so different samples fall in the
// tail).
//
// State. LoaderState is the exact position, {epoch, next_sample = the first global sample of the next global
// batch}, the same on every rank (a checkpoint from rank 0 resumes all ranks), plus a fingerprint (seed, B,
// T, world, total tokens, shard count, a hash of the shard sizes in order) that restore() checks so a state
// cannot silently resume another dataset or layout. The shuffle flag is the caller's config and is not part
// of the state.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/shard.h"

namespace strata::data {

struct LoaderOptions {
  int batch_size = 0;  // B: samples per rank per batch
  int seq_len = 0;     // T
  int rank = 0;
  int world = 1;  // R
  uint64_t seed = 0;
  bool shuffle = true;
  uint32_t vocab_size = 0;  // > 0: every token of every shard is checked < vocab_size at construction
};

struct LoaderState {
  uint64_t epoch = 0;
  uint64_t next_sample = 0;  // next global sample index within the epoch (a multiple of B*R)
  // Fingerprint, checked by restore().
  uint64_t seed = 0;
  int batch_size = 0, seq_len = 0, world = 0;
  uint64_t total_tokens = 0;
  uint64_t num_shards = 0;
  uint64_t shard_layout =
      0;  // FNV-1a of the shards' token counts in order: catches reordered/replaced shards

  nlohmann::json to_json() const;
  // Errors (strata::Error) are one line naming the missing or bad field.
  static LoaderState from_json(const nlohmann::json& j);
};

class DataLoader {
 public:
  // Opens and validates every shard (Shard::open with opts.vocab_size). Errors: no shards, a bad option
  // (names it), an epoch with fewer samples than one global batch B*R.
  DataLoader(std::vector<std::string> shard_paths, const LoaderOptions& opts);
  ~DataLoader();
  DataLoader(DataLoader&&) noexcept;
  DataLoader& operator=(DataLoader&&) noexcept;

  // Writes this rank's next batch: inputs and targets (B, T) each, row-major. Advances; rolls over epochs.
  void next(int32_t* inputs, int32_t* targets);

  LoaderState state() const;
  // Refuses (strata::Error, one line naming the field) a state from another dataset, seed, B, T or world, or
  // a position outside the epoch.
  void restore(const LoaderState& s);
  // Back to epoch 0, sample 0 (validation passes).
  void reset();

  uint64_t samples_per_epoch() const;  // usable samples, all shards (including the skipped tail)
  uint64_t batches_per_epoch() const;  // global batches per epoch = optimizer steps per epoch
  uint64_t epoch() const;
  const LoaderOptions& options() const;
  size_t num_shards() const;
  uint64_t total_tokens() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace strata::data
