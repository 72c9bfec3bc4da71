// kernels/cuda/emu/emu.cpp: the CPU emulation of CUDA launches and runtime calls (see emu.h).
#include "kernels/cuda/emu/emu.h"

#include <barrier>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace strata::emu {

thread_local ThreadState tls;

namespace {

// A barrier over the threads of a group that have not returned from the kernel: a thread that returns leaves,
// and if everyone still running already waits, they are released (CUDA's rule for exited threads).
class GroupBarrier {
 public:
  void reset(int n) {
    std::lock_guard lock(mu_);
    expected_ = n;
    arrived_ = 0;
  }
  void arrive_and_wait() {
    std::unique_lock lock(mu_);
    const uint64_t gen = gen_;
    if (++arrived_ == expected_) {
      release();
      return;
    }
    cv_.wait(lock, [&] { return gen_ != gen; });
  }
  void leave() {
    std::lock_guard lock(mu_);
    --expected_;
    if (arrived_ > 0 && arrived_ == expected_) release();
  }

 private:
  void release() {
    arrived_ = 0;
    ++gen_;
    cv_.notify_all();
  }
  std::mutex mu_;
  std::condition_variable cv_;
  int expected_ = 0, arrived_ = 0;
  uint64_t gen_ = 0;
};

struct Warp {
  GroupBarrier barrier;
  uint64_t slots[32] = {};
  uint32_t bulk[32][8] = {};
  bool live[32] = {};
};

struct Launch {
  GroupBarrier block;
  std::vector<std::unique_ptr<Warp>> warps;
  std::vector<unsigned char> smem;
};

Launch* g_launch = nullptr;  // the launch in flight (launches are serialised by g_launch_mu)
std::mutex g_launch_mu;
thread_local int t_warp = 0, t_lane = 0;

}  // namespace

void* dynamic_smem() { return g_launch->smem.empty() ? nullptr : g_launch->smem.data(); }
void syncthreads() { g_launch->block.arrive_and_wait(); }
void syncwarp() { g_launch->warps[t_warp]->barrier.arrive_and_wait(); }
int lane_id() { return t_lane; }

uint64_t warp_exchange(uint64_t v, int src) {
  Warp& w = *g_launch->warps[t_warp];
  w.slots[t_lane] = v;
  w.barrier.arrive_and_wait();
  const uint64_t out = (src >= 0 && src < 32 && w.live[src]) ? w.slots[src] : v;
  w.barrier.arrive_and_wait();  // nobody overwrites a slot before every lane has read
  return out;
}

void warp_gather(const uint32_t* mine, int n, uint32_t (*all)[8]) {
  Warp& w = *g_launch->warps[t_warp];
  for (int i = 0; i < n; ++i) w.bulk[t_lane][i] = mine[i];
  w.barrier.arrive_and_wait();
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < n; ++i) all[l][i] = w.bulk[l][i];
  w.barrier.arrive_and_wait();
}

void launch(dim3 grid, dim3 block, size_t dynamic_smem_bytes, const std::function<void()>& body) {
  std::lock_guard serial(g_launch_mu);
  const int nthreads = static_cast<int>(block.x * block.y * block.z);
  const long nblocks = static_cast<long>(grid.x) * grid.y * grid.z;
  if (nthreads <= 0 || nthreads > 1024 || nblocks <= 0) return;  // cudaErrorInvalidConfiguration on a GPU
  Launch L;
  L.smem.assign(dynamic_smem_bytes, 0xFF);
  const int nwarps = (nthreads + 31) / 32;
  for (int w = 0; w < nwarps; ++w) L.warps.push_back(std::make_unique<Warp>());
  auto reset_block = [&]() noexcept {
    L.block.reset(nthreads);
    for (int w = 0; w < nwarps; ++w) {
      const int lanes = std::min(32, nthreads - 32 * w);
      L.warps[w]->barrier.reset(lanes);
      for (int l = 0; l < 32; ++l) L.warps[w]->live[l] = l < lanes;
    }
  };
  reset_block();
  std::barrier between_blocks(nthreads, reset_block);
  g_launch = &L;
  auto worker = [&](int linear) {
    tls.block_dim = block;
    tls.grid_dim = grid;
    tls.linear = linear;
    tls.thread_idx = {static_cast<unsigned>(linear % block.x), static_cast<unsigned>((linear / block.x) % block.y),
                      static_cast<unsigned>(linear / (block.x * block.y))};
    t_warp = linear / 32;
    t_lane = linear % 32;
    for (long b = 0; b < nblocks; ++b) {
      tls.block_idx = {static_cast<unsigned>(b % grid.x), static_cast<unsigned>((b / grid.x) % grid.y),
                       static_cast<unsigned>(b / (static_cast<long>(grid.x) * grid.y))};
      body();
      Warp& w = *L.warps[t_warp];
      {
        // Mark this lane dead before leaving, so a shuffle still in flight in its warp reads the caller's value.
        w.live[t_lane] = false;
      }
      w.barrier.leave();
      L.block.leave();
      between_blocks.arrive_and_wait();
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(nthreads);
  for (int i = 0; i < nthreads; ++i) pool.emplace_back(worker, i);
  for (auto& t : pool) t.join();
  g_launch = nullptr;
}

}  // namespace strata::emu

// ---- the CUDA runtime calls used by the kernels and their tests, on host memory --------------------------------
extern "C" {

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  *ptr = std::aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
  return *ptr ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFree(void* ptr) {
  std::free(ptr);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind) {
  if (n) std::memmove(dst, src, n);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind, cudaStream_t) {
  if (n) std::memmove(dst, src, n);
  return cudaSuccess;
}
cudaError_t cudaMemset(void* dst, int value, size_t n) {
  std::memset(dst, value, n);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t n, cudaStream_t) {
  std::memset(dst, value, n);
  return cudaSuccess;
}
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
cudaError_t cudaPeekAtLastError(void) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
const char* cudaGetErrorString(cudaError_t err) { return err == cudaSuccess ? "no error" : "emulated CUDA error"; }
cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute, int) { return cudaSuccess; }
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = 4; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = 227 * 1024; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    default: *value = 0; break;
  }
  return cudaSuccess;
}

}  // extern "C"
