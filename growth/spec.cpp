#include "growth/spec.h"

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>

#include "engine/check.h"

namespace strata::growth {
namespace {

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  const size_t e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); ++i)
    if (i == s.size() || s[i] == sep) {
      out.push_back(trim(s.substr(start, i - start)));
      start = i + 1;
    }
  return out;
}

double parse_number(const std::string& ctx, const std::string& key, const std::string& v) {
  errno = 0;
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  STRATA_REQUIRE(!v.empty() && end == v.c_str() + v.size() && errno == 0 && std::isfinite(x), ctx, key, "=",
                 v, " is not a number");
  return x;
}

long parse_int(const std::string& ctx, const std::string& key, const std::string& v, long min,
               long max = 1L << 50) {
  const double x = parse_number(ctx, key, v);
  STRATA_REQUIRE(x == std::floor(x) && std::fabs(x) < 9e15, ctx, key, "=", v, " must be an integer");
  STRATA_REQUIRE(x >= static_cast<double>(min) && x <= static_cast<double>(max), ctx, key, "=", v,
                 " must be in [", min, ", ", max, "]");
  return static_cast<long>(x);
}

// The leading "a" of an item "a", "a-b" as an integer in [0, L); errors name the list.
int parse_layer(const std::string& list, const std::string& item, const std::string& v, int L) {
  char* end = nullptr;
  errno = 0;
  const long x = std::strtol(v.c_str(), &end, 10);
  STRATA_REQUIRE(!v.empty() && end == v.c_str() + v.size() && errno == 0, "layer list '", list, "': item '",
                 item, "' is not a layer number or range a-b");
  STRATA_REQUIRE(x >= 0 && x < L, "layer list '", list, "': layer ", x, " does not exist (the model has ", L,
                 " layers, 0-", L - 1, ")");
  return static_cast<int>(x);
}

// The shortest text that parses back to the same double (to_string() must round-trip: checkpoints compare
// stages by it).
std::string num(double x) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, x);
  return std::string(buf, r.ptr);
}

}  // namespace

const char* op_name(Op op) {
  switch (op) {
    case Op::kStack:
      return "stack";
    case Op::kInterpolate:
      return "interpolate";
    case Op::kZero:
      return "zero";
    case Op::kRandom:
      return "random";
    case Op::kLearn:
      return "learn";
    case Op::kDirect:
      return "direct";
  }
  return "?";
}

const char* unit_name(Unit u) {
  switch (u) {
    case Unit::kTokens:
      return "tokens";
    case Unit::kSteps:
      return "steps";
    case Unit::kFlops:
      return "flops";
  }
  return "?";
}

Direction Stage::direction() const {
  return (d_model || d_ff || n_head || n_kv_head) ? Direction::kWidth : Direction::kDepth;
}

std::vector<int> parse_layer_list(const std::string& text, int L) {
  std::vector<int> out;
  STRATA_REQUIRE(!trim(text).empty(), "layer list is empty");
  for (const std::string& item : split(text, ',')) {
    STRATA_REQUIRE(!item.empty(), "layer list '", text, "': empty item");
    std::string body = item;
    long repeat = 1;
    if (const size_t star = item.find('*'); star != std::string::npos) {
      body = trim(item.substr(0, star));
      const std::string r = trim(item.substr(star + 1));
      char* end = nullptr;
      errno = 0;
      repeat = std::strtol(r.c_str(), &end, 10);
      STRATA_REQUIRE(!r.empty() && end == r.c_str() + r.size() && errno == 0 && repeat >= 1 && repeat <= 4096,
                     "layer list '", text, "': repeat count in '", item, "' must be an integer in [1, 4096]");
    }
    constexpr long kMaxLayers = 65536;
    std::vector<int> run;
    if (const size_t dash = body.find('-'); dash != std::string::npos) {
      const int a = parse_layer(text, item, trim(body.substr(0, dash)), L);
      const int b = parse_layer(text, item, trim(body.substr(dash + 1)), L);
      STRATA_REQUIRE(a <= b, "layer list '", text, "': range '", body, "' runs backwards");
      STRATA_REQUIRE(static_cast<long>(b) - a < kMaxLayers, "layer list '", text, "': range '", body,
                     "' is longer than ", kMaxLayers, " layers");
      for (int l = a; l <= b; ++l) run.push_back(l);
    } else {
      run.push_back(parse_layer(text, item, body, L));
    }
    STRATA_REQUIRE(static_cast<long>(out.size()) + static_cast<long>(run.size()) * repeat <= kMaxLayers,
                   "layer list '", text, "' expands to more than ", kMaxLayers, " layers");
    for (long k = 0; k < repeat; ++k) out.insert(out.end(), run.begin(), run.end());
  }
  return out;
}

