// engine/device_buffer.h: one device allocation owned by an object, for the CUDA runner
// (engine/cuda_model.cpp) and the growth phases beside it (engine/cuda_growth.cpp). Declared without the CUDA
// headers, so a header can hold DeviceBuffer members; the functions are defined in engine/cuda_model.cpp,
// against the CUDA runtime or the CPU emulation.
#pragma once

#include <cstddef>
#include <utility>

namespace strata {

struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  DeviceBuffer() = default;
  // cudaMalloc of n bytes (at least 1); a failure is a strata::Error naming `what` and the size, and the
  // runtime's error is cleared.
  DeviceBuffer(size_t n, const char* what);
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr(o.ptr), bytes(o.bytes) { o.ptr = nullptr, o.bytes = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr, o.ptr);
    std::swap(bytes, o.bytes);
    return *this;
  }
  ~DeviceBuffer();  // cudaFree, its error ignored (no errors from a destructor)
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr);
  }
};

}  // namespace strata
