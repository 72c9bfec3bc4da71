#include "growth/apply.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "engine/check.h"
#include "models/model_config_json.h"

namespace strata::growth {
namespace {

const ParamEntry& entry(const ParamBuffer& b, const std::string& name) {
  const ParamEntry* e = b.layout().find(name);
  STRATA_CHECK(e != nullptr, "layout has no tensor '", name, "'");
  return *e;
}

// Streams of growth draws: distinct from the init streams of init_params (different seed mixing) and per
// (purpose, tensor, layer).
uint64_t growth_stream(uint64_t seed, const std::string& purpose, const std::string& name, int64_t layer) {
  return init_stream_seed(seed ^ 0xA5A5F00DC0FFEE11ull, purpose + ":" + name, layer);
}

// One target layer of one tensor: dst[r, c] from src layer `sl` through the rule's axis maps. `moments`:
// copy without factors, new elements 0. `fresh` holds init draws for new elements (null unless needed).
void gather(const TensorRule& r, const float* src, int64_t src_cols, float* dst, const float* fresh,
            bool moments) {
  const int64_t rows = r.rows.size();
  const int64_t cols = r.cols.src.empty() ? 1 : r.cols.size();
  const bool two_d = !r.cols.src.empty();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows; ++i) {
    const int32_t sr = r.rows.src[static_cast<size_t>(i)];
    const float rf = moments ? 1.0f : r.rows.factor(i);
    float* out = dst + i * cols;
    const float* fr = fresh ? fresh + i * cols : nullptr;
    for (int64_t j = 0; j < cols; ++j) {
      const int32_t sc = two_d ? r.cols.src[static_cast<size_t>(j)] : 0;
      if (sr < 0 || sc < 0) {
        out[j] = (moments || r.new_fill == LayerFill::kZero || fr == nullptr) ? 0.0f : fr[j];
      } else {
        const float cf = (moments || !two_d) ? 1.0f : r.cols.factor(j);
        out[j] = src[static_cast<int64_t>(sr) * src_cols + sc] * rf * cf;
      }
    }
  }
}

bool has_new(const TensorRule& r) {
  for (int32_t s : r.rows.src)
    if (s < 0) return true;
  for (int32_t s : r.cols.src)
    if (s < 0) return true;
  return false;
}

}  // namespace

bool layer_draws(const TensorRule& r, const ParamEntry& de, int64_t l, uint64_t seed, float* out) {
  const int64_t per = de.spec.numel_per_layer();
  const LayerFill fill = r.layers.at(static_cast<size_t>(l)).fill;
  if (fill == LayerFill::kInit) {
    fill_init(de.spec.init, out, per, growth_stream(seed, "init", r.name, l));
    return true;
  }
  if (fill == LayerFill::kCopy && r.new_fill == LayerFill::kInit && has_new(r)) {
    fill_init(de.spec.init, out, per, growth_stream(seed, "new", r.name, l));
    return true;
  }
  return false;
}

bool rule_draws(const TensorRule& r) {
  if (r.new_fill == LayerFill::kInit && has_new(r)) return true;
  return std::any_of(r.layers.begin(), r.layers.end(),
                     [](const LayerRule& lr) { return lr.fill == LayerFill::kInit; });
}

void noise_draws(const ParamEntry& de, int64_t l, uint64_t seed, float* out) {
  fill_init(de.spec.init, out, de.spec.numel_per_layer(), growth_stream(seed, "noise", de.spec.name, l));
}

