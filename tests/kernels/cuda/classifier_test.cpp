// tests/kernels/cuda/classifier_test.cpp: the CUDA fused classifier (kernels/cuda/classifier.cu) against the
// fp32 CPU twin (softmax_cross_entropy) on the same bf16-rounded logits.
//
// V sweeps one vector (8), odd sizes whose rows start at every alignment (17, 100, 1001: the unaligned head
// and tail of each row), and a wide row (4099) that spreads over a full block; rows include ignored targets
// and a row shifted by +60 (the running maximum must rescale). With dloss = 0 only the losses are written and
// the logits stay bitwise unchanged. A target outside [0,V) gives that row a NaN loss and a NaN gradient row
// and leaves the other rows right. Losses and gradients are written `=`, so the poisoned outputs must be
// fully overwritten.
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/tolerances.h"

namespace strata::test {
namespace {

const ops::Cpu kCpu{};
constexpr int32_t kIgnore = -100;
constexpr float kDloss = 0.37f;

struct Case {
  int N, V;
};
// V = 60000: longer than the 112 KB shared-memory row cache (57344 logits), so its tail streams from memory.
const Case kCases[] = {{1, 8}, {5, 17}, {4, 100}, {3, 1001}, {2, 4099}, {2, 60000}};

std::vector<int32_t> targets_for(int N, int V, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, V - 1);
  std::vector<int32_t> t(static_cast<size_t>(N));
  for (int32_t& x : t) x = dist(rng);
  if (N > 1) t[1] = kIgnore;
  return t;
}

// Logits in [-4, 4), the last row shifted by +60 (still exact in bf16 to its 8 bits).
std::vector<float> logits_for(int N, int V, uint64_t seed) {
  auto x = random_bf16_values(size_t(N) * V, seed, -4.0f, 4.0f);
  if (N > 2)
    for (int v = 0; v < V; ++v) {
      float& e = x[size_t(N - 1) * V + v];
      e = bf16_to_float(float_to_bf16(e + 60.0f));
    }
  return x;
}

// Every variant (ops::Cuda::variant: 0 the default, 4 vectors per thread in flight; 1 and 2 with 2 and 1).
TEST(CudaClassifier, LossAndGradientMatchCpu) {
  STRATA_SKIP_WITHOUT_GPU();
  for (int variant = 0; variant <= 2; ++variant)
    for (const Case& k : kCases) {
      SCOPED_TRACE("variant " + std::to_string(variant) + " N=" + std::to_string(k.N) +
                   " V=" + std::to_string(k.V));
      const auto tg = targets_for(k.N, k.V, 1);
      const auto x = logits_for(k.N, k.V, 2);
      auto ref_grad = x;
      std::vector<float> ref_loss(size_t(k.N));
      ops::softmax_cross_entropy(kCpu, ref_grad.data(), ref_loss.data(), tg.data(), k.N, k.V, kIgnore,
                                 kDloss);

      DeviceBuffer<bf16> dx(to_bf16(x));
      DeviceBuffer<float> dloss(size_t(k.N));
      DeviceBuffer<int32_t> dtg(tg);
      ops::Cuda dev;
      dev.variant = variant;
      ops::softmax_cross_entropy(dev, dx.get(), dloss.get(), dtg.get(), k.N, k.V, kIgnore, kDloss);
      const auto loss = dloss.download();
      STRATA_EXPECT_CLOSE(loss, ref_loss, kTolFp32Stat, "losses");
      STRATA_EXPECT_CLOSE(to_float(dx.download()), ref_grad, kTolBf16Elementwise, "dlogits");
      if (k.N > 1) {
        EXPECT_EQ(loss[1], 0.0f) << "an ignored row's loss";
      }
    }
}

TEST(CudaClassifier, LossOnlyLeavesLogitsUnchanged) {
  STRATA_SKIP_WITHOUT_GPU();
  for (int variant = 0; variant <= 2; ++variant)
    for (const Case& k : kCases) {
      SCOPED_TRACE("variant " + std::to_string(variant) + " N=" + std::to_string(k.N) +
                   " V=" + std::to_string(k.V));
      const auto tg = targets_for(k.N, k.V, 3);
      const auto x = logits_for(k.N, k.V, 4);
      auto cpu_x = x;
      std::vector<float> ref_loss(size_t(k.N));
      ops::softmax_cross_entropy(kCpu, cpu_x.data(), ref_loss.data(), tg.data(), k.N, k.V, kIgnore, 0.0f);

      const auto in = to_bf16(x);
      DeviceBuffer<bf16> dx(in);
      DeviceBuffer<float> dloss(size_t(k.N));
      DeviceBuffer<int32_t> dtg(tg);
      ops::Cuda dev;
      dev.variant = variant;
      ops::softmax_cross_entropy(dev, dx.get(), dloss.get(), dtg.get(), k.N, k.V, kIgnore, 0.0f);
      STRATA_EXPECT_CLOSE(dloss.download(), ref_loss, kTolFp32Stat, "losses");
      const auto after = dx.download();
      EXPECT_EQ(std::memcmp(after.data(), in.data(), in.size() * sizeof(bf16)), 0)
          << "logits changed with dloss = 0";
    }
}

// Deterministic run to run (fixed reduction order): two runs give the same bits.
TEST(CudaClassifier, Deterministic) {
  STRATA_SKIP_WITHOUT_GPU();
  const int N = 3, V = 1001;
  const auto tg = targets_for(N, V, 5);
  const auto in = to_bf16(logits_for(N, V, 6));
  std::vector<float> losses[2];
  std::vector<bf16> grads[2];
  for (int r = 0; r < 2; ++r) {
    DeviceBuffer<bf16> dx(in);
    DeviceBuffer<float> dloss(static_cast<size_t>(N));
    DeviceBuffer<int32_t> dtg(tg);
    ops::softmax_cross_entropy(ops::Cuda{}, dx.get(), dloss.get(), dtg.get(), N, V, kIgnore, kDloss);
    losses[r] = dloss.download(), grads[r] = dx.download();
  }
  EXPECT_EQ(std::memcmp(losses[0].data(), losses[1].data(), N * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(grads[0].data(), grads[1].data(), grads[0].size() * sizeof(bf16)), 0);
}

// The GPU cannot throw: a target outside [0,V) that is not the ignore index gives NaN (loss and gradient row)
// for that row only.
TEST(CudaClassifier, TargetOutsideVocabularyGivesNaNForItsRow) {
  STRATA_SKIP_WITHOUT_GPU();
  const int N = 4, V = 100;
  auto tg = targets_for(N, V, 7);
  tg[2] = V;  // out of range
  tg[3] = -1;
  const auto x = logits_for(N, V, 8);
  DeviceBuffer<bf16> dx(to_bf16(x));
  DeviceBuffer<float> dloss(static_cast<size_t>(N));
  DeviceBuffer<int32_t> dtg(tg);
  ops::softmax_cross_entropy(ops::Cuda{}, dx.get(), dloss.get(), dtg.get(), N, V, kIgnore, kDloss);
  const auto loss = dloss.download();
  const auto grad = to_float(dx.download());
  EXPECT_TRUE(std::isnan(loss[2]) && std::isnan(loss[3])) << loss[2] << " " << loss[3];
  for (int r : {2, 3})
    for (int v = 0; v < V; ++v)
      ASSERT_TRUE(std::isnan(grad[size_t(r * V + v)])) << "row " << r << " col " << v;
  // Rows 0 (valid) and 1 (ignored) are as the twin has them.
  auto ref_x = std::vector<float>(x.begin(), x.begin() + 2 * V);
  std::vector<float> ref_loss(2);
  ops::softmax_cross_entropy(kCpu, ref_x.data(), ref_loss.data(), tg.data(), 2, V, kIgnore, kDloss);
  STRATA_EXPECT_CLOSE(std::vector<float>(loss.begin(), loss.begin() + 2), ref_loss, kTolFp32Stat,
                      "valid losses");
  STRATA_EXPECT_CLOSE(std::vector<float>(grad.begin(), grad.begin() + 2 * V), ref_x, kTolBf16Elementwise,
                      "valid dlogits");
}

}  // namespace
}  // namespace strata::test
