// engine/comm_nccl.h: device-memory collectives for the CUDA backend's data parallelism, over NCCL.
//
// Bootstrap: rank 0 creates an ncclUniqueId and broadcasts it over the host communicator (engine/comm.h,
// MPI); every rank then joins with ncclCommInitRank on its current CUDA device (the trainer selects device
// local_rank % device count before the backend allocates anything). A world of one needs no MPI (NCCL's
// loopback).
//
// Buffers are device pointers; collectives are enqueued on the given stream (asynchronous: the caller
// synchronises or orders later work on the same stream). Reduce-scatter and all-gather take equal counts per
// rank, shard r at r * count; the CUDA backend calls them per segment of engine/shard_map.h's layer-wise split,
// with reduce and broadcast for the segments' tails.
//
// Built against NCCL in the CUDA build (strata_cuda_model), and against the CPU emulation's NCCL
// (kernels/cuda/emu/nccl_emu.cpp: host memory, MPI underneath) in the emulated build, so the CUDA backend's
// data-parallel path runs under `mpirun -np 2` on a machine without a GPU.
#pragma once

#include <cstdint>
#include <memory>

#include "engine/comm.h"

struct CUstream_st;

namespace strata {

enum class DeviceDType { kF32, kBF16 };

class NcclCommunicator {
 public:
  // Joins the world of `host` (every rank calls this collectively). Errors are strata::Error / NCCL checks
  // naming the rank and host (engine/check.h).
  explicit NcclCommunicator(Communicator& host);
  ~NcclCommunicator();
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const { return rank_; }
  int world() const { return world_; }
  Communicator& host() { return host_; }

  // data (n elements) <- the element-wise sum over ranks.
  void all_reduce_sum(void* data, int64_t n, DeviceDType t, CUstream_st* stream);
  // out (count elements) <- shard `rank` of the sum over ranks of in (world * count elements).
  void reduce_scatter_sum(const void* in, void* out, int64_t count, DeviceDType t, CUstream_st* stream);
  // In place: shard r of data (world * count elements, shard r at r * count) goes to every rank.
  void all_gather(void* data, int64_t count, DeviceDType t, CUstream_st* stream);
  // out (n elements, written on rank `root` only) <- the sum over ranks of in (n elements); in == out is
  // allowed. Counted with the reduce-scatters: (R-1)/R of the bytes, the ring's average per rank.
  void reduce_sum(const void* in, void* out, int64_t n, int root, DeviceDType t, CUstream_st* stream);
  // In place: data (n elements) of rank `root` goes to every rank. Counted with the all-gathers, likewise.
  void broadcast(void* data, int64_t n, int root, DeviceDType t, CUstream_st* stream);

  // ncclGroupStart / ncclGroupEnd: the collectives between them are launched together (one per tensor kind of
  // a layer, say).
  void group_start();
  void group_end();

  // Bytes this rank sent, by the ring cost model (engine/comm.h's CommCounters), counted into host's
  // counters so the trainer's per-step comm_bytes covers both.
 private:
  Communicator& host_;
  int rank_ = 0, world_ = 1;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace strata
