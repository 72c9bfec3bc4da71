// growth/spec.h: a growth stage as a user writes it (`strata train --grow "..."`), parsed and validated.
//
// A stage is comma-separated key=value pairs:
//   at=<number> [tokens|steps|flops]   when to grow: once this many training tokens / optimizer steps /
//                                      cumulative training FLOPs are done (unit default: tokens)
//   op=<operator>                      depth:  stack | interpolate | zero | random | learn
//                                      width:  direct | zero | random | learn
//   depth:  g=<int >= 2>               L' = g L; stack: [0..L-1] x g, interpolate: [0,0,..,1,1,..]
//           layers=<list>              the target layer list instead of g, e.g. 0-1,2-3*7,4-5
//                                      (a-b is a range, *k repeats the item before it k times in all)
//   width:  d_model=<int> d_ff=<int> n_head=<int> n_kv_head=<int>   target sizes (unchanged when absent);
//           the head dim stays fixed, so d_model = n_head * head_dim (n_head follows d_model when absent)
//   noise=<a in [0,1)>                 W <- (1 - a) W + a e, e from the init distribution (every block
//                                      tensor; refused with op=learn, which would overwrite it)
//   mask_steps=<K>                     op=random: the new parts' outputs are scaled by c ramped 0 -> 1
//                                      over K steps (default 5000, as in the paper's code)
//   learn_steps=<K> learn_lr=<lr>      op=learn: steps that train the mixing matrices D (depth) or the
//                                      expansion matrices B (width) (default 100, 1e-3)
//   split=<alpha in (0,1)>             op=direct: share of a split neuron's fan-in kept by the original
//                                      (the copy gets 1 - alpha; default 0.6, uneven to break symmetry)
//   optimizer=reset|map                fresh AdamW (the paper) | moments mapped with the weights
//   schedule=restart|continue          LR schedule restarted with warmup over the remaining steps (the
//                                      paper) | continued as if nothing happened
//   warmup=<steps>                     warmup of a restarted schedule (default: the run's --warmup)
// Errors are strata::Error with one line naming the stage text and the problem.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "models/model_config.h"

namespace strata::growth {

enum class Op { kStack, kInterpolate, kZero, kRandom, kLearn, kDirect };
enum class Direction { kDepth, kWidth };
enum class Unit { kTokens, kSteps, kFlops };
enum class OptimizerPolicy { kReset, kMap };
enum class SchedulePolicy { kRestart, kContinue };

const char* op_name(Op op);
const char* unit_name(Unit u);

struct Stage {
  std::string text;  // as given (for messages)
  double at = 0.0;
  Unit unit = Unit::kTokens;
  Op op = Op::kStack;
  // Depth.
  int g = 0;
  std::string layers;  // the layer-list text; empty = from g
  // Width (0 = unchanged).
  int d_model = 0, d_ff = 0, n_head = 0, n_kv_head = 0;
  // Options.
  double noise = 0.0;
  long mask_steps = 5000;
  long learn_steps = 100;
  double learn_lr = 1e-3;
  double split = 0.6;
  OptimizerPolicy optimizer = OptimizerPolicy::kReset;
  SchedulePolicy schedule = SchedulePolicy::kRestart;
  long warmup = -1;  // -1 = the run's warmup

  Direction direction() const;
  // The canonical spec text (parse(to_string()) gives the same stage).
  std::string to_string() const;
  nlohmann::json to_json() const;
  static Stage from_json(const nlohmann::json& j);
};

// Parses one stage. Syntax errors (unknown key or value, a repeated key, a missing at= or op=, depth and
// width keys mixed, g not an integer >= 2, ...) are one-line strata::Errors quoting the text.
Stage parse_stage(const std::string& text);

// Expands a layer list ("0-1,2-3*7,4-5") against a source model of L layers. Errors name the list and the
// bad item (a layer >= L, a reversed range, a repeat count < 1, an empty item).
std::vector<int> parse_layer_list(const std::string& text, int L);

// The target layer list of a depth stage on L layers (from g or layers=): stack [0..L-1] x g, interpolate
// [0 x g, 1 x g, ...], or the explicit list.
std::vector<int> target_layers(const Stage& s, int L);

// The architecture after the stage; errors (one line) when the stage does not fit the model: a layer list
// naming a missing layer, a target width not divisible by the head dim, a target smaller than the source,
// GQA groups that do not divide, an operator that does not fit the family.
models::ModelConfig target_config(const models::ModelConfig& from, const Stage& s);

}  // namespace strata::growth
