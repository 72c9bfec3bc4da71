// kernels/cuda/emu/emu.cpp: the CPU emulation of CUDA launches and runtime calls (see emu.h).
#include "kernels/cuda/emu/emu.h"

#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace strata::emu {

ThreadState tls;

namespace {

// The threads of a block are fibers (ucontext) run by one OS thread, round-robin: a fiber runs until it reaches
// a barrier (or returns), then the next runnable one runs. A barrier releases its waiters when every thread of
// its group that has not returned has arrived (CUDA's rule for exited threads). When no fiber can run and some
// have not returned, the block deadlocked (a barrier not reached by every thread): reported, then abort.
// One OS thread makes a launch deterministic and each barrier cheap (a context switch, no kernel wake-ups).
enum class State { kReady, kWaitBlock, kWaitWarp, kDone };

constexpr size_t kStackBytes = 256 * 1024;  // per CUDA thread: kernels keep small arrays, ASan adds redzones

struct Launch {
  dim3 grid, block;
  int nthreads = 0, nwarps = 0;
  std::vector<unsigned char> smem;
  const std::function<void()>* body = nullptr;
  ucontext_t scheduler;
  std::vector<ucontext_t> ctx;
  std::vector<State> state;
  std::vector<ThreadState> ts;
  unsigned char* stacks = nullptr;
  int current = 0;
  int block_live = 0, block_arrived = 0;
  std::vector<int> warp_live, warp_arrived;
  std::vector<std::array<uint64_t, 32>> slots;
  std::vector<std::array<std::array<uint32_t, 8>, 32>> bulk;
  std::vector<std::array<bool, 32>> live;
};

Launch* g_launch = nullptr;  // the launch in flight (launches are serialised by g_launch_mu)
std::mutex g_launch_mu;

int warp_of(int t) { return t / 32; }

void yield_to_scheduler() {
  Launch& L = *g_launch;
  swapcontext(&L.ctx[L.current], &L.scheduler);
}

void release_block(Launch& L) {
  for (int t = 0; t < L.nthreads; ++t)
    if (L.state[t] == State::kWaitBlock) L.state[t] = State::kReady;
  L.block_arrived = 0;
}
void release_warp(Launch& L, int w) {
  for (int t = 32 * w; t < std::min(L.nthreads, 32 * (w + 1)); ++t)
    if (L.state[t] == State::kWaitWarp) L.state[t] = State::kReady;
  L.warp_arrived[w] = 0;
}

void fiber_entry() {
  Launch& L = *g_launch;
  (*L.body)();
  const int t = L.current, w = warp_of(t);
  L.state[t] = State::kDone;
  L.live[w][t % 32] = false;
  --L.block_live;
  if (L.block_arrived > 0 && L.block_arrived == L.block_live) release_block(L);
  --L.warp_live[w];
  if (L.warp_arrived[w] > 0 && L.warp_arrived[w] == L.warp_live[w]) release_warp(L, w);
  // returning resumes uc_link: the scheduler
}

// The order in which the fibers of a block run between two barriers. Threads interleave only at barriers here, so
// a missing barrier between a shared-memory write and another thread's read shows only when the reader happens to
// run before the writer. Running the tests under more than one order exposes such races from either side: STRATA_EMU_SCHEDULE = forward | reverse | shuffle:<seed> (default shuffle:1, a fresh
// seeded permutation for every sweep, so a launch stays deterministic).
struct Schedule {
  enum Kind { kForward, kReverse, kShuffle } kind = kShuffle;
  uint64_t seed = 1;
};

Schedule schedule_from_env() {
  Schedule s;
  const char* env = std::getenv("STRATA_EMU_SCHEDULE");
  if (!env || !*env) return s;
  const std::string v = env;
  if (v == "forward") {
    s.kind = Schedule::kForward;
  } else if (v == "reverse") {
    s.kind = Schedule::kReverse;
  } else if (v.rfind("shuffle:", 0) == 0 && v.size() > 8 &&
             v.find_first_not_of("0123456789", 8) == std::string::npos && v.size() <= 8 + 19) {
    s.seed = std::stoull(v.substr(8));
  } else {
    std::fprintf(stderr, "CUDA emulation: STRATA_EMU_SCHEDULE='%s' is not forward, reverse or shuffle:<seed>\n", env);
    std::exit(2);
  }
  return s;
}

// The order of the next sweep over the block's fibers.
void sweep_order(const Schedule& sched, uint64_t& rng, std::vector<int>& order) {
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
  if (sched.kind == Schedule::kReverse) std::reverse(order.begin(), order.end());
  if (sched.kind != Schedule::kShuffle) return;
  for (size_t i = order.size(); i > 1; --i) {  // Fisher-Yates with xorshift64
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    std::swap(order[i - 1], order[rng % i]);
  }
}

// Separate and never inlined: getcontext returns twice, which must not happen in a frame holding live locals.
[[gnu::noinline]] void init_fibers(Launch& L, uint3 block_idx) {
  for (int t = 0; t < L.nthreads; ++t) {
    L.ts[t].block_idx = block_idx;
    L.state[t] = State::kReady;
    getcontext(&L.ctx[t]);
    L.ctx[t].uc_stack.ss_sp = L.stacks + static_cast<size_t>(t) * kStackBytes;
    L.ctx[t].uc_stack.ss_size = kStackBytes;
    L.ctx[t].uc_link = &L.scheduler;
    makecontext(&L.ctx[t], fiber_entry, 0);
  }
}

void run_block(Launch& L, uint3 block_idx, long block_linear) {
  static const Schedule sched = schedule_from_env();
  uint64_t rng = (sched.seed + 1) * 0x9E3779B97F4A7C15ull ^ (static_cast<uint64_t>(block_linear) + 1) * 0xBF58476D1CE4E5B9ull;
  if (rng == 0) rng = 1;
  std::vector<int> order(L.nthreads);
  L.block_live = L.nthreads;
  L.block_arrived = 0;
  for (int w = 0; w < L.nwarps; ++w) {
    L.warp_live[w] = std::min(32, L.nthreads - 32 * w);
    L.warp_arrived[w] = 0;
    for (int l = 0; l < 32; ++l) L.live[w][l] = l < L.warp_live[w];
  }
  init_fibers(L, block_idx);
  int done = 0;
  while (done < L.nthreads) {
    bool ran = false;
    sweep_order(sched, rng, order);
    for (const int t : order) {
      if (L.state[t] != State::kReady) continue;
      L.current = t;
      tls = L.ts[t];
      swapcontext(&L.scheduler, &L.ctx[t]);
      ran = true;
      if (L.state[t] == State::kDone) ++done;
    }
    if (!ran) {
      std::fprintf(stderr, "CUDA emulation: block (%u,%u,%u) deadlocked: %d of %d threads wait at a barrier that "
                   "the others never reach\n", block_idx.x, block_idx.y, block_idx.z, L.nthreads - done, L.nthreads);
      std::abort();
    }
  }
}

}  // namespace

