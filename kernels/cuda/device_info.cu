#include <cuda_runtime.h>

#include "engine/check.h"
#include "kernels/cuda/device_info.h"

namespace strata::cuda {
namespace {

// out[i] = 2 * i + 1 for i < n: a result that cannot appear by accident in poisoned memory.
__global__ void odd_numbers_kernel(int* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = 2 * i + 1;
}

}  // namespace

std::vector<DeviceInfo> list_devices(std::string* why_none) {
  std::vector<DeviceInfo> out;
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    if (why_none) *why_none = cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky error for later callers
    return out;
  }
  for (int d = 0; d < n; ++d) {
    cudaDeviceProp p{};
    CUDA_CHECK(cudaGetDeviceProperties(&p, d));
    out.push_back({d, p.name, p.major, p.minor, p.multiProcessorCount, p.totalGlobalMem});
  }
  if (out.empty() && why_none) *why_none = "no CUDA device";
  return out;
}

bool smoke_test(int ordinal, std::string* error) {
  constexpr int n = 1000;  // not a multiple of the block size, so the bounds check is exercised
  CUDA_CHECK(cudaSetDevice(ordinal));
  int* d = nullptr;
  CUDA_CHECK(cudaMalloc(&d, n * sizeof(int)));
  CUDA_CHECK(cudaMemset(d, 0xFF, n * sizeof(int)));  // poison
  odd_numbers_kernel<<<(n + 255) / 256, 256>>>(d, n);
  CUDA_CHECK_LAUNCH();
  std::vector<int> h(n);
  CUDA_CHECK(cudaMemcpy(h.data(), d, n * sizeof(int), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaFree(d));
  for (int i = 0; i < n; ++i)
    if (h[i] != 2 * i + 1) {
      if (error) *error = cat("element ", i, " is ", h[i], ", expected ", 2 * i + 1);
      return false;
    }
  return true;
}

}  // namespace strata::cuda
