// kernels/cuda/nvtx.h: named ranges on the profiler timeline (Nsight Systems), scoped, one per op, given the
// stream the op launches on:
//
//   { strata::cuda::NvtxRange range("attention fwd", dev.stream); ...launches... }
//
// The same scope feeds the op timer (kernels/cuda/op_timer.h, `strata train --op-times`): while it is on, the
// outermost scope records CUDA events on that stream as it opens and closes.
//
// NVTX3 is header-only: without a tool attached, the first call finds no injection library and later calls
// are one indirect call to an empty function, so ranges stay in release builds. Compiles under nvcc and under
// the host compiler (the CPU emulation of the kernels, and host code that wraps op groups). The name need
// only live until the constructor returns.
#pragma once

#include <nvtx3/nvToolsExt.h>

#include "kernels/cuda/op_timer.h"

namespace strata::cuda {

class NvtxRange {
 public:
  NvtxRange(const char* name, void* stream) {
    nvtxRangePushA(name);
    op_timer_open(name, stream);
  }
  ~NvtxRange() {
    op_timer_close();
    nvtxRangePop();
  }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};

}  // namespace strata::cuda
