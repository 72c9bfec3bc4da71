// engine/schedule.h: learning-rate schedules. Steps are 0-based optimizer steps; lr(step) is the rate used by
// the update of that step.
//
//   warmup (all kinds): step < W            lr = max_lr * (step + 1) / W
//   cosine:             p = (step - W) / max(1, S - W)
//                       lr = min_lr + (max_lr - min_lr) * 0.5 * (1 + cos(pi * p))
//   constant:           lr = max_lr
//   wsd (warmup-stable-decay): stable at max_lr until the last D = round(decay_frac * S) steps, then linear
//   to
//                       min_lr:  lr = max_lr - (max_lr - min_lr) * (step - (S - D) + 1) / D
// with S = total steps, W = warmup steps, min_lr = min_lr_frac * max_lr. Steps past S keep the last rate.
#pragma once

#include <string>

namespace strata {

enum class ScheduleKind { kCosine, kConstant, kWsd };

struct Schedule {
  ScheduleKind kind = ScheduleKind::kCosine;
  double max_lr = 1e-3;
  double min_lr_frac = 0.1;
  long warmup_steps = 0;
  long total_steps = 1;
  double decay_frac = 0.2;  // wsd only

  double lr(long step) const;
  // Throws strata::Error naming the bad field (negative warmup, warmup > total, fractions outside [0,1],
  // ...).
  void validate() const;
};

// "cosine" | "constant" | "wsd"; anything else is a strata::Error listing the choices.
ScheduleKind parse_schedule_kind(const std::string& s);
const char* schedule_kind_name(ScheduleKind k);

}  // namespace strata
