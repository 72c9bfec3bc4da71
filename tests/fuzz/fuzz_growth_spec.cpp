// libFuzzer target for the growth-stage grammar (growth/spec.h) and the plans built from it (growth/plan.h):
// the text a user passes to `strata train --grow`. Any input either parses or is rejected with a one-line
// strata::Error; a stage that parses round-trips through its canonical text, and on two small models (LLaMA
// with GQA, GPT-2) it either fits (target_config validates, make_plan gives one rule per target tensor whose
// maps match the target shapes and point inside the source) or is rejected with one line.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "engine/check.h"
#include "growth/plan.h"
#include "growth/spec.h"
#include "models/model_config.h"

namespace {

void one_line(const strata::Error& e) {
  const std::string msg = e.what();
  if (msg.empty() || msg.find('\n') != std::string::npos) std::abort();
}

strata::models::ModelConfig small(strata::models::Family f) {
  strata::models::ModelConfig c;
  c.name = "fuzz";
  c.family = f;
  c.n_layer = 3;
  c.d_model = 32;
  c.n_head = 4;
  c.n_kv_head = f == strata::models::Family::kLlama ? 2 : 4;
  c.d_ff = 48;
  c.vocab_size = 50;
  c.max_seq_len = 16;
  return c;
}

void check_plan(const strata::models::ModelConfig& from, const strata::growth::Stage& st) {
  using namespace strata;
  growth::GrowthPlan p;
  try {
    const models::ModelConfig to = growth::target_config(from, st);
    // Keep the maps small: the fuzzer may ask for huge widths or layer counts, which are valid but slow.
    if (static_cast<int64_t>(to.n_layer) * to.d_model * to.d_ff > (int64_t{1} << 24)) return;
    p = growth::make_plan(from, st);
  } catch (const Error& e) {
    one_line(e);
    return;
  }
  const auto table = models::tensor_table(p.to);
  if (p.tensors.size() != table.size()) std::abort();
  for (size_t i = 0; i < table.size(); ++i) {
    const growth::TensorRule& r = p.tensors[i];
    if (r.name != table[i].name || r.rows.size() != table[i].shape[0]) std::abort();
    if (table[i].shape.size() == 2 && r.cols.size() != table[i].shape[1]) std::abort();
    if (r.layers.size() != static_cast<size_t>(table[i].per_layer ? p.to.n_layer : 1)) std::abort();
    for (const growth::LayerRule& lr : r.layers)
      if (lr.src < 0 || lr.src >= (table[i].per_layer ? p.from.n_layer : 1)) std::abort();
  }
  (void)p.describe();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace strata;
  if (size > 4096) return 0;
  const std::string text(reinterpret_cast<const char*>(data), size);
  growth::Stage st;
  try {
    st = growth::parse_stage(text);
  } catch (const Error& e) {
    one_line(e);
    return 0;
  }
  const growth::Stage again = growth::parse_stage(st.to_string());  // must not throw
  if (again.to_string() != st.to_string()) std::abort();
  check_plan(small(models::Family::kLlama), st);
  check_plan(small(models::Family::kGpt2), st);
  return 0;
}
