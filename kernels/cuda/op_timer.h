// kernels/cuda/op_timer.h: GPU time per op, measured with CUDA events, for `strata train --op-times A:B`.
//
// Every CUDA op opens a named scope (NvtxRange, kernels/cuda/nvtx.h) on the stream it launches on. While the
// timer is on, the outermost scope of each op records an event on that stream when it opens and another when
// it closes; op_timer_stop() waits for the device and sums, per op name, the time between each pair
// (cudaEventElapsedTime). Nested scopes (an op that calls another, as matmul_backward_dgelu's fallback calls
// gelu_backward) count toward the outer op only. What is measured is stream time between the two events: the
// op's kernels and library calls plus any gap between them inside the op; work outside every op (memsets,
// copies, NCCL collectives) and the gaps between ops are not counted, so the caller compares the sum with the
// wall time of the timed steps. Two ops on different streams that overlap each count their whole span.
// Nsight Systems gives the same breakdown where it runs; on the GPU machines of this workplace it writes only
// a raw .qdstrm file (bench/KERNELS.md, run 8), which is why this exists.
//
// Cost while on: two cudaEventRecord calls per op (~330 ops in a gpt2-124m step) and an event pool; while
// off, one relaxed atomic load per scope. In the CPU emulation the events carry the host time at which their
// stream reached them (kernels/cuda/emu/emu.cpp), so the timer runs there too, with CPU times.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace strata::cuda {

struct OpTime {
  std::string op;     // the scope's name ("matmul bwd", "flash attention fwd", ...)
  int64_t calls = 0;  // outermost scopes of that name while the timer was on
  double ms = 0.0;    // their summed GPU time
};

// Starts recording (forgets anything recorded before). Not reentrant: one timing window at a time per
// process.
void op_timer_start();
// Stops recording, waits for the device, and returns the per-op totals in the order of their names (the
// caller orders its report: the trainer sums several windows first).
std::vector<OpTime> op_timer_stop();

// The scope hooks (NvtxRange): open records a start event on stream when the timer is on and no other scope
// is open on this thread; close records the matching end event.
void op_timer_open(const char* name, void* stream);
void op_timer_close();

}  // namespace strata::cuda
