#include "models/model_config_json.h"

#include <charconv>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <set>

#include "engine/check.h"

namespace strata::models {
namespace {

constexpr const char* kWhere = "model config: ";

// The shortest decimal that reads back as `f` (1e-5f -> 1e-05, not 9.99999974737875e-06).
double float_for_json(float f) {
  char buf[32];
  const auto res = std::to_chars(buf, buf + sizeof(buf), f);
  if (res.ec == std::errc()) {
    const double d = std::strtod(std::string(buf, res.ptr).c_str(), nullptr);
    if (static_cast<float>(d) == f) return d;
  }
  return static_cast<double>(f);
}

const nlohmann::json& field(const nlohmann::json& j, const char* name) {
  const auto it = j.find(name);
  STRATA_REQUIRE(it != j.end(), kWhere, "field '", name, "' is missing");
  return *it;
}

int int_field(const nlohmann::json& j, const char* name) {
  const nlohmann::json& v = field(j, name);
  STRATA_REQUIRE(v.is_number_integer(), kWhere, "field '", name, "' must be an integer (got ", v.dump(), ")");
  const bool fits = v.is_number_unsigned() ? v.get<uint64_t>() <= static_cast<uint64_t>(INT_MAX)
                                           : v.get<int64_t>() >= INT_MIN && v.get<int64_t>() <= INT_MAX;
  STRATA_REQUIRE(fits, kWhere, "field '", name, "' is out of range (got ", v.dump(), ")");
  return static_cast<int>(v.get<int64_t>());
}

float float_field(const nlohmann::json& j, const char* name) {
  const nlohmann::json& v = field(j, name);
  STRATA_REQUIRE(v.is_number(), kWhere, "field '", name, "' must be a number (got ", v.dump(), ")");
  return static_cast<float>(v.get<double>());
}

std::string string_field(const nlohmann::json& j, const char* name) {
  const nlohmann::json& v = field(j, name);
  STRATA_REQUIRE(v.is_string(), kWhere, "field '", name, "' must be a string (got ", v.dump(), ")");
  return v.get<std::string>();
}

}  // namespace

nlohmann::json model_config_to_json(const ModelConfig& c) {
  return {{"name", c.name},
          {"family", family_name(c.family)},
          {"n_layer", c.n_layer},
          {"d_model", c.d_model},
          {"n_head", c.n_head},
          {"n_kv_head", c.n_kv_head},
          {"d_ff", c.d_ff},
          {"vocab_size", c.vocab_size},
          {"max_seq_len", c.max_seq_len},
          {"norm_eps", float_for_json(c.norm_eps)},
          {"rope_base", float_for_json(c.rope_base)}};
}

ModelConfig model_config_from_json(const nlohmann::json& j) {
  STRATA_REQUIRE(j.is_object(), kWhere, "must be a JSON object (got ", j.type_name(), ")");
  static const std::set<std::string> known = {"name",        "family",    "n_layer",  "d_model",
                                              "n_head",      "n_kv_head", "d_ff",     "vocab_size",
                                              "max_seq_len", "norm_eps",  "rope_base"};
  for (const auto& [k, v] : j.items()) STRATA_REQUIRE(known.count(k) == 1, kWhere, "unknown field '", k, "'");
  ModelConfig c;
  c.name = string_field(j, "name");
  const std::string fam = string_field(j, "family");
  if (fam == "llama")
    c.family = Family::kLlama;
  else if (fam == "gpt2")
    c.family = Family::kGpt2;
  else
    STRATA_FAIL(kWhere, "field 'family': unknown family '", fam, "' (expected llama or gpt2)");
  c.n_layer = int_field(j, "n_layer");
  c.d_model = int_field(j, "d_model");
  c.n_head = int_field(j, "n_head");
  c.n_kv_head = int_field(j, "n_kv_head");
  c.d_ff = int_field(j, "d_ff");
  c.vocab_size = int_field(j, "vocab_size");
  c.max_seq_len = int_field(j, "max_seq_len");
  c.norm_eps = float_field(j, "norm_eps");
  c.rope_base = float_field(j, "rope_base");
  c.validate();
  return c;
}

}  // namespace strata::models
