// kernels/cuda/emu/emu.h: runs Strata's CUDA kernels on the CPU, so their logic is tested where there is no GPU.
//
// The kernel sources (kernels/cuda/*.cu) are compiled a second time by the host C++ compiler with
// STRATA_CUDA_EMU defined (CMake target strata_cuda_emu). The real CUDA headers still provide the types (dim3,
// float4, __nv_bfloat16 and its host arithmetic); this header provides what only nvcc has:
//   - one fiber (ucontext) per CUDA thread of a block, all run by the calling OS thread, round-robin between
//     barriers; the blocks of a grid run one after another, so a kernel's `__shared__` arrays become function
//     statics that every thread of the running block sees; a launch is deterministic;
//   - __syncthreads (a barrier over the block's threads that have not returned; a block whose threads wait at
//     a barrier the others never reach is reported as deadlocked and aborts), warp shuffles and __syncwarp (a
//     barrier per warp), atomics, the float intrinsics;
//   - the runtime calls the kernels and tests use (cudaMalloc, cudaMemcpyAsync, ...) on host memory: by default
//     each call completes before it returns, as if every stream were synchronised after every call (see
//     "Streams" below for the adversarial orders).
// The order of the fibers between barriers is STRATA_EMU_SCHEDULE (emu.cpp); ctest runs every emulated test
// under two orders, so a missing barrier is caught whichever of the two threads it involves comes first.
// What it does not model: timing, the memory model of a real GPU (threads interleave only at barriers, so a kernel
// that races between barriers passes here: compute-sanitizer racecheck on the GPU is the check for that), warp
// divergence rules beyond "a shuffle waits for every live lane of its warp", and library calls (cuBLASLt, CUB).
// A kernel that passes its emulated test still needs its `gpu` test on a device.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>

#undef __shared__
#define __shared__ static
#undef __forceinline__
#define __forceinline__ inline
#define __launch_bounds__(...)

