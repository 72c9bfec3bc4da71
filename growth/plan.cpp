#include "growth/plan.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "engine/check.h"

namespace strata::growth {
namespace {

using models::Family;
using models::ModelConfig;

// n -> n2 indices: [0, n) map to themselves; a new index i copies (i - n) mod n when `copy`, else is -1.
AxisMap grow_axis(int64_t n, int64_t n2, bool copy) {
  AxisMap m;
  m.src.resize(static_cast<size_t>(n2));
  for (int64_t i = 0; i < n2; ++i)
    m.src[static_cast<size_t>(i)] = static_cast<int32_t>(i < n ? i : copy ? (i - n) % n : -1);
  return m;
}

// The fan-in split of a copied axis (Net2Net / bert2BERT, uneven): a source index with k > 0 copies keeps
// alpha of its weight and each copy gets (1 - alpha) / k, so a consumer summing over the axis sees the same
// total. Indices without copies keep factor 1.
AxisMap split(AxisMap m, double alpha) {
  std::vector<int> copies(m.src.size(), 0);
  for (size_t i = 0; i < m.src.size(); ++i)
    if (m.src[i] >= 0 && static_cast<size_t>(m.src[i]) != i) ++copies[static_cast<size_t>(m.src[i])];
  m.scale.assign(m.src.size(), 1.0f);
  for (size_t i = 0; i < m.src.size(); ++i) {
    const int32_t s = m.src[i];
    if (s < 0) continue;
    const int k = copies[static_cast<size_t>(s)];
    if (k == 0) continue;
    m.scale[i] =
        static_cast<size_t>(s) == i ? static_cast<float>(alpha) : static_cast<float>((1.0 - alpha) / k);
  }
  return m;
}

// A head-granular map expanded to dims: target dim h*hs + e <- source dim heads.src[h]*hs + e (+ offset).
AxisMap expand_heads(const AxisMap& heads, int hs, int32_t offset) {
  AxisMap m;
  for (int64_t h = 0; h < heads.size(); ++h)
    for (int e = 0; e < hs; ++e) {
      const int32_t s = heads.src[static_cast<size_t>(h)];
      m.src.push_back(s < 0 ? -1 : s * hs + e + offset);
      if (!heads.scale.empty()) m.scale.push_back(heads.scale[static_cast<size_t>(h)]);
    }
  return m;
}

AxisMap concat(const AxisMap& a, const AxisMap& b) {
  AxisMap m = a;
  m.src.insert(m.src.end(), b.src.begin(), b.src.end());
  if (!a.scale.empty() || !b.scale.empty()) {
    m.scale = a.scale.empty() ? std::vector<float>(a.src.size(), 1.0f) : a.scale;
    const std::vector<float> bs = b.scale.empty() ? std::vector<float>(b.src.size(), 1.0f) : b.scale;
    m.scale.insert(m.scale.end(), bs.begin(), bs.end());
  }
  return m;
}

AxisMap scaled(AxisMap m, int64_t first_n, float f) {
  if (m.scale.empty()) m.scale.assign(m.src.size(), 1.0f);
  for (int64_t i = 0; i < first_n && i < m.size(); ++i) m.scale[static_cast<size_t>(i)] *= f;
  return m;
}

bool is_norm_gain(const std::string& n) {
  return n == "attn_norm" || n == "mlp_norm" || n == "final_norm";
}
bool is_residual_output(const std::string& n) {
  return n == "attn_out" || n == "attn_out_bias" || n == "mlp_down" || n == "mlp_down_bias";
}

std::string range_text(const std::vector<int32_t>& v) {
  // Compresses runs: "0-127, new x 128" style.
  std::string out;
  size_t i = 0;
  while (i < v.size()) {
    size_t j = i;
    if (v[i] < 0) {
      while (j + 1 < v.size() && v[j + 1] < 0) ++j;
      out += cat(out.empty() ? "" : " ", "new", j > i ? cat("x", j - i + 1) : "");
    } else {
      while (j + 1 < v.size() && v[j + 1] == v[j] + 1) ++j;
      out += cat(out.empty() ? "" : " ", v[i], j > i ? cat("-", v[j]) : "");
    }
    i = j + 1;
    if (out.size() > 120) return out + " ...";
  }
  return out;
}

const char* fill_name(LayerFill f) {
  return f == LayerFill::kCopy ? "copy" : f == LayerFill::kZero ? "zero" : "init";
}

}  // namespace

AxisMap AxisMap::identity(int64_t n) {
  AxisMap m;
  m.src.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) m.src[static_cast<size_t>(i)] = static_cast<int32_t>(i);
  return m;
}

