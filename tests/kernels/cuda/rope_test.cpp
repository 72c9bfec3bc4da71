// tests/kernels/cuda/rope_test.cpp: the CUDA RoPE ops (kernels/cuda/rope.cu) against the fp32 CPU twin on the
// same bf16-rounded inputs, in place on a whole qkv buffer: the query and key heads must match the twin and
// the value heads must come back bitwise untouched.
//
// Shapes sweep the vector path (HS/2 a multiple of 8: HS = 16, 64) and the scalar one (HS = 2, 6, 10),
// grouped and ungrouped heads, position offsets 0 and 4000 (large angles), and one case on a buffer offset by
// one element (the scalar fallback for an aligned HS). Each case runs every variant (ops::Cuda::variant 0, the
// default, and 1, lanes across heads with the batch rows in the loop; the scalar path has no variant).
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/tolerances.h"

namespace strata::test {
namespace {

const ops::Cpu kCpu{};
constexpr float kBase = 10000.0f;

struct Case {
  int B, T, NH, KVH, HS, pos0;
  bool misalign;
  std::string name() const {
    return "B=" + std::to_string(B) + " T=" + std::to_string(T) + " NH=" + std::to_string(NH) +
           " KVH=" + std::to_string(KVH) + " HS=" + std::to_string(HS) + " pos0=" + std::to_string(pos0) +
           (misalign ? " misaligned" : "");
  }
};
const Case kCases[] = {{1, 1, 1, 1, 2, 0, false},     {2, 5, 3, 1, 6, 0, false},
                       {2, 7, 4, 2, 16, 3, false},    {1, 9, 2, 2, 64, 4000, false},
                       {3, 4, 2, 1, 10, 4000, false}, {2, 3, 2, 2, 64, 0, true},
                       {6, 3, 3, 1, 16, 7, false}};  // B > 4: variant 1's batch loop, a full round and a tail

void check(const Case& k, bool forward, int variant) {
  const int row = (k.NH + 2 * k.KVH) * k.HS;
  const size_t n = size_t(k.B) * k.T * row;
  const auto qkv = random_bf16_values(n, forward ? 1 : 2);
  auto ref = qkv;
  if (forward)
    ops::rope_forward(kCpu, ref.data(), k.B, k.T, k.NH, k.KVH, k.HS, kBase, k.pos0);
  else
    ops::rope_backward(kCpu, ref.data(), k.B, k.T, k.NH, k.KVH, k.HS, kBase, k.pos0);

  const size_t off = k.misalign ? 1 : 0;
  std::vector<bf16> host(n + off, float_to_bf16(0.0f));
  const auto in = to_bf16(qkv);
  std::copy(in.begin(), in.end(), host.begin() + static_cast<std::ptrdiff_t>(off));
  DeviceBuffer<bf16> d(host);
  ops::Cuda dev;
  dev.variant = variant;
  if (forward)
    ops::rope_forward(dev, d.get() + off, k.B, k.T, k.NH, k.KVH, k.HS, kBase, k.pos0);
  else
    ops::rope_backward(dev, d.get() + off, k.B, k.T, k.NH, k.KVH, k.HS, kBase, k.pos0);
  const auto all = d.download();
  const std::vector<bf16> got(all.begin() + static_cast<std::ptrdiff_t>(off), all.end());
  const std::string what = forward ? "rope forward" : "rope backward";
  STRATA_EXPECT_CLOSE(to_float(got), ref, kTolBf16Elementwise, what);
  // The value heads (the last KVH*HS elements of each row) are not touched.
  const size_t v0 = size_t(k.NH + k.KVH) * k.HS;
  for (size_t r = 0; r < size_t(k.B) * k.T; ++r)
    for (size_t c = v0; c < size_t(row); ++c)
      ASSERT_EQ(bf16_to_float(got[r * row + c]), qkv[r * row + c])
          << "value head changed at row " << r << " col " << c;
}

TEST(CudaRope, ForwardMatchesCpu) {
  STRATA_SKIP_WITHOUT_GPU();
  for (const int variant : {0, 1})
    for (const Case& k : kCases) {
      SCOPED_TRACE(k.name() + " variant " + std::to_string(variant));
      check(k, true, variant);
    }
}

TEST(CudaRope, BackwardMatchesCpu) {
  STRATA_SKIP_WITHOUT_GPU();
  for (const int variant : {0, 1})
    for (const Case& k : kCases) {
      SCOPED_TRACE(k.name() + " variant " + std::to_string(variant));
      check(k, false, variant);
    }
}

// Backward after forward is the identity up to two bf16 roundings (the rotation is orthogonal): the
// two-rounding tolerance.
TEST(CudaRope, BackwardInvertsForward) {
  STRATA_SKIP_WITHOUT_GPU();
  const int B = 2, T = 6, NH = 4, KVH = 2, HS = 32, pos0 = 17;
  const auto qkv = random_bf16_values(size_t(B) * T * (NH + 2 * KVH) * HS, 3);
  DeviceBuffer<bf16> d(to_bf16(qkv));
  ops::rope_forward(ops::Cuda{}, d.get(), B, T, NH, KVH, HS, kBase, pos0);
  ops::rope_backward(ops::Cuda{}, d.get(), B, T, NH, KVH, HS, kBase, pos0);
  STRATA_EXPECT_CLOSE(to_float(d.download()), qkv, kTolBf16Reduction, "backward(forward(x))");
}

}  // namespace
}  // namespace strata::test
