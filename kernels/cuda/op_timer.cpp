// kernels/cuda/op_timer.cpp: see op_timer.h. Host code over the CUDA runtime's events; built into strata_cuda
// (the real runtime) and strata_cuda_emu (the emulation's events, kernels/cuda/emu/emu.cpp).
#include "kernels/cuda/op_timer.h"

#include <cuda_runtime.h>

#include <atomic>
#include <map>
#include <mutex>

#include "engine/check.h"

namespace strata::cuda {
namespace {

#define OP_TIMER_CHECK(call)                                                                   \
  do {                                                                                         \
    const cudaError_t e_ = (call);                                                             \
    STRATA_CHECK(e_ == cudaSuccess, "op timer: ", #call, " failed: ", cudaGetErrorString(e_)); \
  } while (0)

struct Span {
  std::string op;
  cudaEvent_t start = nullptr, end = nullptr;  // end stays null if the timer stopped inside the scope
};

struct State {
  std::mutex mu;
  std::vector<cudaEvent_t> pool;  // events not in use, kept for the next window
  std::vector<Span> spans;
};
State& state() {
  static auto* s = new State();  // never destroyed: events must not be destroyed after the runtime's teardown
  return *s;
}
std::atomic<bool> g_active{false};
thread_local int t_depth = 0;                // open scopes on this thread while the timer is on
thread_local size_t t_open_span = 0;         // this thread's outermost open span (an index into spans)
thread_local void* t_open_stream = nullptr;  // and the stream it opened on (its end event goes there too)

cudaEvent_t take_event(State& s) {
  if (!s.pool.empty()) {
    cudaEvent_t e = s.pool.back();
    s.pool.pop_back();
    return e;
  }
  cudaEvent_t e = nullptr;
  OP_TIMER_CHECK(cudaEventCreateWithFlags(&e, cudaEventDefault));
  return e;
}

}  // namespace

void op_timer_start() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  STRATA_CHECK(!g_active.load(), "op timer: started twice");
  for (const Span& span : s.spans) {
    s.pool.push_back(span.start);
    if (span.end) s.pool.push_back(span.end);
  }
  s.spans.clear();
  t_depth = 0;
  g_active.store(true, std::memory_order_relaxed);
}

std::vector<OpTime> op_timer_stop() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  g_active.store(false, std::memory_order_relaxed);
  t_depth = 0;
  OP_TIMER_CHECK(cudaDeviceSynchronize());
  std::map<std::string, OpTime> by_op;
  for (const Span& span : s.spans) {
    if (!span.end) continue;  // still open when the timer stopped
    float ms = 0.0f;
    OP_TIMER_CHECK(cudaEventElapsedTime(&ms, span.start, span.end));
    OpTime& t = by_op[span.op];
    t.op = span.op;
    ++t.calls;
    t.ms += static_cast<double>(ms);
  }
  std::vector<OpTime> out;
  out.reserve(by_op.size());
  for (auto& [name, t] : by_op) out.push_back(std::move(t));
  return out;
}

void op_timer_open(const char* name, void* stream) {
  if (!g_active.load(std::memory_order_relaxed)) return;
  if (t_depth++ > 0) return;  // nested: counted toward the outer op
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  Span span;
  span.op = name;
  span.start = take_event(s);
  OP_TIMER_CHECK(cudaEventRecord(span.start, static_cast<cudaStream_t>(stream)));
  t_open_span = s.spans.size();
  t_open_stream = stream;
  s.spans.push_back(std::move(span));
}

void op_timer_close() {
  if (t_depth == 0) return;  // opened while the timer was off
  if (--t_depth > 0) return;
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  if (!g_active.load(std::memory_order_relaxed) || t_open_span >= s.spans.size()) return;
  Span& span = s.spans[t_open_span];
  span.end = take_event(s);
  OP_TIMER_CHECK(cudaEventRecord(span.end, static_cast<cudaStream_t>(t_open_stream)));
}

}  // namespace strata::cuda