void* dynamic_smem() { return g_launch->smem.empty() ? nullptr : g_launch->smem.data(); }
int lane_id() { return g_launch->current % 32; }

void syncthreads() {
  Launch& L = *g_launch;
  L.state[L.current] = State::kWaitBlock;
  if (++L.block_arrived == L.block_live) release_block(L);
  yield_to_scheduler();
}

void syncwarp() {
  Launch& L = *g_launch;
  const int w = warp_of(L.current);
  L.state[L.current] = State::kWaitWarp;
  if (++L.warp_arrived[w] == L.warp_live[w]) release_warp(L, w);
  yield_to_scheduler();
}

uint64_t warp_exchange(uint64_t v, int src) {
  Launch& L = *g_launch;
  const int w = warp_of(L.current), lane = L.current % 32;
  L.slots[w][lane] = v;
  syncwarp();
  const uint64_t out = (src >= 0 && src < 32 && L.live[w][src]) ? L.slots[w][src] : v;
  syncwarp();  // nobody overwrites a slot before every lane has read
  return out;
}

void warp_gather(const uint32_t* mine, int n, uint32_t (*all)[8]) {
  Launch& L = *g_launch;
  const int w = warp_of(L.current), lane = L.current % 32;
  for (int i = 0; i < n; ++i) L.bulk[w][lane][i] = mine[i];
  syncwarp();
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < n; ++i) all[l][i] = L.bulk[w][l][i];
  syncwarp();
}

