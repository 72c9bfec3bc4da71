// engine/parallel.h: the one CPU work-sharing helper for non-numeric work (tokenizing, counting, shard
// writing). Numeric kernels use OpenMP; this is for coarse tasks of uneven size, scheduled dynamically.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace strata {

// Number of hardware threads (at least 1).
inline int hardware_threads() {
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

// Resolves a user's thread count: 0 (or less) means all cores.
inline int resolve_threads(int requested) {
  return requested > 0 ? requested : hardware_threads();
}

// Sets the threads of the numeric kernels (OpenMP, and OpenBLAS, which shares OpenMP's pool): 0 = all cores.
// Returns the count in effect (1 in a build without OpenMP). Defined in engine/threads.cpp (strata_train).
int set_compute_threads(int requested);

// Calls fn(i) for i in [0, n) on up to `threads` threads (0 = all cores), handing out indices one at a time.
// The first exception thrown by any call is rethrown on the calling thread after all workers stop.
template <typename Fn>
void parallel_for(size_t n, int threads, Fn&& fn) {
  const size_t nt = std::min(n, static_cast<size_t>(resolve_threads(threads)));
  if (nt <= 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_mu;
  auto worker = [&] {
    for (;;) {
      const size_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= n || failed.load(std::memory_order_relaxed)) return;
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mu);
        if (!error) error = std::current_exception();
        failed = true;
      }
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(nt - 1);
  for (size_t t = 1; t < nt; ++t) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace strata
