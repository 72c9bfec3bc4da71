// engine/shard_map.h: which elements of the flat parameter layout (engine/params.h) a rank's ZeRO-1 optimizer
// state covers on the CUDA backend, split layer by layer so the gradient reduction can follow the backward
// pass: each layer's gradients are reduce-scattered as soon as the backward pass has finished that layer.
//
// Segments. The layout is cut into segments in flat order: each layer's slice of each per-layer tensor kind,
// and each global tensor whole. A segment of n elements over R ranks has a body of R equal chunks of
// c = floor(n / 8R) * 8 elements (a multiple of 8: 16-byte bf16 chunks when the segment starts aligned) and a
// tail of n - R c < 8R elements. Rank r owns chunk r of every body: NCCL reduce-scatters a body into the
// owners and all-gathers it back (equal counts, in place in the flat buffers); the tails are owned by rank
// R - 1 (NCCL reduce to it, broadcast from it). Every element of a tensor has exactly one owner.
//
// Pieces. Rank r's owned ranges, in flat order, are its pieces; its master weights, moments and reduced
// gradients are compact buffers holding the pieces one after another, each starting at a multiple of 8
// elements (the gaps are never written and stay zero).
//
// A world of one owns everything: one piece per tensor, at its own flat offset (compact == flat).
#pragma once

#include <cstdint>
#include <vector>

#include "engine/comm.h"
#include "engine/params.h"

namespace strata {

struct ShardSegment {
  int64_t offset = 0, numel = 0;  // the segment's flat range
  int64_t chunk = 0;              // body elements per rank
  int layer = -1;                 // the layer of a per-layer kind's slice; -1 for a global tensor
  int entry = 0;                  // its tensor: the index in ParamLayout::entries()
  int64_t body = 0;               // chunk x world; the tail is [offset + body, offset + numel)
  int64_t tail() const { return numel - body; }
  // Where this rank's chunk of the body and (the last rank) the tail start in its compact buffers; -1: none.
  int64_t body_compact = -1, tail_compact = -1;
};

struct ShardPiece {
  int64_t begin = 0, end = 0;  // flat range
  int64_t compact = 0;         // where it starts in the rank's compact buffers
  int entry = 0;               // its tensor
  int64_t size() const { return end - begin; }
};

// The elements of `pieces` in a flat buffer, one after another without gaps (what a shard file holds, and
// what a rank sends when the host gathers every rank's pieces); their count; and the way back.
int64_t pieces_size(const std::vector<ShardPiece>& pieces);
void pack_dense(const std::vector<ShardPiece>& pieces, const float* flat, float* dense);
void unpack_dense(const std::vector<ShardPiece>& pieces, const float* dense, float* flat);

class LayerShards {
 public:
  LayerShards() = default;
  LayerShards(const ParamLayout& layout, int world, int rank);

  int world() const { return world_; }
  int rank() const { return rank_; }
  const std::vector<ShardSegment>& segments() const { return segments_; }
  // This rank's pieces, and those of any rank of the same world.
  const std::vector<ShardPiece>& pieces() const { return pieces_; }
  std::vector<ShardPiece> pieces_of(int rank) const;
  // Length of the compact buffers (pieces and alignment gaps), and the elements owned.
  int64_t compact_size() const { return compact_size_; }
  int64_t owned() const;
  // The pieces as flat ranges (checkpoint shard files name them).
  std::vector<ShardRange> ranges() const;
  // The layout's numel.
  int64_t numel() const { return numel_; }

  // flat (numel) -> compact (compact_size(); the alignment gaps left as they are), and back (only the pieces
  // are written).
  void pack(const float* flat, float* compact) const;
  void unpack(const float* compact, float* flat) const;

 private:
  int world_ = 1, rank_ = 0;
  int64_t numel_ = 0, compact_size_ = 0;
  std::vector<ShardSegment> segments_;
  std::vector<ShardPiece> pieces_;
};

}  // namespace strata
