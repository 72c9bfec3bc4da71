#include "growth/learned_width.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/check.h"

namespace strata::growth {
namespace {

using models::Family;

// y (m x n) = a (m x k) * b (k x n) (+ y when accumulate), row-major with leading dimensions.
void sgemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
           float* y, int64_t ldy, bool trans_b = false) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(m),
              static_cast<int>(n), static_cast<int>(k), 1.0f, a, static_cast<int>(lda), b,
              static_cast<int>(ldb), 0.0f, y, static_cast<int>(ldy));
}

// out (cols x rows) = x (rows x cols) transposed.
void transpose(const float* x, int64_t rows, int64_t cols, float* out) {
#pragma omp parallel for schedule(static) if (rows * cols > (int64_t{1} << 16))
  for (int64_t c = 0; c < cols; ++c)
    for (int64_t r = 0; r < rows; ++r) out[c * rows + r] = x[r * cols + c];
}

}  // namespace

LearnedWidth::LearnedWidth(const GrowthPlan& plan, const ParamBuffer& small, double beta1, double beta2,
                           double eps, uint64_t seed)
    : LearnedGrowth(beta1, beta2, eps) {
  STRATA_CHECK(plan.stage.op == Op::kLearn && plan.stage.direction() == Direction::kWidth,
               "LearnedWidth needs a width op=learn plan");
  const models::ModelConfig& a = plan.from;
  const models::ModelConfig& b = plan.to;
  STRATA_CHECK(a.head_dim() == b.head_dim() && a.n_layer == b.n_layer && a.vocab_size == b.vocab_size,
               "LearnedWidth: a width plan keeps the head dim, the depth and the vocabulary");
  const int64_t hs = a.head_dim();
  const bool mha = learned_kv_shares_heads(plan);

  // The matrices, in dots() order: the stream, then per layer its heads, K/V heads and FFN neurons.
  auto add = [&](const std::string& name, int64_t n2, int64_t n) {
    if (n2 == n) return -1;
    Matrix mx;
    mx.name = name;
    mx.rows = n2, mx.cols = n;
    mx.B = Learned(static_cast<size_t>(n2 * n));
    for (int64_t i = 0; i < n; ++i) mx.B.x[static_cast<size_t>(i * n + i)] = 1.0f;
    fill_init({models::InitKind::kNormal, 1.0 / std::sqrt(static_cast<double>(n2))}, mx.B.x.data() + n * n,
              (n2 - n) * n, init_stream_seed(seed ^ 0x1E4F5DA7C3B2A190ull, "learned width:" + name));
    matrices_.push_back(std::move(mx));
    return static_cast<int>(matrices_.size()) - 1;
  };
  const int resid = add("resid", b.d_model, a.d_model);
  std::vector<int> heads, kv, ffn;
  for (int l = 0; l < a.n_layer; ++l) {
    heads.push_back(add(cat("heads.", l), b.n_head, a.n_head));
    kv.push_back(mha ? heads.back() : add(cat("kv_heads.", l), b.n_kv_head, a.n_kv_head));
    ffn.push_back(add(cat("ffn.", l), b.d_ff, a.d_ff));
  }
  STRATA_CHECK(!matrices_.empty(), "LearnedWidth: the plan grows nothing");
  size_t at = 0;
  for (const Matrix& mx : matrices_) {
    offset_.push_back(at);
    at += mx.B.x.size();
  }

  // Axis builders: a segment of `units` (target) from `src_units` (source) units of `width` indices.
  auto seg = [](int64_t dst0, int64_t src0, int64_t units, int64_t src_units, int64_t width, int matrix) {
    return Segment{dst0, src0, units, src_units, width, matrix};
  };
  auto identity = [&](int64_t n) { return Axis{seg(0, 0, n, n, 1, -1)}; };
  const Axis stream{seg(0, 0, b.d_model, a.d_model, 1, resid)};
  auto qheads = [&](int l) { return Axis{seg(0, 0, b.n_head, a.n_head, hs, heads[size_t(l)])}; };
  auto qkv = [&](int l) {
    const int m = kv[size_t(l)];
    return Axis{
        seg(0, 0, b.n_head, a.n_head, hs, heads[size_t(l)]),
        seg(b.n_head * hs, a.n_head * hs, b.n_kv_head, a.n_kv_head, hs, m),
        seg((b.n_head + b.n_kv_head) * hs, (a.n_head + a.n_kv_head) * hs, b.n_kv_head, a.n_kv_head, hs, m)};
  };
  auto neurons = [&](int l) { return Axis{seg(0, 0, b.d_ff, a.d_ff, 1, ffn[size_t(l)])}; };
  auto gate_up = [&](int l) {
    Axis x = neurons(l);
    if (a.family == Family::kLlama) x.push_back(seg(b.d_ff, a.d_ff, b.d_ff, a.d_ff, 1, ffn[size_t(l)]));
    return x;
  };
  // Identity segments of unchanged axes carry matrix -1 already (add() returned -1 for them).
  const ParamLayout big_layout(b);
  for (const ParamEntry& e : small.layout().entries()) {
    const std::string& n = e.spec.name;
    const ParamEntry* be = big_layout.find(n);
    STRATA_CHECK(be != nullptr, "LearnedWidth: the grown layout lacks '", n, "'");
    Tensor t;
    t.name = n;
    t.two_d = e.spec.shape.size() == 2;
    t.rows = e.spec.shape[0], t.rows2 = be->spec.shape[0];
    if (t.two_d) t.cols = e.spec.shape[1], t.cols2 = be->spec.shape[1];
    const int layers = e.spec.per_layer ? a.n_layer : 1;
    for (int l = 0; l < layers; ++l) {
      Axis rows, cols;
      if (n == "tok_embedding" || n == "pos_embedding" || n == "lm_head") {
        rows = identity(t.rows), cols = stream;
      } else if (n == "attn_norm" || n == "mlp_norm" || n == "final_norm" || n == "attn_norm_bias" ||
                 n == "mlp_norm_bias" || n == "final_norm_bias" || n == "attn_out_bias" ||
                 n == "mlp_down_bias") {
        rows = stream;
      } else if (n == "attn_qkv") {
        rows = qkv(l), cols = stream;
      } else if (n == "attn_qkv_bias") {
        rows = qkv(l);
      } else if (n == "attn_out") {
        rows = stream, cols = qheads(l);
      } else if (n == "mlp_gate_up" || n == "mlp_up") {
        rows = gate_up(l), cols = stream;
      } else if (n == "mlp_up_bias") {
        rows = neurons(l);
      } else if (n == "mlp_down") {
        rows = stream, cols = neurons(l);
      } else {
        STRATA_CHECK(false, "G_learn in width has no rule for tensor '", n, "'");
      }
      // Every axis must cover the tensor's source and target extents exactly.
      auto extent = [](const Axis& x, bool target) {
        int64_t n_idx = 0;
        for (const Segment& s : x) n_idx += (target ? s.units : s.src_units) * s.width;
        return n_idx;
      };
      STRATA_CHECK(extent(rows, false) == t.rows && extent(rows, true) == t.rows2 &&
                       (!t.two_d || (extent(cols, false) == t.cols && extent(cols, true) == t.cols2)),
                   "G_learn in width: the axes of '", n, "' do not match its shape");
      t.row_axis.push_back(std::move(rows));
      t.col_axis.push_back(std::move(cols));
    }
    t.src.assign(small.data() + e.offset, small.data() + e.offset + e.numel());
    t.src_shape = e.stored_shape();
    tensors_.push_back(std::move(t));
  }
}

