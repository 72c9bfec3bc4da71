// kernels/cuda/device_info.h: what CUDA devices this process sees (for `strata info`, the GPU tests' skip
// decision, and later the MFU peak table). Host-only API; compiled by nvcc, callable from C++.
#pragma once

#include <string>
#include <vector>

namespace strata::cuda {

struct DeviceInfo {
  int ordinal = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0;
  int sm_count = 0;
  size_t total_memory = 0;  // bytes
};

// Devices visible to this process; empty (never an error) when there is no driver or no GPU. `why_none` is set
// to the driver's reason when the list is empty.
std::vector<DeviceInfo> list_devices(std::string* why_none = nullptr);

// Runs a trivial kernel on `ordinal` and checks its result: proves the build's architectures match the card.
bool smoke_test(int ordinal, std::string* error);

}  // namespace strata::cuda