bool AxisMap::is_identity() const {
  for (size_t i = 0; i < src.size(); ++i)
    if (src[i] != static_cast<int32_t>(i) || (!scale.empty() && scale[i] != 1.0f)) return false;
  return true;
}

float mask_factor(long steps_since, long mask_steps) {
  if (mask_steps <= 0 || steps_since >= mask_steps) return 1.0f;
  return static_cast<float>(static_cast<double>(std::max(0L, steps_since)) / static_cast<double>(mask_steps));
}

bool learned_kv_shares_heads(const GrowthPlan& p) {
  return p.from.n_kv_head == p.from.n_head && p.to.n_kv_head == p.to.n_head;
}

GrowthPlan make_plan(const ModelConfig& from, const Stage& stage) {
  GrowthPlan p;
  p.stage = stage;
  p.from = from;
  p.to = target_config(from, stage);
  const ModelConfig& a = p.from;
  const ModelConfig& b = p.to;
  const std::vector<models::TensorSpec> table = models::tensor_table(b);

  if (stage.direction() == Direction::kDepth) {
    p.layer_map = target_layers(stage, a.n_layer);
    std::set<int> seen;
    for (int s : p.layer_map) p.new_layer.push_back(!seen.insert(s).second);
    const bool has_new = stage.op == Op::kZero || stage.op == Op::kRandom;
    for (const models::TensorSpec& t : table) {
      TensorRule r;
      r.name = t.name;
      r.per_layer = t.per_layer;
      r.rows = AxisMap::identity(t.shape[0]);
      if (t.shape.size() == 2) r.cols = AxisMap::identity(t.shape[1]);
      if (!t.per_layer) {
        r.layers.push_back({0, LayerFill::kCopy});
      } else {
        for (size_t l = 0; l < p.layer_map.size(); ++l) {
          LayerRule lr{p.layer_map[l], LayerFill::kCopy};
          if (has_new && p.new_layer[l]) {
            if (stage.op == Op::kZero && is_residual_output(t.name)) lr.fill = LayerFill::kZero;
            if (stage.op == Op::kRandom) lr.fill = LayerFill::kInit;
          }
          r.layers.push_back(lr);
        }
      }
      p.tensors.push_back(std::move(r));
    }
    if (stage.op == Op::kRandom) {
      for (size_t l = 0; l < p.layer_map.size(); ++l) {
        if (!p.new_layer[l]) continue;
        for (const models::TensorSpec& t : table)
          if (t.per_layer && is_residual_output(t.name))
            p.masks.push_back({t.name, static_cast<int>(l), 0, t.shape[0], 0, 0});
      }
    }
    return p;
  }

  // Width: C -> C', NH -> NH' (head dim fixed), KVH -> KVH', F -> F'.
  const bool direct = stage.op == Op::kDirect;
  const bool random = stage.op == Op::kRandom;
  // G_learn: old elements copied, new ones zero; LearnedWidth (growth/learned_width.h) then writes every
  // tensor from its expansion matrices, and optimizer=map keeps the old elements' moments.
  const bool learn = stage.op == Op::kLearn;
  const int hs = a.head_dim();
  for (int l = 0; l < b.n_layer; ++l) p.layer_map.push_back(l);
  p.new_layer.assign(static_cast<size_t>(b.n_layer), false);
  const double alpha = stage.split;
  const AxisMap resid = grow_axis(a.d_model, b.d_model, direct);  // the residual stream's dims
  const AxisMap resid_in = direct ? split(resid, alpha) : resid;  // fan-in from the stream
  const AxisMap qheads = grow_axis(a.n_head, b.n_head, direct);
  const AxisMap kvheads = grow_axis(a.n_kv_head, b.n_kv_head, direct);
  const AxisMap qdims = expand_heads(qheads, hs, 0);
  const AxisMap qdims_in = expand_heads(direct ? split(qheads, alpha) : qheads, hs, 0);  // fan-in of attn_out
  const AxisMap qkv_rows = concat(concat(qdims, expand_heads(kvheads, hs, a.n_head * hs)),
                                  expand_heads(kvheads, hs, (a.n_head + a.n_kv_head) * hs));
  const AxisMap ffn = grow_axis(a.d_ff, b.d_ff, direct);
  const AxisMap ffn_in = direct ? split(ffn, alpha) : ffn;
  // G_zero / G_random: new stream dims are zero at growth, so the RMS over C' dims is sqrt(C / C') of the RMS
  // over C; the gains of the old dims are scaled by sqrt(C / C') to compensate (exact for RMSNorm).
  const float gain =
      direct || learn ? 1.0f : static_cast<float>(std::sqrt(static_cast<double>(a.d_model) / b.d_model));
  // GPT-2's MLP input (up) has F rows; LLaMA's gate_up has gate rows then up rows, F each.
  AxisMap gate_up_rows = ffn;
  if (a.family == Family::kLlama) {
    AxisMap up = ffn;
    for (int32_t& s : up.src)
      if (s >= 0) s += a.d_ff;
    gate_up_rows = concat(ffn, up);
  }

  for (const models::TensorSpec& t : table) {
    TensorRule r;
    r.name = t.name;
    r.per_layer = t.per_layer;
    const std::string& n = t.name;
    // fan_out: the tensor writes new stream dims / reads new neurons on its output side (zero under G_zero,
    // random and masked under G_random); otherwise new elements are fan-in weights, drawn from init.
    bool fan_out = false;
    if (n == "tok_embedding") {
      r.rows = AxisMap::identity(t.shape[0]);
      // GPT-2 ties the LM head to this table: its columns are copied; the head's fan-in split is applied
      // through the final norm instead (below).
      r.cols = resid;
      fan_out = true;
    } else if (n == "pos_embedding") {
      r.rows = AxisMap::identity(t.shape[0]);
      r.cols = resid;
      fan_out = true;
    } else if (n == "lm_head") {
      r.rows = AxisMap::identity(t.shape[0]);
      r.cols = resid_in;
    } else if (direct && a.tied_embeddings() && (n == "final_norm" || n == "final_norm_bias")) {
      // The tied LM head reads the final norm through the token embedding, whose columns are copied (they
      // are the stream's input); the fan-in split of the head moves into the final norm's gain and bias.
      r.rows = resid_in;
    } else if (is_norm_gain(n)) {
      r.rows = learn ? resid : scaled(resid, a.d_model, gain);
      r.new_fill = LayerFill::kInit;  // ones
    } else if (n == "attn_norm_bias" || n == "mlp_norm_bias" || n == "final_norm_bias") {
      r.rows = resid;
    } else if (n == "attn_qkv") {
      r.rows = qkv_rows;
      r.cols = resid_in;
    } else if (n == "attn_qkv_bias") {
      r.rows = qkv_rows;
    } else if (n == "attn_out") {
      r.rows = resid;
      r.cols = qdims_in;
      fan_out = true;
    } else if (n == "attn_out_bias" || n == "mlp_down_bias") {
      r.rows = resid;
      fan_out = true;
    } else if (n == "mlp_gate_up" || n == "mlp_up") {
      r.rows = gate_up_rows;
      r.cols = resid_in;
    } else if (n == "mlp_up_bias") {
      r.rows = ffn;
    } else if (n == "mlp_down") {
      r.rows = resid;
      r.cols = ffn_in;
      fan_out = true;
    } else {
      STRATA_CHECK(false, "width growth has no rule for tensor '", n, "'");
    }
    STRATA_CHECK(r.rows.size() == t.shape[0] && (t.shape.size() == 1 || r.cols.size() == t.shape[1]),
                 "width rule for ", n, " does not match its shape");
    if (r.new_fill != LayerFill::kInit)
      r.new_fill = (fan_out && !random) ? LayerFill::kZero : LayerFill::kInit;
    if (learn) r.new_fill = LayerFill::kZero;
    for (int l = 0; l < (t.per_layer ? b.n_layer : 1); ++l)
      r.layers.push_back({t.per_layer ? l : 0, LayerFill::kCopy});
    if (random && fan_out) {
      const int64_t rows_old =
          n == "attn_out" || n == "mlp_down" || n.ends_with("_bias") ? a.d_model : t.shape[0];
      const int64_t cols_old = n == "attn_out"       ? int64_t{a.n_head} * hs
                               : n == "mlp_down"     ? a.d_ff
                               : t.shape.size() == 2 ? a.d_model
                                                     : 0;
      MaskSlice m{n, -1, 0, 0, 0, 0};
      if (n == "tok_embedding" || n == "pos_embedding") {
        m.col_begin = cols_old, m.col_end = t.shape[1];
      } else {
        m.row_begin = rows_old, m.row_end = t.shape[0];
        if (t.shape.size() == 2) m.col_begin = cols_old, m.col_end = t.shape[1];
      }
      for (int l = 0; l < (t.per_layer ? b.n_layer : 1); ++l) {
        m.layer = t.per_layer ? l : -1;
        if (m.row_end > m.row_begin || m.col_end > m.col_begin) p.masks.push_back(m);
      }
    }
    p.tensors.push_back(std::move(r));
  }
  return p;
}

