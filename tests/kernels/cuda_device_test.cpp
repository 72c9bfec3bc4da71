// GPU smoke test: the CUDA build runs on the card (architectures match, the runtime works). Skips with the
// driver's reason where there is no GPU.
#include <gtest/gtest.h>

#include "kernels/cuda/device_info.h"

TEST(CudaDevice, KernelRunsAndWritesEveryElement) {
  std::string why;
  const auto devices = strata::cuda::list_devices(&why);
  if (devices.empty()) GTEST_SKIP() << "no GPU: " << why;
  for (const auto& d : devices) {
    EXPECT_GT(d.sm_count, 0) << d.name;
    EXPECT_GT(d.total_memory, size_t{1} << 30) << d.name;
    std::string err;
    EXPECT_TRUE(strata::cuda::smoke_test(d.ordinal, &err)) << d.name << ": " << err;
  }
}
