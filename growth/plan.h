// growth/plan.h: a growth plan, the pure half of every growth operator.
//
// make_plan() turns a source architecture and a Stage into the target architecture and, for every tensor of
// the target's tensor table, a rule that says where each element comes from:
//
//   dst[l'][r, c] = src[layer(l')][rows.src[r], cols.src[c]] * rows.scale[r] * cols.scale[c]
//
// An index mapped to -1 is new: that element is drawn from the target tensor's init distribution (new_fill
// kInit) or set to zero (kZero). A target layer may instead be filled whole from the init distribution or
// with zeros (LayerFill). Depth operators use identity row/column maps and a layer map; width operators use
// one layer map (identity) and row/column maps per axis kind (residual dim, head, FFN neuron). Masks name the
// elements whose values are scaled by c, ramped 0 -> 1 over mask_steps after growth (G_random).
//
// The plan holds no weights: apply (growth/apply.h) executes it on parameter buffers, and the same plan maps
// the optimizer moments. It prints itself (describe()), which is what `strata train` logs at a growth.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "growth/spec.h"
#include "models/model_config.h"

namespace strata::growth {

// target index -> source index (-1: new), with a factor per target index (empty: all 1).
struct AxisMap {
  std::vector<int32_t> src;
  std::vector<float> scale;
  int64_t size() const { return static_cast<int64_t>(src.size()); }
  float factor(int64_t i) const { return scale.empty() ? 1.0f : scale[static_cast<size_t>(i)]; }
  // The identity on n indices, factor 1.
  static AxisMap identity(int64_t n);
  bool is_identity() const;
};

enum class LayerFill { kCopy, kZero, kInit };

struct LayerRule {
  int src = 0;  // source layer (per-layer tensors; 0 for global ones)
  LayerFill fill = LayerFill::kCopy;
};

struct TensorRule {
  std::string name;
  bool per_layer = false;
  AxisMap rows;                           // first axis (the only one of a 1-D tensor)
  AxisMap cols;                           // second axis; empty for 1-D tensors
  LayerFill new_fill = LayerFill::kZero;  // elements on a new (-1) row or column
  std::vector<LayerRule> layers;          // one per target layer (one for a global tensor)
};

// Elements of one layer of a tensor (layer -1: a global tensor) that the G_random mask scales: those whose
// row is in [row_begin, row_end) or whose column is in [col_begin, col_end) (either range may be empty).
struct MaskSlice {
  std::string name;
  int layer = -1;
  int64_t row_begin = 0, row_end = 0, col_begin = 0, col_end = 0;
};

struct GrowthPlan {
  Stage stage;
  models::ModelConfig from, to;
  std::vector<int> layer_map;  // target layer -> source layer (depth: the layer list; width: identity)
  std::vector<bool>
      new_layer;  // depth zero/random: target layers that are not the first copy of their source
  std::vector<TensorRule> tensors;  // the target's tensor table order
  std::vector<MaskSlice> masks;     // op=random only
  // Human-readable: operator, architectures, layer map, one line per tensor rule, masks.
  std::string describe() const;
};

// The plan of `stage` applied to a model `from`. Errors (one line naming the stage) when it does not fit
// (see target_config()).
GrowthPlan make_plan(const models::ModelConfig& from, const Stage& stage);

// G_learn in width (growth/learned_width.h): whether the K/V heads share the query heads' expansion matrix
// (multi-head attention before and after the growth) instead of getting their own (grouped-query attention).
bool learned_kv_shares_heads(const GrowthPlan& p);

// The mask factor `steps_since` optimizer steps after growth (0 at the first step after it): min(1, s / K).
float mask_factor(long steps_since, long mask_steps);

}  // namespace strata::growth