std::vector<int> target_layers(const Stage& s, int L) {
  if (!s.layers.empty()) return parse_layer_list(s.layers, L);
  std::vector<int> out;
  if (s.op == Op::kInterpolate) {
    for (int l = 0; l < L; ++l)
      for (int k = 0; k < s.g; ++k) out.push_back(l);
  } else {
    for (int k = 0; k < s.g; ++k)
      for (int l = 0; l < L; ++l) out.push_back(l);
  }
  return out;
}

Stage parse_stage(const std::string& text) {
  // Every message quotes the text, so it must not contain line breaks or other control characters.
  for (size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x20 || c == 0x7f) {
      std::string shown;
      for (unsigned char ch : text) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\x%02x", ch);
        shown += (ch < 0x20 || ch == 0x7f) ? std::string(buf) : std::string(1, static_cast<char>(ch));
      }
      STRATA_FAIL("growth stage '", shown, "': control character at byte ", i);
    }
  }
  Stage s;
  s.text = text;
  const std::string ctx = "growth stage '" + text + "': ";
  std::set<std::string> seen;
  std::map<std::string, std::string> kv;
  // Items are split on commas, except inside layers= (whose value has commas): a piece without '=' that
  // follows layers= continues the list.
  std::string last_key;
  for (const std::string& piece : split(text, ',')) {
    const size_t eq = piece.find('=');
    if (eq == std::string::npos) {
      STRATA_REQUIRE(last_key == "layers" && !piece.empty(), ctx, "'", piece, "' is not key=value");
      kv["layers"] += "," + piece;
      continue;
    }
    const std::string key = trim(piece.substr(0, eq)), value = trim(piece.substr(eq + 1));
    STRATA_REQUIRE(seen.insert(key).second, ctx, "key '", key, "' is given twice");
    STRATA_REQUIRE(!value.empty(), ctx, "key '", key, "' has no value");
    kv[key] = value;
    last_key = key;
  }
  STRATA_REQUIRE(kv.count("at"), ctx, "missing at=<number> [tokens|steps|flops]");
  STRATA_REQUIRE(kv.count("op"), ctx, "missing op=stack|interpolate|zero|random|learn|direct");
  for (const auto& [key, value] : kv) {
    if (key == "at") {
      const size_t sp = value.find_first_of(" \t");
      const std::string num = sp == std::string::npos ? value : value.substr(0, sp);
      const std::string unit = sp == std::string::npos ? "tokens" : trim(value.substr(sp));
      s.at = parse_number(ctx, "at", num);
      STRATA_REQUIRE(s.at > 0, ctx, "at=", num,
                     " must be positive (growing before the first step is training "
                     "the large model from a stacked initialisation: give that model instead)");
      if (unit == "tokens" || unit == "token")
        s.unit = Unit::kTokens;
      else if (unit == "steps" || unit == "step")
        s.unit = Unit::kSteps;
      else if (unit == "flops" || unit == "FLOPs" || unit == "flop")
        s.unit = Unit::kFlops;
      else
        STRATA_FAIL(ctx, "unit '", unit, "' of at= is not tokens, steps or flops");
      if (s.unit != Unit::kFlops)
        STRATA_REQUIRE(s.at == std::floor(s.at), ctx, "at=", num, " ", unit, " must be a whole number");
    } else if (key == "op") {
      if (value == "stack")
        s.op = Op::kStack;
      else if (value == "interpolate" || value == "interp")
        s.op = Op::kInterpolate;
      else if (value == "zero")
        s.op = Op::kZero;
      else if (value == "random")
        s.op = Op::kRandom;
      else if (value == "learn")
        s.op = Op::kLearn;
      else if (value == "direct")
        s.op = Op::kDirect;
      else
        STRATA_FAIL(ctx, "unknown op '", value, "' (stack, interpolate, zero, random, learn, direct)");
    } else if (key == "g") {
      const double x = parse_number(ctx, "g", value);
      STRATA_REQUIRE(x == std::floor(x) && x >= 2 && x <= 1024, ctx, "g=", value,
                     " must be an integer >= 2 (the growth factor L'/L)");
      s.g = static_cast<int>(x);
    } else if (key == "layers") {
      s.layers = value;
    } else if (key == "d_model") {
      s.d_model = static_cast<int>(parse_int(ctx, key, value, 1, 1 << 24));
    } else if (key == "d_ff") {
      s.d_ff = static_cast<int>(parse_int(ctx, key, value, 1, 1 << 24));
    } else if (key == "n_head") {
      s.n_head = static_cast<int>(parse_int(ctx, key, value, 1, 1 << 24));
    } else if (key == "n_kv_head") {
      s.n_kv_head = static_cast<int>(parse_int(ctx, key, value, 1, 1 << 24));
    } else if (key == "noise") {
      s.noise = parse_number(ctx, key, value);
      STRATA_REQUIRE(s.noise >= 0 && s.noise < 1, ctx, "noise=", value, " must be in [0, 1)");
    } else if (key == "mask_steps") {
      s.mask_steps = parse_int(ctx, key, value, 1);
    } else if (key == "learn_steps") {
      s.learn_steps = parse_int(ctx, key, value, 1);
    } else if (key == "learn_lr") {
      s.learn_lr = parse_number(ctx, key, value);
      STRATA_REQUIRE(s.learn_lr > 0, ctx, "learn_lr=", value, " must be positive");
    } else if (key == "split") {
      s.split = parse_number(ctx, key, value);
      STRATA_REQUIRE(s.split > 0 && s.split < 1, ctx, "split=", value, " must be in (0, 1)");
    } else if (key == "optimizer") {
      if (value == "reset")
        s.optimizer = OptimizerPolicy::kReset;
      else if (value == "map")
        s.optimizer = OptimizerPolicy::kMap;
      else
        STRATA_FAIL(ctx, "optimizer=", value, " is not reset or map");
    } else if (key == "schedule") {
      if (value == "restart")
        s.schedule = SchedulePolicy::kRestart;
      else if (value == "continue")
        s.schedule = SchedulePolicy::kContinue;
      else
        STRATA_FAIL(ctx, "schedule=", value, " is not restart or continue");
    } else if (key == "warmup") {
      s.warmup = parse_int(ctx, key, value, 0);
    } else {
      STRATA_FAIL(ctx, "unknown key '", key,
                  "' (at, op, g, layers, d_model, d_ff, n_head, n_kv_head, noise, mask_steps, learn_steps, "
                  "learn_lr, split, optimizer, schedule, warmup)");
    }
  }
  const bool width = s.direction() == Direction::kWidth;
  const bool depth = s.g > 0 || !s.layers.empty();
  STRATA_REQUIRE(!(width && depth), ctx,
                 "mixes depth (g, layers) and width (d_model, d_ff, n_head, n_kv_head) "
                 "keys; grow one direction per stage");
  STRATA_REQUIRE(!(s.g > 0 && !s.layers.empty()), ctx, "give g or layers, not both");
  STRATA_REQUIRE(width || depth, ctx,
                 "say how much to grow: g=<factor> or layers=<list> (depth), or d_model / "
                 "d_ff / n_head (width)");
  if (width)
    STRATA_REQUIRE(s.op == Op::kDirect || s.op == Op::kZero || s.op == Op::kRandom || s.op == Op::kLearn, ctx,
                   "op=", op_name(s.op),
                   " is a depth operator; width growth takes op=direct, zero, random or learn");
  else
    STRATA_REQUIRE(s.op != Op::kDirect, ctx, "op=direct is the width operator; its depth form is op=stack");
  // G_learn materialises every weight it grows from the learned matrices and the frozen small model, over
  // whatever apply_params wrote (noise included).
  STRATA_REQUIRE(!(s.op == Op::kLearn && s.noise > 0), ctx,
                 "noise= with op=learn would be lost: the learned weights are materialised from the small "
                 "model's; drop noise= (or use op=stack)");
  if (!s.layers.empty())
    parse_layer_list(s.layers, 1 << 30);  // syntax only; layers are checked against L later
  return s;
}