void launch(dim3 grid, dim3 block, size_t dynamic_smem_bytes, const std::function<void()>& body) {
  std::lock_guard serial(g_launch_mu);
  const int nthreads = static_cast<int>(block.x * block.y * block.z);
  const long nblocks = static_cast<long>(grid.x) * grid.y * grid.z;
  if (nthreads <= 0 || nthreads > 1024 || nblocks <= 0) return;  // cudaErrorInvalidConfiguration on a GPU
  Launch L;
  L.grid = grid, L.block = block, L.nthreads = nthreads, L.nwarps = (nthreads + 31) / 32;
  L.smem.assign(dynamic_smem_bytes, 0xFF);
  L.body = &body;
  L.ctx.resize(nthreads);
  L.state.resize(nthreads);
  L.ts.resize(nthreads);
  L.warp_live.resize(L.nwarps), L.warp_arrived.resize(L.nwarps);
  L.slots.resize(L.nwarps), L.bulk.resize(L.nwarps), L.live.resize(L.nwarps);
  const size_t stack_total = static_cast<size_t>(nthreads) * kStackBytes;
  void* stacks = mmap(nullptr, stack_total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (stacks == MAP_FAILED) {
    std::perror("CUDA emulation: mmap of the fiber stacks");
    std::abort();
  }
  L.stacks = static_cast<unsigned char*>(stacks);
  for (int t = 0; t < nthreads; ++t) {
    L.ts[t].block_dim = block;
    L.ts[t].grid_dim = grid;
    L.ts[t].linear = t;
    L.ts[t].thread_idx = {static_cast<unsigned>(t % block.x), static_cast<unsigned>((t / block.x) % block.y),
                          static_cast<unsigned>(t / (block.x * block.y))};
  }
  const ThreadState saved = tls;
  g_launch = &L;
  for (long b = 0; b < nblocks; ++b)
    run_block(L,
              {static_cast<unsigned>(b % grid.x), static_cast<unsigned>((b / grid.x) % grid.y),
               static_cast<unsigned>(b / (static_cast<long>(grid.x) * grid.y))},
              b);
  g_launch = nullptr;
  tls = saved;
  munmap(stacks, stack_total);
}

// ---- streams (emu.h): queues under STRATA_EMU_STREAMS ----------------------------------------------------------

namespace {

enum class Order { kEager, kLateOthers, kLateLegacy };

Order stream_order() {
  static const Order order = [] {
    const char* env = std::getenv("STRATA_EMU_STREAMS");
    const std::string v = env ? env : "";
    if (v.empty() || v == "eager") return Order::kEager;
    if (v == "late-others") return Order::kLateOthers;
    if (v == "late-legacy") return Order::kLateLegacy;
    std::fprintf(stderr, "strata emulation: STRATA_EMU_STREAMS=%s (eager, late-others or late-legacy)\n",
                 v.c_str());
    std::abort();
  }();
  return order;
}

struct QueuedOp {
  uint64_t seq = 0;
  std::function<void()> op;
};
// Where an event was last recorded: its stream and the sequence number of its marker (0: already reached),
// and the host time (ms, steady clock) at which its stream reached it (cudaEventElapsedTime's), once it has.
struct EventMark {
  cudaStream_t stream = nullptr;
  uint64_t seq = 0;
  double reached_ms = -1.0;
};
double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::recursive_mutex g_streams_mu;
std::map<cudaStream_t, std::deque<QueuedOp>> g_queues;
std::map<cudaEvent_t, EventMark> g_events;
uint64_t g_seq = 0;

// Runs the queued operations of `s` with sequence numbers up to `seq`, in order (an operation may flush
// another stream: a wait).
void flush_until(cudaStream_t s, uint64_t seq) {
  std::lock_guard<std::recursive_mutex> lock(g_streams_mu);
  auto it = g_queues.find(s);
  if (it == g_queues.end()) return;
  std::deque<QueuedOp>& q = it->second;
  while (!q.empty() && q.front().seq <= seq) {
    QueuedOp next = std::move(q.front());
    q.pop_front();
    next.op();
  }
}

}  // namespace

bool deferred(cudaStream_t s) {
  switch (stream_order()) {
    case Order::kLateOthers: return s != nullptr;
    case Order::kLateLegacy: return s == nullptr;
    default: return false;
  }
}

void on_stream(cudaStream_t stream, std::function<void()> op) {
  if (!deferred(stream)) {
    op();
    return;
  }
  std::lock_guard<std::recursive_mutex> lock(g_streams_mu);
  g_queues[stream].push_back({++g_seq, std::move(op)});
}

void flush_stream(cudaStream_t stream) {
  flush_until(stream, UINT64_MAX);
}

void flush_all_streams() {
  std::lock_guard<std::recursive_mutex> lock(g_streams_mu);
  for (bool any = true; any;) {
    any = false;
    for (auto& [s, q] : g_queues)
      if (!q.empty()) {
        flush_until(s, UINT64_MAX);
        any = true;
      }
  }
}

void record_event(cudaEvent_t e, cudaStream_t s) {
  std::lock_guard<std::recursive_mutex> lock(g_streams_mu);
  if (!deferred(s)) {
    g_events[e] = {s, 0, now_ms()};
    return;
  }
  const uint64_t seq = ++g_seq;
  g_queues[s].push_back({seq, [e, seq] {
                           const auto it = g_events.find(e);  // under g_streams_mu (flush_until holds it)
                           if (it != g_events.end() && it->second.seq == seq)
                             it->second.reached_ms = now_ms();
                         }});
  g_events[e] = {s, seq};
}

bool elapsed_ms(cudaEvent_t start, cudaEvent_t end, float* ms) {
  std::lock_guard<std::recursive_mutex> lock(g_streams_mu);
  for (cudaEvent_t e : {start, end}) {
    const auto it = g_events.find(e);
    if (it == g_events.end()) return false;          // never recorded
    flush_until(it->second.stream, it->second.seq);  // as a wait would: the stream reaches the marker
  }
  *ms = static_cast<float>(g_events[end].reached_ms - g_events[start].reached_ms);
  return true;
}

void wait_event(cudaStream_t s, cudaEvent_t e) {
  std::lock_guard<std::recursive_mutex> lock(g_streams_mu);
  const auto it = g_events.find(e);
  if (it == g_events.end()) return;  // never recorded: nothing to wait for (as CUDA)
  const EventMark mark = it->second;  // the record current now, not a later one
  on_stream(s, [mark] { flush_until(mark.stream, mark.seq); });
}

void forget(cudaStream_t s, cudaEvent_t e) {
  std::lock_guard<std::recursive_mutex> lock(g_streams_mu);
  if (s != nullptr) {
    flush_until(s, UINT64_MAX);
    g_queues.erase(s);
  }
  if (e != nullptr) g_events.erase(e);
}

}  // namespace strata::emu