bool LearnedWidth::learned(const Axis& axis) {
  return std::any_of(axis.begin(), axis.end(), [](const Segment& s) { return s.matrix >= 0; });
}

std::pair<int64_t, int64_t> LearnedWidth::matrix_shape(int i) const {
  const Matrix& mx = matrices_.at(static_cast<size_t>(i));
  return {mx.rows, mx.cols};
}

const LearnedWidth::Matrix& LearnedWidth::find(const std::string& name) const {
  for (const Matrix& mx : matrices_)
    if (mx.name == name) return mx;
  STRATA_FAIL("G_learn in width: no expansion matrix '", name, "'");
}
const std::vector<float>& LearnedWidth::matrix(const std::string& name) const {
  return find(name).B.x;
}
std::vector<float>& LearnedWidth::matrix(const std::string& name) {
  return const_cast<Matrix&>(find(name)).B.x;
}

void LearnedWidth::expand_rows(const Axis& axis, const float* x, int64_t cols, float* out) const {
  for (const Segment& s : axis) {
    const int64_t ld = s.width * cols;  // one unit's indices, all columns: contiguous
    if (s.matrix < 0) {
      std::memcpy(out + s.dst0 * cols, x + s.src0 * cols, static_cast<size_t>(s.units * ld) * sizeof(float));
      continue;
    }
    const Matrix& mx = matrices_[static_cast<size_t>(s.matrix)];
    sgemm(s.units, ld, s.src_units, mx.B.x.data(), mx.cols, x + s.src0 * cols, ld, out + s.dst0 * cols, ld);
  }
}

void LearnedWidth::expand_cols(const Axis& axis, const float* x, int64_t rows, int64_t cols, int64_t cols2,
                               float* out) const {
  std::vector<float> xt(static_cast<size_t>(rows * cols)), yt(static_cast<size_t>(rows * cols2));
  transpose(x, rows, cols, xt.data());
  expand_rows(axis, xt.data(), rows, yt.data());
  transpose(yt.data(), cols2, rows, out);
}

