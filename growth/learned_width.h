// growth/learned_width.h: G_learn in width (LiGO-style learned expansion), the width half of LearnedGrowth
// (growth/apply.h).
//
// Every axis a width stage grows gets an expansion matrix B (n' x n, in the axis's units), and every tensor
// of the grown model is its small-model tensor with each axis expanded: W' = B_rows W B_cols^T. Axes the
// stage keeps, the vocabulary and the positions stay identity. The matrices:
//   "resid"        (C' x C): the residual stream, shared by every tensor that reads or writes it (embeddings,
//                  norm gains and biases, the stream side of every projection, the LM head);
//   "heads.<l>"    (NH' x NH, each entry times I_hs): layer l's query heads (Q rows, the attention output's
//                  columns); under multi-head attention (NH = KVH before and after) also its K and V heads;
//   "kv_heads.<l>" (KVH' x KVH, times I_hs): layer l's K and V heads under grouped-query attention;
//   "ffn.<l>"      (F' x F): layer l's FFN neurons (gate and up rows, down columns, the up bias).
// Head-granular matrices keep each head's dims together, so RoPE rotates the same pairs as in the small
// model. Each B starts as [I; N(0, 1/n')] (the paper's init): the old indices map to themselves, so the small
// model's weights sit bit for bit in the grown tensors' old block, and each new index is a random combination
// of the old ones. Gradients: with W' = R W C^T, dR = G' (W C^T)^T and dC = G'^T (R W), head blocks summed
// over their hs dims, each matrix summed over every tensor and layer that shares it (in double, in a fixed
// order).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "growth/apply.h"

namespace strata::growth {

class LearnedWidth final : public LearnedGrowth {
 public:
  // `seed` draws the random rows of every B (one stream per matrix).
  LearnedWidth(const GrowthPlan& plan, const ParamBuffer& small, double beta1, double beta2, double eps,
               uint64_t seed);
  // Writes every tensor of `grown` (plan.to's layout).
  void materialise(ParamBuffer& grown) const override;
  // dL/dB of every matrix, in matrix order, each (n' x n) row-major.
  std::vector<double> dots(const ParamBuffer& grown_grads) const override;
  void step_from_dots(const std::vector<double>& dots, double lr) override;
  // "B.<matrix>", "mB.<matrix>", "vB.<matrix>" (n' x n) and "src.<tensor>" (the small model, stored shapes).
  std::vector<TensorView> tensors() const override;
  void load(const SafetensorsFile& f, long t) override;

  int matrix_count() const { return static_cast<int>(matrices_.size()); }
  const std::string& matrix_name(int i) const { return matrices_.at(static_cast<size_t>(i)).name; }
  // (n', n) of matrix i.
  std::pair<int64_t, int64_t> matrix_shape(int i) const;
  // Matrix `name`, (n' x n) row-major; the non-const form lets tests perturb it.
  const std::vector<float>& matrix(const std::string& name) const;
  std::vector<float>& matrix(const std::string& name);

 private:
  struct Matrix {
    std::string name;
    int64_t rows = 0, cols = 0;  // n', n
    Learned B;
  };
  // A run of one axis: `units` target units made from `src_units` source units, each unit `width` indices
  // wide, from source index src0 to target index dst0; matrix -1 is the identity (units == src_units).
  struct Segment {
    int64_t dst0 = 0, src0 = 0, units = 0, src_units = 0, width = 1;
    int matrix = -1;
  };
  using Axis = std::vector<Segment>;
  struct Tensor {
    std::string name;
    int64_t rows = 0, cols = 1, rows2 = 0, cols2 = 1;  // per layer, small and grown (cols 1 for 1-D)
    bool two_d = false;
    std::vector<Axis> row_axis, col_axis;  // per layer
    std::vector<float> src;                // the small model's tensor, all layers
    std::vector<int64_t> src_shape;
  };

  const Matrix& find(const std::string& name) const;
  static bool learned(const Axis& axis);  // whether any segment has a matrix
  // out (rows2 x cols) = the axis applied to the rows of x (rows x cols).
  void expand_rows(const Axis& axis, const float* x, int64_t cols, float* out) const;
  // out (rows x cols2) = the axis applied to the columns of x (rows x cols).
  void expand_cols(const Axis& axis, const float* x, int64_t rows, int64_t cols, int64_t cols2,
                   float* out) const;
  // Adds to `dots` each matrix segment's gradient, for y = the axis applied to the rows of x (x: src rows x
  // n, g: dL/dy, rows2 x n).
  void row_gradients(const Axis& axis, const float* g, const float* x, int64_t n, std::vector<double>& dots,
                     std::vector<float>& scratch) const;

  std::vector<Matrix> matrices_;
  std::vector<size_t> offset_;  // each matrix's first entry in dots()
  size_t entries() const { return offset_.back() + matrices_.back().B.x.size(); }  // dots()'s length
  std::vector<Tensor> tensors_;
};

}  // namespace strata::growth