// ---- the CUDA runtime calls used by the kernels and their tests, on host memory --------------------------------
namespace strata::emu {
namespace {
struct Allocations {
  std::mutex mu;
  std::unordered_map<void*, size_t> sizes;
  size_t now = 0, peak = 0;
};
Allocations& allocations() {
  static Allocations a;
  return a;
}
}  // namespace
size_t allocated_bytes() {
  Allocations& a = allocations();
  std::lock_guard<std::mutex> lock(a.mu);
  return a.now;
}
size_t peak_allocated_bytes() {
  Allocations& a = allocations();
  std::lock_guard<std::mutex> lock(a.mu);
  return a.peak;
}
void reset_peak_allocated() {
  Allocations& a = allocations();
  std::lock_guard<std::mutex> lock(a.mu);
  a.peak = a.now;
}
}  // namespace strata::emu

extern "C" {

// Exactly `bytes` (256-byte aligned like cudaMalloc), so AddressSanitizer reports a kernel that reads or writes
// one element past a buffer.
cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  if (posix_memalign(ptr, 256, bytes ? bytes : 1) != 0) {
    *ptr = nullptr;
    return cudaErrorMemoryAllocation;
  }
  strata::emu::Allocations& a = strata::emu::allocations();
  std::lock_guard<std::mutex> lock(a.mu);
  a.sizes[*ptr] = bytes;
  a.now += bytes;
  a.peak = std::max(a.peak, a.now);
  return cudaSuccess;
}
cudaError_t cudaFree(void* ptr) {
  strata::emu::flush_all_streams();  // cudaFree synchronises the device: no queued operation outlives a buffer
  if (ptr) {
    strata::emu::Allocations& a = strata::emu::allocations();
    std::lock_guard<std::mutex> lock(a.mu);
    const auto it = a.sizes.find(ptr);
    if (it != a.sizes.end()) {
      a.now -= it->second;
      a.sizes.erase(it);
    }
  }
  std::free(ptr);
  return cudaSuccess;
}
// Host-to-device copies take their source now (pageable host memory may be reused on return); device-to-host
// copies wait for their stream and complete before they return.
static cudaError_t emu_copy(void* dst, const void* src, size_t n, cudaMemcpyKind kind, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (kind == cudaMemcpyHostToDevice && strata::emu::deferred(stream)) {
    auto staged = std::make_shared<std::vector<unsigned char>>(static_cast<const unsigned char*>(src),
                                                               static_cast<const unsigned char*>(src) + n);
    strata::emu::on_stream(stream, [dst, staged] { std::memcpy(dst, staged->data(), staged->size()); });
  } else if (kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDefault) {
    strata::emu::flush_stream(stream);
    std::memmove(dst, src, n);
  } else {
    strata::emu::on_stream(stream, [dst, src, n] { std::memmove(dst, src, n); });
  }
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind kind) {
  // Synchronous: ordered on the legacy stream and complete before it returns.
  const cudaError_t e = emu_copy(dst, src, n, kind, nullptr);
  strata::emu::flush_stream(nullptr);
  return e;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind kind, cudaStream_t stream) {
  return emu_copy(dst, src, n, kind, stream);
}
cudaError_t cudaMemset(void* dst, int value, size_t n) {
  strata::emu::on_stream(nullptr, [dst, value, n] { std::memset(dst, value, n); });
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t n, cudaStream_t stream) {
  strata::emu::on_stream(stream, [dst, value, n] { std::memset(dst, value, n); });
  return cudaSuccess;
}
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
cudaError_t cudaPeekAtLastError(void) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize(void) {
  strata::emu::flush_all_streams();
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  strata::emu::flush_stream(stream);
  return cudaSuccess;
}
// Streams and events: distinct non-null tokens, never reused (the stream queues and event marks are keyed by
// them), so code that checks them behaves as on a GPU; their order is STRATA_EMU_STREAMS's (emu.h). Opaque:
// nothing dereferences them.
static std::atomic<uintptr_t> g_emu_next_handle{1};
static void* emu_handle() { return reinterpret_cast<void*>(g_emu_next_handle.fetch_add(1)); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  *stream = reinterpret_cast<cudaStream_t>(emu_handle());
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  strata::emu::forget(stream, nullptr);  // its queued work still completes, as CUDA's does
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) {
  *event = reinterpret_cast<cudaEvent_t>(emu_handle());
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  strata::emu::forget(nullptr, event);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  strata::emu::record_event(event, stream);
  return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
  strata::emu::wait_event(stream, event);
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  return strata::emu::elapsed_ms(start, end, ms) ? cudaSuccess : cudaErrorInvalidResourceHandle;
}
const char* cudaGetErrorString(cudaError_t err) { return err == cudaSuccess ? "no error" : "emulated CUDA error"; }
cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute, int) { return cudaSuccess; }
// The emulated device's memory: STRATA_EMU_DEVICE_BYTES (a byte count) when set, else 80 GiB; free is what
// cudaMalloc has not handed out.
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  const char* env = std::getenv("STRATA_EMU_DEVICE_BYTES");
  const size_t total = env && *env ? static_cast<size_t>(std::strtoull(env, nullptr, 10)) : size_t{80} << 30;
  const size_t used = strata::emu::allocated_bytes();
  *total_bytes = total;
  *free_bytes = total > used ? total - used : 0;
  return cudaSuccess;
}
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
