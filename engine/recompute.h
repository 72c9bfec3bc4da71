// engine/recompute.h: activation recomputation on the CUDA backend (`strata train --recompute`), the trade of
// backward-pass compute for activation memory (engine/cuda_model.h says what each mode keeps and recomputes).
//   none  keep every activation the backward reads (the default)
//   norm  recompute each layer's two norm outputs from the kept residual stream (statistics kept)
//   mlp   recompute each layer's MLP hidden activations (first product, GELU / SwiGLU output) from its input
//   all   both
// The recomputation runs the forward's own ops on the forward's own inputs, so losses and gradients are
// bitwise those of `none`; only memory and time differ. The CPU backend keeps every activation (none only).
#pragma once

#include <string>

namespace strata {

enum class Recompute { kNone, kNorm, kMlp, kAll };

inline bool recomputes_norm(Recompute r) {
  return r == Recompute::kNorm || r == Recompute::kAll;
}
inline bool recomputes_mlp(Recompute r) {
  return r == Recompute::kMlp || r == Recompute::kAll;
}

inline const char* recompute_name(Recompute r) {
  switch (r) {
    case Recompute::kNone:
      return "none";
    case Recompute::kNorm:
      return "norm";
    case Recompute::kMlp:
      return "mlp";
    case Recompute::kAll:
      return "all";
  }
  return "?";
}

// "none" | "norm" | "mlp" | "all": true and *out set; false for anything else. (No strata::Error here:
// engine/check.h must follow the CUDA headers in the runner's sources, which include this one.)
inline bool parse_recompute(const std::string& name, Recompute* out) {
  for (Recompute r : {Recompute::kNone, Recompute::kNorm, Recompute::kMlp, Recompute::kAll})
    if (name == recompute_name(r)) {
      *out = r;
      return true;
    }
  return false;
}

}  // namespace strata
