// engine/cuda_backend.h: the CUDA training backend's factory (engine/train_backend.h), registered with
// register_cuda_backend by the strata executable in builds with CUDA and by the tests of the emulated build.
#pragma once

#include <memory>

#include "engine/train_backend.h"

namespace strata {

// With dp active (engine/train_backend.h), every rank of dp.comm calls this collectively: the NCCL
// communicator is made here, and under ZeRO-1 the runner is allocated sharded from the start. `run`: the
// runner's activation recomputation and attention implementation (engine/train_backend.h), kept across
// growth.
std::unique_ptr<TrainBackend> make_cuda_backend(const models::ModelConfig& cfg, int B, int T,
                                                const AdamWConfig& adamw, uint64_t seed,
                                                const DataParallelSetup& dp = {},
                                                const CudaRunOptions& run = {});

}  // namespace strata