namespace {

void run_plan(const GrowthPlan& plan, const ParamBuffer& src, ParamBuffer& dst, uint64_t seed, bool moments) {
  STRATA_CHECK(src.layout().config().n_layer == plan.from.n_layer &&
                   dst.layout().config().n_layer == plan.to.n_layer &&
                   src.layout().config().d_model == plan.from.d_model &&
                   dst.layout().config().d_model == plan.to.d_model,
               "growth: buffers do not match the plan's architectures");
  for (const TensorRule& r : plan.tensors) {
    const ParamEntry& de = entry(dst, r.name);
    const ParamEntry& se = entry(src, r.name);
    const int64_t per = de.spec.numel_per_layer(), sper = se.spec.numel_per_layer();
    const int64_t scols = se.spec.shape.size() == 2 ? se.spec.shape[1] : 1;
    const bool need_fresh = !moments && r.new_fill == LayerFill::kInit && has_new(r);
    // One target layer; `fresh` is the caller's scratch for init draws of new elements.
    auto fill_layer = [&](int64_t l, std::vector<float>& fresh) {
      const LayerRule& lr = r.layers[static_cast<size_t>(l)];
      float* out = dst.data() + de.offset + l * per;
      if (lr.fill == LayerFill::kZero || (moments && lr.fill == LayerFill::kInit)) {
        std::fill(out, out + per, 0.0f);
        return;
      }
      if (lr.fill == LayerFill::kInit) {
        layer_draws(r, de, l, seed, out);
        return;
      }
      STRATA_CHECK(lr.src >= 0 && lr.src < se.layers, "growth: source layer ", lr.src, " of ", r.name);
      if (need_fresh) {
        fresh.resize(static_cast<size_t>(per));
        layer_draws(r, de, l, seed, fresh.data());
      }
      gather(r, src.data() + se.offset + static_cast<int64_t>(lr.src) * sper, scols, out,
             need_fresh ? fresh.data() : nullptr, moments);
    };
    const int64_t layers = static_cast<int64_t>(r.layers.size());
    if (layers == 1) {
      std::vector<float> fresh;
      fill_layer(0, fresh);  // gather parallelises over rows
      continue;
    }
    // Layers in parallel (each init draw is one serial stream per layer); gather's own loop runs nested, so
    // on one thread.
#pragma omp parallel
    {
      std::vector<float> fresh;
#pragma omp for schedule(dynamic)
      for (int64_t l = 0; l < layers; ++l) fill_layer(l, fresh);
    }
  }
}

}  // namespace

void apply_params(const GrowthPlan& plan, const ParamBuffer& src, ParamBuffer& dst, uint64_t seed) {
  run_plan(plan, src, dst, seed, false);
  const double a = plan.stage.noise;
  if (a <= 0) return;
  for (const ParamEntry& de : dst.layout().entries()) {
    if (!de.spec.per_layer) continue;
    const int64_t per = de.spec.numel_per_layer();
#pragma omp parallel
    {
      std::vector<float> e(static_cast<size_t>(per));
#pragma omp for schedule(dynamic)
      for (int64_t l = 0; l < de.layers; ++l) {
        noise_draws(de, l, seed, e.data());
        float* w = dst.data() + de.offset + l * per;
        for (int64_t i = 0; i < per; ++i)
          w[i] = static_cast<float>((1.0 - a) * w[i] + a * e[static_cast<size_t>(i)]);
      }
    }
  }
}

void map_moments(const GrowthPlan& plan, const ParamBuffer& src, ParamBuffer& dst) {
  run_plan(plan, src, dst, 0, true);
}

// ---- GrowthMask
// --------------------------------------------------------------------------------------------

namespace {

// Calls f(index into the flat buffer) for every masked element of slice s.
template <class F>
void for_each_masked(const ParamBuffer& b, const MaskSlice& s, F&& f) {
  const ParamEntry& e = entry(b, s.name);
  const int64_t rows = e.spec.shape[0];
  const int64_t cols = e.spec.shape.size() == 2 ? e.spec.shape[1] : 1;
  const int64_t base = e.offset + (s.layer >= 0 ? s.layer * e.spec.numel_per_layer() : 0);
  for (int64_t r = 0; r < rows; ++r) {
    const bool row_in = r >= s.row_begin && r < s.row_end;
    for (int64_t c = 0; c < cols; ++c)
      if (row_in || (c >= s.col_begin && c < s.col_end)) f(base + r * cols + c);
  }
}

}  // namespace

GrowthMask::GrowthMask(std::vector<MaskSlice> slices, long growth_step, long mask_steps)
    : slices_(std::move(slices)), growth_step_(growth_step), mask_steps_(mask_steps) {}

bool GrowthMask::active(long steps_done) const {
  return !slices_.empty() && steps_done - growth_step_ < mask_steps_;
}

void GrowthMask::begin(ParamBuffer& params, long steps_done) {
  STRATA_CHECK(!applied_, "GrowthMask::begin twice");
  c_ = factor(steps_done);
  raw_.clear();
  float* p = params.data();
  for (const MaskSlice& s : slices_)
    for_each_masked(params, s, [&](int64_t i) {
      raw_.push_back(p[i]);
      p[i] *= c_;
    });
  applied_ = true;
}

