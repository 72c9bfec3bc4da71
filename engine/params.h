// engine/params.h: layer-indexed parameter storage.
//
// A ParamLayout places every tensor of a model's tensor table (models/model_config.h) in one flat array, in
// table order: a per-layer kind is one contiguous (L, shape...) block with the layer outermost, a global
// tensor is its shape. Parameters, gradients and the two AdamW moments are ParamBuffers with the same layout,
// so an optimizer step is one loop over flat arrays, and growth (issue 4) is a re-layout to L' layers plus
// copies of layer slices, done identically for every buffer.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "models/model_config.h"

namespace strata {

struct ParamEntry {
  models::TensorSpec spec;
  int64_t offset = 0;  // first element in the flat array
  int64_t layers = 1;  // L for per-layer kinds, 1 for global tensors
  int64_t numel() const { return spec.numel_per_layer() * layers; }
  // Shape as stored: (L, shape...) for per-layer kinds, shape otherwise.
  std::vector<int64_t> stored_shape() const;
};

class ParamLayout {
 public:
  ParamLayout() = default;
  explicit ParamLayout(const models::ModelConfig& cfg);

  const models::ModelConfig& config() const { return cfg_; }
  const std::vector<ParamEntry>& entries() const { return entries_; }
  int64_t numel() const { return numel_; }
  // The entry called `name`, or null when this family has no such tensor.
  const ParamEntry* find(const std::string& name) const;

 private:
  models::ModelConfig cfg_;
  std::vector<ParamEntry> entries_;
  int64_t numel_ = 0;
};

// Zero-initialised floats from calloc: a large buffer comes from fresh zero pages of the OS, so allocating
// it costs nothing until it is written (growth allocates whole model states it may overwrite at once).
class ZeroedFloats {
 public:
  ZeroedFloats() = default;
  explicit ZeroedFloats(size_t n);
  ZeroedFloats(const ZeroedFloats& o);
  ZeroedFloats(ZeroedFloats&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr, o.n_ = 0; }
  ZeroedFloats& operator=(ZeroedFloats o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    return *this;
  }
  ~ZeroedFloats();
  float* data() { return p_; }
  const float* data() const { return p_; }
  size_t size() const { return n_; }

 private:
  float* p_ = nullptr;
  size_t n_ = 0;
};

// One flat fp32 array laid out by a ParamLayout, zero-initialised. Every tensor starts at a multiple of 16
// elements from the base.
class ParamBuffer {
 public:
  ParamBuffer() = default;
  explicit ParamBuffer(const ParamLayout& layout);

  float* data() { return data_.data(); }
  const float* data() const { return data_.data(); }
  int64_t numel() const { return static_cast<int64_t>(data_.size()); }
  const ParamLayout& layout() const { return layout_; }

  // The tensor called `name` (all its layers), or null when absent from the layout.
  float* tensor(const std::string& name);
  const float* tensor(const std::string& name) const;
  // Layer `l` of a per-layer tensor.
  float* layer(const std::string& name, int l);

  void zero();

 private:
  ParamLayout layout_;
  ZeroedFloats data_;
};

// Fills `params` by each tensor's InitRule, from a seed: every tensor draws from its own stream seeded by
// (seed, tensor name), so adding a tensor kind does not change the others. Normal draws use a portable
// Box-Muller on std::mt19937_64 (identical with every standard library).
void init_params(ParamBuffer& params, uint64_t seed);

// Fills n values by `rule` from one stream seeded by `stream_seed` (the draw init_params makes per tensor).
void fill_init(const models::InitRule& rule, float* out, int64_t n, uint64_t stream_seed);
// A stream seed for (seed, name, index): distinct per tensor name and index (growth draws per layer).
uint64_t init_stream_seed(uint64_t seed, const std::string& name, int64_t index = -1);

}  // namespace strata
