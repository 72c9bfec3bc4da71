// tests/kernels/cuda/cuda_test_util.h: what the CUDA kernel tests share. Each test source builds twice (see
// tests/CMakeLists.txt): against the real kernels, where STRATA_SKIP_WITHOUT_GPU skips with the driver's reason
// on a machine without a GPU, and against the CPU emulation (STRATA_CUDA_EMU), where it does nothing.
#pragma once

#include <gtest/gtest.h>

#if defined(STRATA_CUDA_EMU)
#include "kernels/cuda/emu/emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "engine/check.h"
#include "kernels/ops.h"

namespace strata::test {

using bf16 = __nv_bfloat16;

// Empty when a device is present (or under emulation), else the reason there is none.
inline std::string why_no_gpu() {
#if defined(STRATA_CUDA_EMU)
  return {};
#else
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return cudaGetErrorString(err);
  }
  return n > 0 ? std::string() : std::string("no CUDA device");
#endif
}

#define STRATA_SKIP_WITHOUT_GPU()                                          \
  do {                                                                     \
    const std::string strata_why_ = ::strata::test::why_no_gpu();          \
    if (!strata_why_.empty()) GTEST_SKIP() << "no GPU: " << strata_why_;   \
  } while (0)

// A device array of T. Freshly allocated buffers are poisoned (every byte 0xFF: NaN for float and bf16, -1 for
// integers) so an element a kernel fails to write shows up in the comparison.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : n_(n) {
    CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr_), std::max<size_t>(n, 1) * sizeof(T)));
    poison();
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), n_(o.n_) { o.ptr_ = nullptr, o.n_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(n_, o.n_);
    return *this;
  }
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }
  T* get() const { return ptr_; }
  size_t size() const { return n_; }
  void poison() { CUDA_CHECK(cudaMemset(ptr_, 0xFF, n_ * sizeof(T))); }
  void upload(const std::vector<T>& host) {
    STRATA_CHECK(host.size() == n_, "upload of ", host.size(), " elements into ", n_);
    CUDA_CHECK(cudaMemcpy(ptr_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(host.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }

 private:
  T* ptr_ = nullptr;
  size_t n_ = 0;
};

// A device array that starts one element past a 16-byte boundary when `misalign` is set, so a kernel's scalar
// (unaligned) path is exercised; get() is the array's first element either way.
template <class T>
class OffsetBuffer {
 public:
  OffsetBuffer(size_t n, bool misalign) : off_(misalign ? 1 : 0), buf_(n + off_) {}
  OffsetBuffer(const std::vector<T>& host, bool misalign) : OffsetBuffer(host.size(), misalign) { upload(host); }
  T* get() const { return buf_.get() + off_; }
  void upload(const std::vector<T>& host) {
    std::vector<T> full = buf_.download();
    std::copy(host.begin(), host.end(), full.begin() + static_cast<std::ptrdiff_t>(off_));
    buf_.upload(full);
  }
  std::vector<T> download() const {
    const std::vector<T> full = buf_.download();
    return std::vector<T>(full.begin() + static_cast<std::ptrdiff_t>(off_), full.end());
  }

 private:
  size_t off_;
  DeviceBuffer<T> buf_;
};

inline float bf16_to_float(bf16 x) { return __bfloat162float(x); }
inline bf16 float_to_bf16(float x) { return __float2bfloat16_rn(x); }

inline std::vector<float> to_float(const std::vector<bf16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = bf16_to_float(v[i]);
  return out;
}
inline std::vector<bf16> to_bf16(const std::vector<float>& v) {
  std::vector<bf16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = float_to_bf16(v[i]);
  return out;
}

// n seeded values uniform in [lo, hi), rounded to bf16 (so the CPU twin, fed the same floats, sees exactly the
// kernel's inputs). Never all zeros.
inline std::vector<float> random_bf16_values(size_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> out(n);
  for (auto& x : out) x = bf16_to_float(float_to_bf16(dist(rng)));
  return out;
}

// How far `got` is from `ref`: the largest |got - ref| over the largest |ref| (a NaN anywhere gives NaN), and
// where. The reference norm must be positive, so a test cannot pass on an all-zero reference.
struct Comparison {
  double max_abs_err = 0, max_abs_ref = 0;
  size_t worst = 0;
  bool has_nan = false;
  double rel() const { return has_nan ? NAN : max_abs_err / max_abs_ref; }
};
template <class A, class B>
Comparison compare(const std::vector<A>& got, const std::vector<B>& ref) {
  Comparison c;
  EXPECT_EQ(got.size(), ref.size());
  for (size_t i = 0; i < std::min(got.size(), ref.size()); ++i) {
    const double g = static_cast<double>(got[i]), r = static_cast<double>(ref[i]);
    if (std::isnan(g) || std::isnan(r)) c.has_nan = true;
    c.max_abs_ref = std::max(c.max_abs_ref, std::abs(r));
    if (std::abs(g - r) > c.max_abs_err) c.max_abs_err = std::abs(g - r), c.worst = i;
  }
  EXPECT_GT(c.max_abs_ref, 0.0) << "the reference is all zeros: the comparison would be vacuous";
  return c;
}
inline std::vector<double> as_double(const std::vector<bf16>& v) {
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = bf16_to_float(v[i]);
  return out;
}

// EXPECT that got matches ref to `tol` relative to max |ref|, printing the worst element.
#define STRATA_EXPECT_CLOSE(got, ref, tol, what)                                                            \
  do {                                                                                                      \
    const auto strata_c_ = ::strata::test::compare(got, ref);                                               \
    EXPECT_FALSE(strata_c_.has_nan) << what << ": NaN in the output (an element left unwritten?)";         \
    EXPECT_LE(strata_c_.rel(), tol) << what << ": worst element " << strata_c_.worst << " off by "         \
                                    << strata_c_.max_abs_err << " (max |ref| " << strata_c_.max_abs_ref   \
                                    << ")";                                                                 \
  } while (0)

}  // namespace strata::test
