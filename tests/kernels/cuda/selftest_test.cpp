// tests/kernels/cuda/selftest_test.cpp: the primitives of kernels/cuda/common.cuh against exact references. On
// the GPU this checks that the hardware's m16n8k16 fragment layout is the one common.cuh documents (and the
// emulation implements); under the emulation it checks the emulator (barriers with exited threads, shuffles).
#include <cuda_runtime.h>

#include "kernels/cuda/selftest.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace strata::test {
namespace {

TEST(CudaSelftest, MmaFragmentLayoutMatchesTheDocumentedOne) {
  STRATA_SKIP_WITHOUT_GPU();
  // Small integers and halves are exact in bf16 and their products sum exactly in fp32: the result must be
  // bitwise the double product, so any misplaced fragment element changes it.
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> dist(-8, 8);
  std::vector<float> a(16 * 16), b(16 * 8), c(16 * 8);
  for (auto& x : a) x = static_cast<float>(dist(rng)) * 0.5f;
  for (auto& x : b) x = static_cast<float>(dist(rng));
  for (auto& x : c) x = static_cast<float>(dist(rng)) * 0.25f;
  std::vector<double> ref(16 * 8);
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      double acc = c[m * 8 + n];
      for (int k = 0; k < 16; ++k) acc += static_cast<double>(a[m * 16 + k]) * b[k * 8 + n];
      ref[m * 8 + n] = acc;
    }
  DeviceBuffer<float> da(a), db(b), dc(c), dd(16 * 8);
  cuda::mma_layout_selftest(dd.get(), da.get(), db.get(), dc.get(), nullptr);
  const auto got = dd.download();
  for (int i = 0; i < 16 * 8; ++i) EXPECT_EQ(got[i], ref[i]) << "D[" << i / 8 << "][" << i % 8 << "]";
}

TEST(CudaSelftest, LdmatrixAndCpAsyncGiveTheDocumentedFragments) {
  STRATA_SKIP_WITHOUT_GPU();
  // Element (r, c) holds the integer 16 r + c (exact in bf16 up to 256): each register says where it came from.
  std::vector<bf16> m(256);
  for (int i = 0; i < 256; ++i) m[i] = float_to_bf16(static_cast<float>(i));
  DeviceBuffer<bf16> dm(m);
  for (const bool trans : {false, true}) {
    DeviceBuffer<uint32_t> out(32 * 4 + 32 * 2);
    cuda::ldmatrix_selftest(out.get(), dm.get(), trans, nullptr);
    const auto got = out.download();
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane / 4, t = lane % 4;
      for (int i = 0; i < 4; ++i) {
        const int r0 = (i % 2) * 8, c0 = (i / 2) * 8;  // block i: top-left, bottom-left, top-right, bottom-right
        const int lo_r = trans ? 2 * t : g, lo_c = trans ? g : 2 * t;
        const int hi_r = trans ? 2 * t + 1 : g, hi_c = trans ? g : 2 * t + 1;
        const uint32_t word = got[lane * 4 + i];
        const uint32_t lo_bits = word << 16, hi_bits = word & 0xffff0000u;
        float lo, hi;
        std::memcpy(&lo, &lo_bits, 4);
        std::memcpy(&hi, &hi_bits, 4);
        EXPECT_EQ(lo, static_cast<float>(16 * (r0 + lo_r) + c0 + lo_c)) << "lane " << lane << " reg " << i << " trans " << trans;
        EXPECT_EQ(hi, static_cast<float>(16 * (r0 + hi_r) + c0 + hi_c)) << "lane " << lane << " reg " << i << " trans " << trans;
        if (i < 2) {
          EXPECT_EQ(got[128 + lane * 2 + i], word) << "ldmatrix_x2, lane " << lane << " reg " << i;
        }
      }
    }
  }
}

TEST(CudaSelftest, ReductionsAndBarriersWithReturnedThreads) {
  STRATA_SKIP_WITHOUT_GPU();
  for (const auto& [blocks, threads, live] : {std::tuple{3, 64, 64}, {2, 128, 37}, {2, 256, 1}, {1, 1024, 1000}}) {
    // Integers: every partial sum is exact, so the block sum is exact whatever the order.
    std::vector<float> x(static_cast<size_t>(blocks) * threads);
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>((i * 7919) % 201) - 100.0f;
    DeviceBuffer<float> dx(x), sums(blocks), maxes(x.size() / 32);
    DeviceBuffer<int> surv(blocks);
    cuda::reductions_selftest(sums.get(), maxes.get(), surv.get(), dx.get(), blocks, threads, live, nullptr);
    const auto s = sums.download(), m = maxes.download();
    const auto v = surv.download();
    for (int b = 0; b < blocks; ++b) {
      double ref = 0;
      for (int t = 0; t < threads; ++t) ref += x[b * threads + t];
      EXPECT_EQ(s[b], ref) << "block " << b << " of " << threads;
      EXPECT_EQ(v[b], live * (live + 1) / 2) << "block " << b << ", " << live << " survivors";
    }
    for (size_t w = 0; w < m.size(); ++w)
      EXPECT_EQ(m[w], *std::max_element(x.begin() + 32 * w, x.begin() + 32 * (w + 1))) << "warp " << w;
  }
}

}  // namespace
}  // namespace strata::test
