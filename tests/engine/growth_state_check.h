// tests/engine/growth_state_check.h: shared checks of the CUDA backend's growth against the CPU backend's
// (tests/engine/cuda_train_test.cpp for one runner, tests/engine/cuda_dist_train_test.cpp under ZeRO-1
// ranks): the same seeded state on both, the grown state compared bit for bit, and the bf16 weights of copied
// layers.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "engine/params.h"
#include "engine/train_backend.h"
#include "growth/plan.h"

namespace strata::test {

// Seeded, non-zero state on `cpu` (weights, moments with v >= 0, optimizer step 3), copied into `cuda`'s host
// mirrors and uploaded (a ZeRO-1 runner takes its pieces).
inline void seed_growth_state(TrainBackend& cpu, TrainBackend& cuda) {
  const size_t bytes = size_t(cpu.host_params().numel()) * sizeof(float);
  init_params(cpu.host_params(), 3);
  init_params(cpu.host_optimizer().m(), 4);
  init_params(cpu.host_optimizer().v(), 5);
  for (int64_t i = 0; i < cpu.host_params().numel(); ++i)
    cpu.host_optimizer().v().data()[i] = std::abs(cpu.host_optimizer().v().data()[i]);
  cpu.host_optimizer().set_t(3);
  std::memcpy(cuda.host_params().data(), cpu.host_params().data(), bytes);
  std::memcpy(cuda.host_optimizer().m().data(), cpu.host_optimizer().m().data(), bytes);
  std::memcpy(cuda.host_optimizer().v().data(), cpu.host_optimizer().v().data(), bytes);
  cuda.host_optimizer().set_t(3);
  cuda.upload_from_host();
}

// The CUDA backend's bf16 weights (its checkpoint extra), as bits.
inline std::vector<uint16_t> bf16_weight_bits(TrainBackend& cuda) {
  const auto extras = cuda.checkpoint_extras();
  const auto* data = static_cast<const uint16_t*>(extras.at(0).tensors.at(0).data);
  return std::vector<uint16_t>(data, data + extras[0].tensors[0].shape[0]);
}

// After both grew by the same plan: the state `cuda` gathers to its host mirrors is `cpu`'s bit for bit (fp32
// weights, moments) and the optimizer steps agree.
inline void expect_same_grown_state(TrainBackend& cuda, TrainBackend& cpu, int n_layer) {
  cuda.download_to_host();
  EXPECT_EQ(cuda.config().n_layer, n_layer);
  ASSERT_EQ(cuda.host_params().numel(), cpu.host_params().numel());
  const size_t grown = size_t(cpu.host_params().numel()) * sizeof(float);
  EXPECT_EQ(0, std::memcmp(cuda.host_params().data(), cpu.host_params().data(), grown));
  EXPECT_EQ(0, std::memcmp(cuda.host_optimizer().m().data(), cpu.host_optimizer().m().data(), grown));
  EXPECT_EQ(0, std::memcmp(cuda.host_optimizer().v().data(), cpu.host_optimizer().v().data(), grown));
  EXPECT_EQ(cuda.optimizer_t(), cpu.optimizer_t());
}

// Each layer the plan copies has its source layer's bf16 bits (`before` in plan.from's layout, `after` in
// plan.to's).
inline void expect_copied_layer_bits(const growth::GrowthPlan& plan, const std::vector<uint16_t>& before,
                                     const std::vector<uint16_t>& after) {
  const ParamLayout from(plan.from), to(plan.to);
  for (const growth::TensorRule& r : plan.tensors) {
    const ParamEntry *se = from.find(r.name), *de = to.find(r.name);
    const int64_t per = de->spec.numel_per_layer();
    for (size_t l = 0; l < r.layers.size(); ++l) {
      if (r.layers[l].fill != growth::LayerFill::kCopy) continue;
      EXPECT_EQ(0, std::memcmp(after.data() + de->offset + int64_t(l) * per,
                               before.data() + se->offset + r.layers[l].src * per, size_t(per) * 2))
          << r.name << " layer " << l;
    }
  }
}

}  // namespace strata::test