void GrowthMask::end(ParamBuffer& params, ParamBuffer* grads) {
  STRATA_CHECK(applied_, "GrowthMask::end without begin");
  size_t k = 0;
  float* p = params.data();
  float* g = grads ? grads->data() : nullptr;
  for (const MaskSlice& s : slices_)
    for_each_masked(params, s, [&](int64_t i) {
      p[i] = raw_[k++];
      if (g) g[i] *= c_;
    });
  applied_ = false;
}

// ---- LearnedGrowth, LearnedDepth
// ------------------------------------------------------------------------------------------

void LearnedGrowth::adam(Learned& s, const double* g, double lr) const {
  const double bc1 = 1.0 - std::pow(beta1_, static_cast<double>(t_));
  const double bc2 = 1.0 - std::pow(beta2_, static_cast<double>(t_));
  for (size_t i = 0; i < s.x.size(); ++i) {
    s.m[i] = static_cast<float>(beta1_ * s.m[i] + (1.0 - beta1_) * g[i]);
    s.v[i] = static_cast<float>(beta2_ * s.v[i] + (1.0 - beta2_) * g[i] * g[i]);
    s.x[i] -= static_cast<float>(lr * (s.m[i] / bc1) / (std::sqrt(s.v[i] / bc2) + eps_));
  }
}

void LearnedGrowth::add_views(std::vector<TensorView>& out, const std::string& letter,
                              const std::string& name, const std::vector<int64_t>& shape, const Learned& s) {
  out.push_back({letter + "." + name, DType::kF32, shape, s.x.data()});
  out.push_back({"m" + letter + "." + name, DType::kF32, shape, s.m.data()});
  out.push_back({"v" + letter + "." + name, DType::kF32, shape, s.v.data()});
}

void LearnedGrowth::load_learned(const SafetensorsFile& f, const std::string& letter, const std::string& name,
                                 Learned& s) {
  load_tensor(f, letter + "." + name, s.x);
  load_tensor(f, "m" + letter + "." + name, s.m);
  load_tensor(f, "v" + letter + "." + name, s.v);
}

void LearnedGrowth::load_tensor(const SafetensorsFile& f, const std::string& name, std::vector<float>& out) {
  const SafeTensor& st = f.get(name);
  STRATA_REQUIRE(st.numel() == static_cast<int64_t>(out.size()), f.path(), ": tensor '", name, "' has ",
                 st.numel(), " elements, expected ", out.size());
  f.to_f32(st, out.data(), out.size());
}

LearnedDepth::LearnedDepth(const GrowthPlan& plan, const ParamBuffer& small, double beta1, double beta2,
                           double eps)
    : LearnedGrowth(beta1, beta2, eps), L_(plan.from.n_layer), L2_(plan.to.n_layer) {
  STRATA_CHECK(plan.stage.op == Op::kLearn && plan.stage.direction() == Direction::kDepth,
               "LearnedDepth needs a depth op=learn plan");
  for (const ParamEntry& e : small.layout().entries()) {
    if (!e.spec.per_layer) continue;
    Kind k;
    k.name = e.spec.name;
    k.per_layer = e.spec.numel_per_layer();
    k.src.assign(small.data() + e.offset, small.data() + e.offset + e.numel());
    k.src_shape = e.stored_shape();
    k.D = Learned(static_cast<size_t>(L2_) * L_);
    for (int l = 0; l < L2_; ++l)
      k.D.x[static_cast<size_t>(l) * L_ + plan.layer_map[static_cast<size_t>(l)]] = 1.0f;
    kinds_.push_back(std::move(k));
  }
}

void LearnedDepth::materialise(ParamBuffer& grown) const {
  for (const Kind& k : kinds_) {
    float* out = grown.tensor(k.name);
    STRATA_CHECK(out != nullptr, "grown layout lacks ", k.name);
    for (int l = 0; l < L2_; ++l) {
      float* o = out + static_cast<int64_t>(l) * k.per_layer;
      std::fill(o, o + k.per_layer, 0.0f);
      for (int j = 0; j < L_; ++j) {
        const float d = k.D.x[static_cast<size_t>(l) * L_ + j];
        if (d == 0.0f) continue;
        const float* w = k.src.data() + static_cast<int64_t>(j) * k.per_layer;
#pragma omp parallel for simd schedule(static)
        for (int64_t i = 0; i < k.per_layer; ++i) o[i] += d * w[i];
      }
    }
  }
}

