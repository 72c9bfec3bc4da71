// kernels/cuda/nvtx.h: named ranges on the profiler timeline (Nsight Systems), scoped:
//
//   { strata::cuda::NvtxRange range("attention fwd"); ...launches... }
//
// NVTX3 is header-only: without a tool attached, the first call finds no injection library and later calls
// are one indirect call to an empty function, so ranges stay in release builds. Compiles under nvcc and under
// the host compiler (the CPU emulation of the kernels, and host code that wraps op groups). The name need
// only live until the constructor returns.
#pragma once

#include <nvtx3/nvToolsExt.h>

namespace strata::cuda {

class NvtxRange {
 public:
  explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
  ~NvtxRange() { nvtxRangePop(); }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};

}  // namespace strata::cuda