std::string Stage::to_string() const {
  std::string s = cat("at=", num(at), " ", unit_name(unit), ",op=", op_name(op));
  if (g) s += cat(",g=", g);
  if (!layers.empty()) s += ",layers=" + layers;
  if (d_model) s += cat(",d_model=", d_model);
  if (d_ff) s += cat(",d_ff=", d_ff);
  if (n_head) s += cat(",n_head=", n_head);
  if (n_kv_head) s += cat(",n_kv_head=", n_kv_head);
  if (noise > 0) s += cat(",noise=", num(noise));
  if (op == Op::kRandom) s += cat(",mask_steps=", mask_steps);
  if (op == Op::kLearn) s += cat(",learn_steps=", learn_steps, ",learn_lr=", num(learn_lr));
  if (op == Op::kDirect) s += cat(",split=", num(split));
  s += cat(",optimizer=", optimizer == OptimizerPolicy::kReset ? "reset" : "map");
  s += cat(",schedule=", schedule == SchedulePolicy::kRestart ? "restart" : "continue");
  if (warmup >= 0) s += cat(",warmup=", warmup);
  return s;
}

nlohmann::json Stage::to_json() const {
  return to_string();
}

Stage Stage::from_json(const nlohmann::json& j) {
  STRATA_REQUIRE(j.is_string(), "growth stage: expected a spec string, got ", j.dump());
  return parse_stage(j.get<std::string>());
}