std::vector<double> LearnedDepth::dots(const ParamBuffer& grown_grads) const {
  std::vector<double> out;
  out.reserve(kinds_.size() * static_cast<size_t>(L2_) * L_);
  for (const Kind& k : kinds_) {
    const float* g = grown_grads.tensor(k.name);
    STRATA_CHECK(g != nullptr, "grown gradients lack ", k.name);
    for (int l = 0; l < L2_; ++l)
      for (int j = 0; j < L_; ++j) {
        const float* gl = g + static_cast<int64_t>(l) * k.per_layer;
        const float* w = k.src.data() + static_cast<int64_t>(j) * k.per_layer;
        double dot = 0.0;
#pragma omp parallel for reduction(+ : dot) schedule(static)
        for (int64_t i = 0; i < k.per_layer; ++i) dot += static_cast<double>(gl[i]) * w[i];
        out.push_back(dot);
      }
  }
  return out;
}

void LearnedDepth::step_from_dots(const std::vector<double>& dots, double lr) {
  const size_t per_kind = static_cast<size_t>(L2_) * L_;
  STRATA_CHECK(dots.size() == kinds_.size() * per_kind, "G_learn: ", dots.size(), " mixing gradients for ",
               kinds_.size(), " kinds of ", L2_, " x ", L_);
  ++t_;
  for (size_t k = 0; k < kinds_.size(); ++k) adam(kinds_[k].D, dots.data() + k * per_kind, lr);
}

const std::vector<float>& LearnedDepth::mixing(const std::string& name) const {
  for (const Kind& k : kinds_)
    if (k.name == name) return k.D.x;
  STRATA_FAIL("G_learn: no mixing matrix for tensor '", name, "'");
}

std::vector<TensorView> LearnedDepth::tensors() const {
  std::vector<TensorView> out;
  const std::vector<int64_t> dshape{L2_, L_};
  for (const Kind& k : kinds_) {
    add_views(out, "D", k.name, dshape, k.D);
    out.push_back({"src." + k.name, DType::kF32, k.src_shape, k.src.data()});
  }
  return out;
}

void LearnedDepth::load(const SafetensorsFile& f, long t) {
  for (Kind& k : kinds_) {
    load_learned(f, "D", k.name, k.D);
    load_tensor(f, "src." + k.name, k.src);
  }
  t_ = t;
}

// ---- grow_in_place
// -----------------------------------------------------------------------------------------

nlohmann::json GrowthRecord::to_json() const {
  return {{"stage", stage},
          {"spec", spec},
          {"step", step},
          {"tokens", tokens},
          {"flops", flops},
          {"from", models::model_config_to_json(from)},
          {"to", models::model_config_to_json(to)},
          {"wall_s", wall_s},
          {"params_before", params_before},
          {"params_after", params_after}};
}

ParamBuffer grow_state(const GrowthPlan& plan, const ParamBuffer& params, AdamW& opt, uint64_t seed) {
  const ParamLayout layout(plan.to);
  ParamBuffer grown(layout);
  apply_params(plan, params, grown, seed);
  if (plan.stage.optimizer == OptimizerPolicy::kMap) {
    ParamBuffer m(layout);
    map_moments(plan, opt.m(), m);
    opt.m() = std::move(m);
    ParamBuffer v(layout);
    map_moments(plan, opt.v(), v);
    opt.v() = std::move(v);
  } else {
    opt.m() = ParamBuffer();
    opt.v() = ParamBuffer();
    opt.m() = ParamBuffer(layout);
    opt.v() = ParamBuffer(layout);
    opt.set_t(0);
  }
  return grown;
}

void grow_in_place(const GrowthPlan& plan, Model& model, AdamW& opt, uint64_t seed) {
  model.release_gradients();  // old grads + activations go first
  model.regrow(grow_state(plan, model.params(), opt, seed));
}

}  // namespace strata::growth