void LearnedWidth::materialise(ParamBuffer& grown) const {
  for (const Tensor& t : tensors_) {
    float* dst = grown.tensor(t.name);
    STRATA_CHECK(dst != nullptr, "grown layout lacks ", t.name);
    std::vector<float> y(static_cast<size_t>(t.rows2 * t.cols));
    for (size_t l = 0; l < t.row_axis.size(); ++l) {
      const float* x = t.src.data() + static_cast<int64_t>(l) * t.rows * t.cols;
      float* out = dst + static_cast<int64_t>(l) * t.rows2 * t.cols2;
      if (!t.two_d) {
        expand_rows(t.row_axis[l], x, 1, out);
        continue;
      }
      expand_rows(t.row_axis[l], x, t.cols, y.data());
      expand_cols(t.col_axis[l], y.data(), t.rows2, t.cols, t.cols2, out);
    }
  }
}

void LearnedWidth::row_gradients(const Axis& axis, const float* g, const float* x, int64_t n,
                                 std::vector<double>& dots, std::vector<float>& scratch) const {
  for (const Segment& s : axis) {
    if (s.matrix < 0) continue;
    const int64_t ld = s.width * n;
    // dB (units x src_units) = g's segment (units x width n) times x's segment (src_units x width n)^T.
    scratch.resize(static_cast<size_t>(s.units * s.src_units));
    sgemm(s.units, s.src_units, ld, g + s.dst0 * n, ld, x + s.src0 * n, ld, scratch.data(), s.src_units,
          true);
    double* d = dots.data() + offset_[static_cast<size_t>(s.matrix)];
    for (size_t i = 0; i < scratch.size(); ++i) d[i] += scratch[i];
  }
}

std::vector<double> LearnedWidth::dots(const ParamBuffer& grown_grads) const {
  std::vector<double> out(entries(), 0.0);
  std::vector<float> scratch;
  for (const Tensor& t : tensors_) {
    const float* grads = grown_grads.tensor(t.name);
    STRATA_CHECK(grads != nullptr, "grown gradients lack ", t.name);
    for (size_t l = 0; l < t.row_axis.size(); ++l) {
      const float* x = t.src.data() + static_cast<int64_t>(l) * t.rows * t.cols;
      const float* g = grads + static_cast<int64_t>(l) * t.rows2 * t.cols2;
      const Axis& ra = t.row_axis[l];
      if (learned(ra)) {
        // Rows: W' = R Z with Z = W C^T (rows x cols2).
        if (!t.two_d) {
          row_gradients(ra, g, x, 1, out, scratch);
        } else {
          std::vector<float> z(static_cast<size_t>(t.rows * t.cols2));
          expand_cols(t.col_axis[l], x, t.rows, t.cols, t.cols2, z.data());
          row_gradients(ra, g, z.data(), t.cols2, out, scratch);
        }
      }
      if (!t.two_d || !learned(t.col_axis[l])) continue;
      // Columns: W'^T = C Y^T with Y = R W (rows2 x cols).
      std::vector<float> y(static_cast<size_t>(t.rows2 * t.cols)), yt(y.size()),
          gt(static_cast<size_t>(t.rows2 * t.cols2));
      expand_rows(ra, x, t.cols, y.data());
      transpose(y.data(), t.rows2, t.cols, yt.data());
      transpose(g, t.rows2, t.cols2, gt.data());
      row_gradients(t.col_axis[l], gt.data(), yt.data(), t.rows2, out, scratch);
    }
  }
  return out;
}

void LearnedWidth::step_from_dots(const std::vector<double>& dots, double lr) {
  STRATA_CHECK(dots.size() == entries(), "G_learn in width: ", dots.size(), " gradients for ", entries(),
               " expansion entries");
  ++t_;
  for (size_t i = 0; i < matrices_.size(); ++i) adam(matrices_[i].B, dots.data() + offset_[i], lr);
}

std::vector<TensorView> LearnedWidth::tensors() const {
  std::vector<TensorView> out;
  for (const Matrix& mx : matrices_) add_views(out, "B", mx.name, {mx.rows, mx.cols}, mx.B);
  for (const Tensor& t : tensors_) out.push_back({"src." + t.name, DType::kF32, t.src_shape, t.src.data()});
  return out;
}

void LearnedWidth::load(const SafetensorsFile& f, long t) {
  for (Matrix& mx : matrices_) load_learned(f, "B", mx.name, mx.B);
  for (Tensor& x : tensors_) load_tensor(f, "src." + x.name, x.src);
  t_ = t;
}

std::unique_ptr<LearnedGrowth> make_learned_growth(const GrowthPlan& plan, const ParamBuffer& small,
                                                   double beta1, double beta2, double eps, uint64_t seed) {
  if (plan.stage.direction() == Direction::kWidth)
    return std::make_unique<LearnedWidth>(plan, small, beta1, beta2, eps, seed);
  return std::make_unique<LearnedDepth>(plan, small, beta1, beta2, eps);
}

}  // namespace strata::growth