models::ModelConfig target_config(const models::ModelConfig& from, const Stage& s) {
  models::ModelConfig to = from;
  const std::string ctx = "growth stage '" + s.text + "': ";
  if (s.direction() == Direction::kDepth) {
    std::vector<int> layers;
    try {
      layers = target_layers(s, from.n_layer);
    } catch (const Error& e) {
      STRATA_FAIL(ctx, e.what());
    }
    STRATA_REQUIRE(layers.size() > static_cast<size_t>(from.n_layer), ctx, "the target has ", layers.size(),
                   " layers, not more than the model's ", from.n_layer);
    to.n_layer = static_cast<int>(layers.size());
  } else {
    const int hs = from.head_dim();
    if (s.d_model) to.d_model = s.d_model;
    if (s.d_ff) to.d_ff = s.d_ff;
    if (s.n_head) {
      to.n_head = s.n_head;
    } else {
      STRATA_REQUIRE(to.d_model % hs == 0, ctx, "d_model ", to.d_model, " is not a multiple of the head dim ",
                     hs, " (the head dim stays fixed: d_model = n_head x ", hs, ")");
      to.n_head = to.d_model / hs;
    }
    STRATA_REQUIRE(to.d_model == to.n_head * hs, ctx, "d_model ", to.d_model, " != n_head ", to.n_head,
                   " x head dim ", hs, " (width growth keeps the head dim)");
    if (from.family == models::Family::kGpt2) {
      STRATA_REQUIRE(s.n_kv_head == 0 || s.n_kv_head == to.n_head, ctx,
                     "GPT-2 models have no grouped-query attention: n_kv_head must equal n_head");
      to.n_kv_head = to.n_head;
    } else if (s.n_kv_head) {
      to.n_kv_head = s.n_kv_head;
    } else {
      const int group = from.n_head / from.n_kv_head;
      STRATA_REQUIRE(to.n_head % group == 0, ctx, "n_head ", to.n_head,
                     " is not a multiple of the query group ", group,
                     " (n_head / n_kv_head); give n_kv_head");
      to.n_kv_head = to.n_head / group;
    }
    STRATA_REQUIRE(to.d_model >= from.d_model && to.d_ff >= from.d_ff && to.n_head >= from.n_head &&
                       to.n_kv_head >= from.n_kv_head,
                   ctx, "width growth cannot shrink the model (d_model ", from.d_model, "->", to.d_model,
                   ", d_ff ", from.d_ff, "->", to.d_ff, ", n_head ", from.n_head, "->", to.n_head,
                   ", n_kv_head ", from.n_kv_head, "->", to.n_kv_head, ")");
    STRATA_REQUIRE(to.d_model != from.d_model || to.d_ff != from.d_ff, ctx,
                   "the target width equals the model's");
    STRATA_REQUIRE(to.n_head % to.n_kv_head == 0 && to.n_head / to.n_kv_head == from.n_head / from.n_kv_head,
                   ctx, "n_head ", to.n_head, " / n_kv_head ", to.n_kv_head,
                   " must keep the query group size of the model (", from.n_head / from.n_kv_head,
                   ") so every new head copies or extends a whole group");
  }
  if (to.name.find("+grown") == std::string::npos) to.name += "+grown";
  try {
    to.validate();
  } catch (const Error& e) {
    STRATA_FAIL(ctx, e.what());
  }
  return to;
}

}  // namespace strata::growth
