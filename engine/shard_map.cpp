// engine/shard_map.cpp: ZeRO-1's layer-wise shards (engine/shard_map.h).
#include "engine/shard_map.h"

#include <algorithm>

#include "engine/check.h"

namespace strata {
namespace {
constexpr int64_t kAlign = 8;  // elements: 16 bytes of bf16
int64_t align_up(int64_t x) {
  return (x + kAlign - 1) / kAlign * kAlign;
}
}  // namespace

LayerShards::LayerShards(const ParamLayout& layout, int world, int rank)
    : world_(world), rank_(rank), numel_(layout.numel()) {
  STRATA_CHECK(world >= 1 && rank >= 0 && rank < world, "LayerShards: rank ", rank, " of ", world);
  const std::vector<ParamEntry>& entries = layout.entries();
  for (size_t i = 0; i < entries.size(); ++i) {
    const ParamEntry& e = entries[i];
    const int64_t per = e.spec.per_layer ? e.spec.numel_per_layer() : e.numel();
    const int64_t count = world == 1 || !e.spec.per_layer ? 1 : e.layers;
    for (int64_t l = 0; l < count; ++l) {
      ShardSegment s;
      s.offset = e.offset + l * per;
      s.numel = world == 1 ? e.numel() : per;
      s.chunk = world == 1 ? s.numel : s.numel / (kAlign * world) * kAlign;
      s.body = s.chunk * world;
      s.layer = e.spec.per_layer && world > 1 ? static_cast<int>(l) : -1;
      s.entry = static_cast<int>(i);
      if (s.numel > 0) segments_.push_back(s);
    }
  }
  pieces_ = pieces_of(rank);
  size_t k = 0;  // pieces_of adds each segment's body chunk, then (last rank) its tail, skipping empty ones
  for (ShardSegment& s : segments_) {
    if (s.chunk > 0) s.body_compact = pieces_[k++].compact;
    if (rank == world - 1 && s.tail() > 0) s.tail_compact = pieces_[k++].compact;
  }
  STRATA_CHECK(k == pieces_.size(), "LayerShards: pieces and segments disagree");
  if (world == 1) {
    compact_size_ = numel_;
  } else {
    compact_size_ = pieces_.empty() ? 0 : align_up(pieces_.back().compact + pieces_.back().size());
  }
}

std::vector<ShardPiece> LayerShards::pieces_of(int rank) const {
  STRATA_CHECK(rank >= 0 && rank < world_, "LayerShards::pieces_of: rank ", rank, " of ", world_);
  std::vector<ShardPiece> out;
  int64_t at = 0;
  auto add = [&](int64_t begin, int64_t end, int entry) {
    if (begin >= end) return;
    // One process: compact == flat. Else one piece after another, each aligned.
    const int64_t compact = world_ == 1 ? begin : at;
    out.push_back({begin, end, compact, entry});
    at = align_up(compact + (end - begin));
  };
  for (const ShardSegment& s : segments_) {
    add(s.offset + rank * s.chunk, s.offset + (rank + 1) * s.chunk, s.entry);
    if (rank == world_ - 1) add(s.offset + s.body, s.offset + s.numel, s.entry);
  }
  return out;
}

int64_t pieces_size(const std::vector<ShardPiece>& pieces) {
  int64_t n = 0;
  for (const ShardPiece& p : pieces) n += p.size();
  return n;
}

void pack_dense(const std::vector<ShardPiece>& pieces, const float* flat, float* dense) {
  for (const ShardPiece& p : pieces) dense = std::copy(flat + p.begin, flat + p.end, dense);
}

void unpack_dense(const std::vector<ShardPiece>& pieces, const float* dense, float* flat) {
  for (const ShardPiece& p : pieces) {
    std::copy(dense, dense + p.size(), flat + p.begin);
    dense += p.size();
  }
}

int64_t LayerShards::owned() const {
  return pieces_size(pieces_);
}

std::vector<ShardRange> LayerShards::ranges() const {
  std::vector<ShardRange> out;
  out.reserve(pieces_.size());
  for (const ShardPiece& p : pieces_) out.push_back({p.begin, p.end});
  return out;
}

void LayerShards::pack(const float* flat, float* compact) const {
  for (const ShardPiece& p : pieces_) std::copy(flat + p.begin, flat + p.end, compact + p.compact);
}

void LayerShards::unpack(const float* compact, float* flat) const {
  for (const ShardPiece& p : pieces_)
    std::copy(compact + p.compact, compact + p.compact + p.size(), flat + p.begin);
}

}  // namespace strata