namespace strata::emu {

struct ThreadState {
  uint3 thread_idx{0, 0, 0};
  uint3 block_idx{0, 0, 0};
  dim3 block_dim{1, 1, 1};
  dim3 grid_dim{1, 1, 1};
  int linear = 0;  // thread index within the block
};
// The running CUDA thread's indices: one global, set by the scheduler before it switches to a fiber (launches are
// serialised and all fibers run on the launching OS thread; thread_local would add nothing and, under
// AddressSanitizer, its lookup from a fiber stack came back null).
extern ThreadState tls;

// Streams. By default every call completes before it returns (above), which hides a missing wait between
// streams. STRATA_EMU_STREAMS picks an adversarial order instead, so such a bug changes the results:
//   eager        (default) every operation runs when it is called;
//   late-others  the legacy stream (0) runs at once, every other stream's operations wait in its queue until
//                something needs them: a cudaStreamWaitEvent that runs, a synchronize, cudaFree, or a copy to
//                the host from that stream. A consumer on the legacy stream that forgot to wait reads stale data;
//   late-legacy  the reverse: the legacy stream's operations are queued and every other stream runs at once
//                (after the waits it was given): a side stream that reads the legacy stream's results without
//                waiting for them, or overwrites data the legacy stream has yet to read, is caught.
// cudaMemcpy / cudaMemset without a stream are the legacy stream's; a host-to-device copy takes its source
// when called (pageable memory), a device-to-host copy synchronises its stream first, as CUDA does.
// on_stream runs `op` as an operation of `stream` under that order (kernel launches, the emulated library
// calls and NCCL collectives go through it); flush_stream / flush_all_streams run what is queued.
void on_stream(cudaStream_t stream, std::function<void()> op);
// Whether STRATA_EMU_STREAMS queues `stream`'s operations (else on_stream runs them at once).
bool deferred(cudaStream_t stream);
void flush_stream(cudaStream_t stream);
void flush_all_streams();
// The runtime's event calls (emu.cpp): a record is a marker in its stream's queue; a wait, when it runs, runs
// the recorded stream up to the marker current at the time of the wait call; forget drops a destroyed stream
// (after running its queue) or event.
void record_event(cudaEvent_t event, cudaStream_t stream);
// cudaEventElapsedTime: the host time between the moments the two events' streams reached them (what is
// queued up to them runs first); false if either was never recorded. Emulated kernels run on the CPU, so
// these are CPU times (the op timer, kernels/cuda/op_timer.h, runs on them).
bool elapsed_ms(cudaEvent_t start, cudaEvent_t end, float* ms);
void wait_event(cudaStream_t stream, cudaEvent_t event);
void forget(cudaStream_t stream, cudaEvent_t event);

// Device memory. cudaMalloc / cudaFree keep count of the bytes allocated, and cudaMemGetInfo reports the
// emulated device's size (STRATA_EMU_DEVICE_BYTES, a byte count, else 80 GiB) less them as free, as a GPU
// does.
// The peak is the most bytes allocated at once since the last reset_peak_allocated(): what a test compares
// with a memory plan.
size_t allocated_bytes();
size_t peak_allocated_bytes();
void reset_peak_allocated();

// Runs body once per (block, thread) of the launch, blocks in order, threads of a block concurrently.
// dynamic_smem bytes are visible through dynamic_smem() (poisoned with 0xFF at the start of each launch).
void launch(dim3 grid, dim3 block, size_t dynamic_smem_bytes, const std::function<void()>& body);
void* dynamic_smem();
void syncthreads();
void syncwarp();
// Exchanges one 8-byte value among the live lanes of the calling warp: writes v, waits for the warp, returns
// lane src's value (src is taken modulo 32; a lane outside the warp or not live returns the caller's v).
uint64_t warp_exchange(uint64_t v, int src);
int lane_id();
// Every live lane of the warp contributes n <= 8 words; all[l][i] is lane l's word i afterwards.
void warp_gather(const uint32_t* mine, int n, uint32_t (*all)[8]);

template <class T>
T shfl(T v, int src) {
  static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = warp_exchange(bits, src);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

}  // namespace strata::emu

#define threadIdx (::strata::emu::tls.thread_idx)
#define blockIdx (::strata::emu::tls.block_idx)
#define blockDim (::strata::emu::tls.block_dim)
#define gridDim (::strata::emu::tls.grid_dim)

inline void __syncthreads() { ::strata::emu::syncthreads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { ::strata::emu::syncwarp(); }
template <class T>
T __shfl_xor_sync(unsigned, T v, int lane_mask, int width = 32) {
  const int lane = ::strata::emu::lane_id();
  const int src = (lane ^ lane_mask);
  return ::strata::emu::shfl(v, (src / width == lane / width) ? src : lane);
}
template <class T>
T __shfl_sync(unsigned, T v, int src_lane, int width = 32) {
  const int lane = ::strata::emu::lane_id();
  return ::strata::emu::shfl(v, (lane / width) * width + (src_lane % width));
}
template <class T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
  const int lane = ::strata::emu::lane_id();
  const int src = lane + static_cast<int>(delta);
  return ::strata::emu::shfl(v, (src / width == lane / width) ? src : lane);
}
template <class T>
T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
  const int lane = ::strata::emu::lane_id();
  const int src = lane - static_cast<int>(delta);
  return ::strata::emu::shfl(v, (src >= 0 && src / width == lane / width) ? src : lane);
}

inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline double atomicAdd(double* p, double v) { return std::atomic_ref<double>(*p).fetch_add(v); }
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_add(v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return std::atomic_ref<unsigned long long>(*p).fetch_add(v);
}
inline int atomicMax(int* p, int v) {
  std::atomic_ref<int> a(*p);
  int old = a.load();
  while (old < v && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}

inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline unsigned __float_as_uint(float x) {
  unsigned u;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
inline int __float_as_int(float x) {
  int u;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float __int_as_float(int u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
template <class T>
inline T __ldg(const T* p) {
  return *p;
}
