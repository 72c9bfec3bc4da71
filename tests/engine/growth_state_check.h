// tests/engine/growth_state_check.h: shared checks of the CUDA backend's growth against the CPU backend's
// (tests/engine/cuda_train_test.cpp for one runner, tests/engine/cuda_dist_train_test.cpp under ZeRO-1
// ranks): the same seeded state on both, the grown state compared bit for bit, and the grown bf16 weights.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "engine/params.h"
#include "engine/train_backend.h"
#include "growth/plan.h"
#include "tests/kernels/cuda/cuda_test_util.h"  // bf16 on the GPU or the emulation

namespace strata::test {

// Seeded, non-zero state on `cpu` (weights, moments with v >= 0), copied into `cuda`'s host mirrors and
// uploaded (a ZeRO-1 runner takes its pieces); then `cuda` takes one training step (so its bf16 weights are
// stochastically rounded from its master weights, not rounded to nearest: a check of copied bf16 bits cannot
// pass by re-rounding) and its state after the step (fp32 weights, moments, t = 4) is copied back into `cpu`.
inline void seed_growth_state(TrainBackend& cpu, TrainBackend& cuda) {
  const size_t bytes = size_t(cpu.host_params().numel()) * sizeof(float);
  init_params(cpu.host_params(), 3);
  init_params(cpu.host_optimizer().m(), 4);
  init_params(cpu.host_optimizer().v(), 5);
  for (int64_t i = 0; i < cpu.host_params().numel(); ++i)
    cpu.host_optimizer().v().data()[i] = std::abs(cpu.host_optimizer().v().data()[i]);
  std::memcpy(cuda.host_params().data(), cpu.host_params().data(), bytes);
  std::memcpy(cuda.host_optimizer().m().data(), cpu.host_optimizer().m().data(), bytes);
  std::memcpy(cuda.host_optimizer().v().data(), cpu.host_optimizer().v().data(), bytes);
  cuda.host_optimizer().set_t(3);
  cuda.upload_from_host();
  const int vocab = cuda.config().vocab_size;
  std::vector<int32_t> in(32), tg(32);
  for (size_t i = 0; i < in.size(); ++i) {
    in[i] = static_cast<int32_t>((i * 37 + 5) % size_t(vocab));
    tg[i] = static_cast<int32_t>((i * 53 + 11) % size_t(vocab));
  }
  cuda.zero_grad();
  cuda.train_micro_batch(in.data(), tg.data(), 1.0f);
  cuda.adamw_step(1e-2, 1.0f);
  cuda.download_to_host();
  std::memcpy(cpu.host_params().data(), cuda.host_params().data(), bytes);
  std::memcpy(cpu.host_optimizer().m().data(), cuda.host_optimizer().m().data(), bytes);
  std::memcpy(cpu.host_optimizer().v().data(), cuda.host_optimizer().v().data(), bytes);
  cpu.host_optimizer().set_t(cuda.optimizer_t());
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

// The grown bf16 weights (`after`, plan.to's layout) against the grown fp32 master weights (`master`, the
// same layout) and the weights before growth (`before`, plan.from's layout), element by element: a layer the
// plan copies unchanged (identity row and column maps, no noise) keeps its source layer's bits (so the grown
// model computes what the original would), every other element is its master weight rounded to nearest.
inline void expect_grown_bf16_weights(const growth::GrowthPlan& plan, const std::vector<uint16_t>& before,
                                      const std::vector<uint16_t>& after, const float* master) {
  const ParamLayout from(plan.from), to(plan.to);
  ASSERT_EQ(static_cast<int64_t>(after.size()), to.numel());
  for (const growth::TensorRule& r : plan.tensors) {
    const ParamEntry *se = from.find(r.name), *de = to.find(r.name);
    const int64_t per = de->spec.numel_per_layer();
    const bool unchanged = plan.stage.noise <= 0 && r.rows.is_identity() && r.cols.is_identity() &&
                           per == se->spec.numel_per_layer();
    for (size_t l = 0; l < r.layers.size(); ++l) {
      const int64_t at = de->offset + int64_t(l) * per;
      if (unchanged && r.layers[l].fill == growth::LayerFill::kCopy) {
        EXPECT_EQ(0, std::memcmp(after.data() + at, before.data() + se->offset + r.layers[l].src * per,
                                 size_t(per) * 2))
            << r.name << " layer " << l << ": a layer copied unchanged lost its source's bf16 bits";
        continue;
      }
      int64_t bad = 0, first = -1;
      for (int64_t i = 0; i < per; ++i) {
        const __nv_bfloat16 want = __float2bfloat16_rn(master[at + i]);
        uint16_t w;
        std::memcpy(&w, &want, 2);
        if (w != after[size_t(at + i)] && bad++ == 0) first = i;
      }
      EXPECT_EQ(bad, 0) << r.name << " layer " << l
                        << ": bf16 weights not the rounded master weights (first at " << first << ")";
    }
  }
}

}  // namespace strata::test
