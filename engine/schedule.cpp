#include "engine/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "engine/check.h"

namespace strata {

double Schedule::lr(long step) const {
  step = std::clamp(step, 0L, std::max(0L, total_steps - 1));
  const double min_lr = min_lr_frac * max_lr;
  if (step < warmup_steps) return max_lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  switch (kind) {
    case ScheduleKind::kConstant:
      return max_lr;
    case ScheduleKind::kCosine: {
      const double p = static_cast<double>(step - warmup_steps) /
                       static_cast<double>(std::max(1L, total_steps - warmup_steps));
      return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * p));
    }
    case ScheduleKind::kWsd: {
      const long d = std::lround(decay_frac * static_cast<double>(total_steps));
      const long start = total_steps - d;
      if (d <= 0 || step < start) return max_lr;
      return max_lr - (max_lr - min_lr) * static_cast<double>(step - start + 1) / static_cast<double>(d);
    }
  }
  return max_lr;
}

void Schedule::validate() const {
  STRATA_REQUIRE(max_lr > 0 && std::isfinite(max_lr), "--lr must be positive (got ", max_lr, ")");
  STRATA_REQUIRE(min_lr_frac >= 0 && min_lr_frac <= 1, "--min-lr-frac must be in [0, 1] (got ", min_lr_frac,
                 ")");
  STRATA_REQUIRE(total_steps >= 1, "the run must have at least one step (got ", total_steps, ")");
  STRATA_REQUIRE(warmup_steps >= 0 && warmup_steps <= total_steps, "--warmup ", warmup_steps,
                 " must be in [0, total steps ", total_steps, "]");
  STRATA_REQUIRE(decay_frac >= 0 && decay_frac <= 1, "--decay-frac must be in [0, 1] (got ", decay_frac, ")");
  STRATA_REQUIRE(kind != ScheduleKind::kWsd ||
                     warmup_steps <= total_steps - std::lround(decay_frac * static_cast<double>(total_steps)),
                 "wsd schedule: warmup (", warmup_steps, " steps) overlaps the decay phase (the last ",
                 std::lround(decay_frac * static_cast<double>(total_steps)), " of ", total_steps, " steps)");
}

ScheduleKind parse_schedule_kind(const std::string& s) {
  if (s == "cosine") return ScheduleKind::kCosine;
  if (s == "constant") return ScheduleKind::kConstant;
  if (s == "wsd") return ScheduleKind::kWsd;
  STRATA_FAIL("unknown LR schedule '", s, "' (known: cosine, constant, wsd)");
}

const char* schedule_kind_name(ScheduleKind k) {
  switch (k) {
    case ScheduleKind::kCosine:
      return "cosine";
    case ScheduleKind::kConstant:
      return "constant";
    case ScheduleKind::kWsd:
      return "wsd";
  }
  return "?";
}

}  // namespace strata
