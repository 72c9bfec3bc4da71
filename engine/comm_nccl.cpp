// engine/comm_nccl.cpp: NcclCommunicator (engine/comm_nccl.h) on NCCL's C API. The same source builds against
// libnccl (strata_cuda_model) and against the CPU emulation's NCCL (kernels/cuda/emu/nccl_emu.cpp,
// strata_cuda_model_emu), which implements the same C functions on host memory over MPI.
// nccl.h (which includes cuda_runtime.h) first: engine/check.h defines NCCL_CHECK / CUDA_CHECK only when
// their APIs are already declared.
#include <nccl.h>

#include "engine/comm_nccl.h"

#include <cstddef>

#include "engine/check.h"

namespace strata {

struct NcclCommunicator::Impl {
  ncclComm_t comm = nullptr;
};

namespace {

ncclDataType_t nccl_type(DeviceDType t) {
  return t == DeviceDType::kF32 ? ncclFloat32 : ncclBfloat16;
}
double element_bytes(DeviceDType t) {
  return t == DeviceDType::kF32 ? 4.0 : 2.0;
}
size_t element_size(DeviceDType t) {
  return t == DeviceDType::kF32 ? 4 : 2;
}

}  // namespace

NcclCommunicator::NcclCommunicator(Communicator& host)
    : host_(host), rank_(host.rank()), world_(host.world()), impl_(std::make_unique<Impl>()) {
  // Rank 0 makes the id; every rank receives it over the host communicator (a no-op for a world of one), then
  // joins on its current device. ncclCommInitRank blocks until every rank has joined.
  ncclUniqueId id{};
  if (rank_ == 0) NCCL_CHECK(ncclGetUniqueId(&id));
  host_.broadcast(&id, static_cast<int64_t>(sizeof(id)), 0);
  NCCL_CHECK(ncclCommInitRank(&impl_->comm, world_, id, rank_));
}

NcclCommunicator::~NcclCommunicator() {
  // Errors are not reported from a destructor: the process is ending or the run has already failed.
  if (impl_ && impl_->comm != nullptr) (void)ncclCommDestroy(impl_->comm);
}

void NcclCommunicator::group_start() {
  NCCL_CHECK(ncclGroupStart());
}
void NcclCommunicator::group_end() {
  NCCL_CHECK(ncclGroupEnd());
}

void NcclCommunicator::all_reduce_sum(void* data, int64_t n, DeviceDType t, CUstream_st* stream) {
  STRATA_CHECK(n >= 0, "all_reduce_sum of ", n, " elements");
  const double ring = static_cast<double>(world_ - 1) / world_;
  CommCounters& c = host_.counters();
  c.all_reduce += 2.0 * ring * static_cast<double>(n) * element_bytes(t);
  ++c.calls;
  if (n == 0) return;
  NCCL_CHECK(ncclAllReduce(data, data, static_cast<size_t>(n), nccl_type(t), ncclSum, impl_->comm, stream));
}

void NcclCommunicator::reduce_scatter_sum(const void* in, void* out, int64_t count, DeviceDType t,
                                          CUstream_st* stream) {
  STRATA_CHECK(count >= 0, "reduce_scatter_sum of ", count, " elements per rank");
  const double ring = static_cast<double>(world_ - 1) / world_;
  CommCounters& c = host_.counters();
  c.reduce_scatter += ring * static_cast<double>(world_) * static_cast<double>(count) * element_bytes(t);
  ++c.calls;
  if (count == 0) return;
  NCCL_CHECK(
      ncclReduceScatter(in, out, static_cast<size_t>(count), nccl_type(t), ncclSum, impl_->comm, stream));
}

void NcclCommunicator::all_gather(void* data, int64_t count, DeviceDType t, CUstream_st* stream) {
  STRATA_CHECK(count >= 0, "all_gather of ", count, " elements per rank");
  const double ring = static_cast<double>(world_ - 1) / world_;
  CommCounters& c = host_.counters();
  c.all_gather += ring * static_cast<double>(world_) * static_cast<double>(count) * element_bytes(t);
  ++c.calls;
  if (count == 0) return;
  // In place (NCCL's rule): this rank's shard is the send buffer, the whole buffer the receive buffer.
  const void* mine = static_cast<const char*>(data) +
                     static_cast<size_t>(rank_) * static_cast<size_t>(count) * element_size(t);
  NCCL_CHECK(ncclAllGather(mine, data, static_cast<size_t>(count), nccl_type(t), impl_->comm, stream));
}

void NcclCommunicator::reduce_sum(const void* in, void* out, int64_t n, int root, DeviceDType t,
                                  CUstream_st* stream) {
  STRATA_CHECK(n >= 0 && root >= 0 && root < world_, "reduce_sum of ", n, " elements to rank ", root);
  host_.counters().reduce_scatter +=
      static_cast<double>(world_ - 1) / world_ * static_cast<double>(n) * element_bytes(t);
  ++host_.counters().calls;
  if (n == 0) return;
  NCCL_CHECK(ncclReduce(in, out, static_cast<size_t>(n), nccl_type(t), ncclSum, root, impl_->comm, stream));
}

void NcclCommunicator::broadcast(void* data, int64_t n, int root, DeviceDType t, CUstream_st* stream) {
  STRATA_CHECK(n >= 0 && root >= 0 && root < world_, "broadcast of ", n, " elements from rank ", root);
  host_.counters().all_gather +=
      static_cast<double>(world_ - 1) / world_ * static_cast<double>(n) * element_bytes(t);
  ++host_.counters().calls;
  if (n == 0) return;
  NCCL_CHECK(ncclBroadcast(data, data, static_cast<size_t>(n), nccl_type(t), root, impl_->comm, stream));
}

}  // namespace strata