std::string GrowthPlan::describe() const {
  std::string s;
  s += cat("growth: op=", op_name(stage.op), " (", stage.direction() == Direction::kDepth ? "depth" : "width",
           ")\n");
  auto arch = [](const ModelConfig& c) {
    return cat("L=", c.n_layer, " C=", c.d_model, " NH=", c.n_head, " KVH=", c.n_kv_head, " F=", c.d_ff);
  };
  s += cat("  from ", arch(from), "\n  to   ", arch(to), "\n");
  if (stage.direction() == Direction::kDepth) {
    s += "  layers:";
    const bool marks = stage.op == Op::kZero || stage.op == Op::kRandom;
    for (size_t l = 0; l < layer_map.size(); ++l)
      s += cat(" ", layer_map[l], marks && new_layer[l] ? "*" : "");
    s += stage.op == Op::kZero     ? "   (* = new: attention and MLP outputs zero)\n"
         : stage.op == Op::kRandom ? "   (* = new: from init, outputs masked)\n"
                                   : "\n";
  }
  for (const TensorRule& r : tensors) {
    s += cat("  ", r.name, ": ");
    if (!r.rows.is_identity())
      s += cat("rows [", range_text(r.rows.src), "]", r.rows.scale.empty() ? "" : " scaled", "; ");
    if (!r.cols.src.empty() && !r.cols.is_identity())
      s += cat("cols [", range_text(r.cols.src), "]", r.cols.scale.empty() ? "" : " scaled", "; ");
    int counts[3] = {0, 0, 0};
    for (const LayerRule& lr : r.layers) ++counts[static_cast<int>(lr.fill)];
    if (r.per_layer) {
      s += cat(r.layers.size(), " layers (");
      bool first = true;
      for (int f = 0; f < 3; ++f)
        if (counts[f]) {
          s += cat(first ? "" : ", ", counts[f], " ", fill_name(static_cast<LayerFill>(f)));
          first = false;
        }
      s += ")";
    } else {
      s += "kept";
    }
    s +=
        cat(stage.direction() == Direction::kWidth ? cat(", new entries ", fill_name(r.new_fill)) : "", "\n");
  }
  if (!masks.empty())
    s += cat("  masks: ", masks.size(), " slices ramped 0 -> 1 over ", stage.mask_steps, " steps\n");
  if (stage.op == Op::kLearn) {
    if (stage.direction() == Direction::kDepth) {
      s += "  learned: per tensor kind, W'_l = sum_j D[l, j] W_j, D from the layer map above";
    } else {
      // growth/learned_width.h: one matrix per grown axis; under multi-head attention K/V share the heads'.
      s += "  learned: every tensor W' = B_rows W B_cols^T, B = [I; N(0, 1/n')] per grown axis:";
      if (to.d_model != from.d_model) s += cat(" stream ", to.d_model, "x", from.d_model, ";");
      if (to.n_head != from.n_head) s += cat(" heads ", to.n_head, "x", from.n_head, " per layer;");
      if (to.n_kv_head != from.n_kv_head && !learned_kv_shares_heads(*this))
        s += cat(" K/V heads ", to.n_kv_head, "x", from.n_kv_head, " per layer;");
      if (to.d_ff != from.d_ff) s += cat(" FFN ", to.d_ff, "x", from.d_ff, " per layer;");
      s.pop_back();
    }
    s += cat(", trained for ", stage.learn_steps, " steps at lr ", stage.learn_lr, ", then materialised\n");
  }
  if (stage.noise > 0)
    s += cat("  noise: W <- (1 - ", stage.noise, ") W + ", stage.noise, " e on every block tensor\n");
  return s;
}

}  // namespace strata::growth
