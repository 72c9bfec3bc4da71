// kernels/cuda/emu/nccl_emu.cpp: the CPU emulation's NCCL. The C functions of nccl.h that the engine uses
// (engine/comm_nccl.cpp), with nccl.h's exact signatures, on host memory (the emulation's "device" pointers
// are host pointers, kernels/cuda/emu/emu.h), so the CUDA backend's data-parallel path runs without a GPU:
//   - a world of one: every collective is a copy (NCCL's loopback);
//   - a world of N > 1: the process runs under mpirun, MPI was initialised by engine/comm.h's
//     world_communicator(), and the NCCL communicator is a duplicate of MPI_COMM_WORLD (its own message
//     space, like a real NCCL communicator beside the host one); NCCL rank r must be MPI rank r. A build
//     without MPI (STRATA_HAVE_MPI undefined) refuses N > 1 with ncclInvalidUsage.
// Streams: a collective is an operation of its stream (emu.h): by default it runs on the calling thread before
// it returns; under STRATA_EMU_STREAMS it may wait in the stream's queue, in call order. ncclGroupStart /
// ncclGroupEnd only check their nesting (the collectives inside a group are issued when called). MPI was initialised
// with MPI_THREAD_FUNNELED: call these from the thread that initialised it.
//
// Numerics of the sums (ncclSum, fp32 and bf16): every element is summed in fp32 over the ranks in rank order
// (0, 1, ..., N-1), whatever the calling rank, and a bf16 result is rounded once, to nearest-even. So every
// rank gets identical bits, and for fp32 the result equals a host loop `s = x0; s += x1; ...`. Real NCCL's
// ring sums in an order that depends on the chunk and rounds bf16 partial sums at every hop of the ring, so
// for more than two ranks the emulation's and the GPU's sums may differ in the last bit (fp32) or the last
// bf16 bit; for two ranks both compute a + b rounded once, and agree exactly.
#if defined(STRATA_HAVE_MPI)
#include <mpi.h>
#endif

#include <cuda_bf16.h>
#include <nccl.h>

#include "kernels/cuda/emu/emu.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

struct ncclComm {
  int rank = 0;
  int world = 1;
#if defined(STRATA_HAVE_MPI)
  MPI_Comm mpi = MPI_COMM_NULL;
#endif
};

namespace {

// The first bytes of every id ncclGetUniqueId makes; the rest is a random nonce.
constexpr char kIdMagic[] = "strata-emu-nccl";
// Elements per MPI call: int counts, and temporaries of bounded size.
constexpr size_t kChunk = size_t{1} << 22;

thread_local std::string g_last_error;
int g_group_depth = 0;

ncclResult_t fail(ncclResult_t result, const char* fn, const std::string& why) {
  g_last_error = std::string(fn) + ": " + why;
  std::fprintf(stderr, "strata: emulated NCCL: %s\n", g_last_error.c_str());
  std::fflush(stderr);
  return result;
}

// Bytes per element, 0 for a type the emulation does not know.
size_t type_size(ncclDataType_t t) {
  switch (t) {
    case ncclInt8:
    case ncclUint8:
      return 1;
    case ncclFloat16:
    case ncclBfloat16:
      return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32:
      return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64:
      return 8;
    default:
      return 0;
  }
}

// The reductions take fp32 and bf16 (what the engine reduces) with ncclSum.
ncclResult_t check_reduction(const char* fn, ncclDataType_t t, ncclRedOp_t op) {
  if (t != ncclFloat32 && t != ncclBfloat16)
    return fail(ncclInvalidArgument, fn,
                "the emulation reduces ncclFloat32 and ncclBfloat16 only (got type " +
                    std::to_string(static_cast<int>(t)) + ")");
  if (op != ncclSum)
    return fail(
        ncclInvalidArgument, fn,
        "the emulation reduces with ncclSum only (got op " + std::to_string(static_cast<int>(op)) + ")");
  return ncclSuccess;
}

ncclResult_t check_comm(const char* fn, ncclComm_t comm) {
  return comm != nullptr ? ncclSuccess : fail(ncclInvalidArgument, fn, "null communicator");
}

// A root rank of the communicator (after check_comm).
ncclResult_t check_root(const char* fn, ncclComm_t comm, int root) {
  return root >= 0 && root < comm->world
             ? ncclSuccess
             : fail(ncclInvalidArgument, fn, "root " + std::to_string(root) + " of " + std::to_string(comm->world));
}

#if defined(STRATA_HAVE_MPI)

// n elements of type t at src (fp32 or bf16), as floats.
void widen(const void* src, ncclDataType_t t, size_t n, float* dst) {
  if (t == ncclFloat32) {
    std::memcpy(dst, src, n * sizeof(float));
    return;
  }
  const auto* p = static_cast<const __nv_bfloat16*>(src);
  for (size_t i = 0; i < n; ++i) dst[i] = __bfloat162float(p[i]);
}
void narrow(const float* src, ncclDataType_t t, size_t n, void* dst) {
  if (t == ncclFloat32) {
    std::memcpy(dst, src, n * sizeof(float));
    return;
  }
  auto* p = static_cast<__nv_bfloat16*>(dst);
  for (size_t i = 0; i < n; ++i) p[i] = __float2bfloat16_rn(src[i]);
}

// out[i] = sum over r in rank order of parts[r * n + i].
void sum_in_rank_order(const std::vector<float>& parts, int world, size_t n, float* out) {
  for (size_t i = 0; i < n; ++i) out[i] = parts[i];
  for (int r = 1; r < world; ++r) {
    const float* p = parts.data() + static_cast<size_t>(r) * n;
    for (size_t i = 0; i < n; ++i) out[i] += p[i];
  }
}

ncclResult_t mpi_result(const char* fn, const char* call, int rc) {
  return rc == MPI_SUCCESS ? ncclSuccess
                           : fail(ncclSystemError, fn,
                                  std::string(call) + " failed (MPI error " + std::to_string(rc) + ")");
}

// FNV-1a of the id's bytes: every rank must hold the id rank 0 made.
uint64_t id_hash(const ncclUniqueId& id) {
  uint64_t h = 1469598103934665603ull;
  for (char c : id.internal) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return h;
}

#endif  // STRATA_HAVE_MPI

}  // namespace

extern "C" {

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess:
      return "no error";
    case ncclUnhandledCudaError:
      return "unhandled cuda error (emulated NCCL)";
    case ncclSystemError:
      return "unhandled system error (emulated NCCL: MPI failed)";
    case ncclInternalError:
      return "internal error (emulated NCCL)";
    case ncclInvalidArgument:
      return "invalid argument (emulated NCCL; the reason is printed above)";
    case ncclInvalidUsage:
      return "invalid usage (emulated NCCL; the reason is printed above)";
    case ncclRemoteError:
      return "remote process exited or there was a network error (emulated NCCL)";
    case ncclInProgress:
      return "NCCL operation in progress";
    default:
      return "unknown result code";
  }
}

const char* ncclGetLastError(ncclComm_t) {
  return g_last_error.c_str();
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* uniqueId) {
  if (uniqueId == nullptr) return fail(ncclInvalidArgument, "ncclGetUniqueId", "null id");
  std::memset(uniqueId->internal, 0, sizeof(uniqueId->internal));
  std::memcpy(uniqueId->internal, kIdMagic, sizeof(kIdMagic));
  std::random_device rd;
  for (size_t i = sizeof(kIdMagic); i + 4 <= sizeof(uniqueId->internal); i += 4) {
    const uint32_t v = rd();
    std::memcpy(uniqueId->internal + i, &v, 4);
  }
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank) {
  const char* fn = "ncclCommInitRank";
  if (comm == nullptr) return fail(ncclInvalidArgument, fn, "null communicator pointer");
  *comm = nullptr;
  if (nranks < 1 || rank < 0 || rank >= nranks)
    return fail(ncclInvalidArgument, fn, "rank " + std::to_string(rank) + " of " + std::to_string(nranks));
  if (std::memcmp(commId.internal, kIdMagic, sizeof(kIdMagic)) != 0)
    return fail(ncclInvalidArgument, fn,
                "the unique id was not made by ncclGetUniqueId (was rank 0's id broadcast to this rank?)");
  auto* c = new ncclComm;
  c->rank = rank;
  c->world = nranks;
  if (nranks > 1) {
#if defined(STRATA_HAVE_MPI)
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (!initialized || finalized) {
      delete c;
      return fail(ncclInvalidUsage, fn,
                  "a world of " + std::to_string(nranks) +
                      " needs MPI (run under mpirun; engine/comm.h's world_communicator() initialises it)");
    }
    int mpi_rank = -1, mpi_world = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &mpi_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &mpi_world);
    if (mpi_world != nranks || mpi_rank != rank) {
      delete c;
      return fail(ncclInvalidUsage, fn,
                  "rank " + std::to_string(rank) + " of " + std::to_string(nranks) +
                      ", but the emulation spans MPI_COMM_WORLD, where this process is rank " +
                      std::to_string(mpi_rank) + " of " + std::to_string(mpi_world));
    }
    ncclResult_t r = mpi_result(fn, "MPI_Comm_dup", MPI_Comm_dup(MPI_COMM_WORLD, &c->mpi));
    if (r != ncclSuccess) {
      delete c;
      return r;
    }
    // Every rank must have joined with the same id: the max over ranks of h and of ~h give back h and ~h
    // only when every rank's h is the same.
    const uint64_t h = id_hash(commId);
    uint64_t hs[2] = {h, ~h};
    r = mpi_result(fn, "MPI_Allreduce", MPI_Allreduce(MPI_IN_PLACE, hs, 2, MPI_UINT64_T, MPI_MAX, c->mpi));
    if (r == ncclSuccess && (hs[0] != h || hs[1] != ~h))
      r = fail(ncclInvalidUsage, fn, "the ranks joined with different unique ids");
    if (r != ncclSuccess) {
      MPI_Comm_free(&c->mpi);
      delete c;
      return r;
    }
#else
    delete c;
    return fail(
        ncclInvalidUsage, fn,
        "a world of " + std::to_string(nranks) + " needs MPI, and this build has none (libopenmpi-dev)");
#endif
  }
  *comm = c;
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  strata::emu::flush_all_streams();  // no queued collective outlives its communicator
#if defined(STRATA_HAVE_MPI)
  if (comm->mpi != MPI_COMM_NULL) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm->mpi);
  }
#endif
  delete comm;
  return ncclSuccess;
}

static ncclResult_t run_ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t) {
  const char* fn = "ncclAllReduce";
  if (ncclResult_t r = check_comm(fn, comm); r != ncclSuccess) return r;
  if (ncclResult_t r = check_reduction(fn, datatype, op); r != ncclSuccess) return r;
  if (count == 0) return ncclSuccess;
  if (sendbuff == nullptr || recvbuff == nullptr) return fail(ncclInvalidArgument, fn, "null buffer");
  const size_t es = type_size(datatype);
  if (comm->world == 1) {
    if (sendbuff != recvbuff) std::memmove(recvbuff, sendbuff, count * es);
    return ncclSuccess;
  }
#if defined(STRATA_HAVE_MPI)
  const auto* in = static_cast<const char*>(sendbuff);
  auto* out = static_cast<char*>(recvbuff);
  std::vector<float> mine, all;
  for (size_t off = 0; off < count; off += kChunk) {
    const size_t c = std::min(kChunk, count - off);
    mine.resize(c);
    all.resize(c * static_cast<size_t>(comm->world));
    widen(in + off * es, datatype, c, mine.data());
    const int ic = static_cast<int>(c);
    if (ncclResult_t r =
            mpi_result(fn, "MPI_Allgather",
                       MPI_Allgather(mine.data(), ic, MPI_FLOAT, all.data(), ic, MPI_FLOAT, comm->mpi));
        r != ncclSuccess)
      return r;
    sum_in_rank_order(all, comm->world, c, mine.data());
    narrow(mine.data(), datatype, c, out + off * es);
  }
  return ncclSuccess;
#else
  return fail(ncclInvalidUsage, fn, "a world of more than one rank without MPI");
#endif
}

static ncclResult_t run_ncclReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount,
                               ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm, cudaStream_t) {
  const char* fn = "ncclReduceScatter";
  if (ncclResult_t r = check_comm(fn, comm); r != ncclSuccess) return r;
  if (ncclResult_t r = check_reduction(fn, datatype, op); r != ncclSuccess) return r;
  if (recvcount == 0) return ncclSuccess;
  if (sendbuff == nullptr || recvbuff == nullptr) return fail(ncclInvalidArgument, fn, "null buffer");
  const size_t es = type_size(datatype);
  if (comm->world == 1) {
    if (sendbuff != recvbuff) std::memmove(recvbuff, sendbuff, recvcount * es);
    return ncclSuccess;
  }
#if defined(STRATA_HAVE_MPI)
  // Each chunk of the shards: shard j's part goes to rank j (an all-to-all), and each rank sums what it got
  // from the ranks in rank order. The whole chunk is read before any of it is written (in place is allowed:
  // recvbuff == sendbuff + rank * recvcount).
  const auto* in = static_cast<const char*>(sendbuff);
  auto* out = static_cast<char*>(recvbuff);
  const size_t world = static_cast<size_t>(comm->world);
  std::vector<float> pack, got, sum;
  for (size_t off = 0; off < recvcount; off += kChunk) {
    const size_t c = std::min(kChunk, recvcount - off);
    pack.resize(c * world);
    got.resize(c * world);
    sum.resize(c);
    for (size_t j = 0; j < world; ++j)
      widen(in + (j * recvcount + off) * es, datatype, c, pack.data() + j * c);
    const int ic = static_cast<int>(c);
    if (ncclResult_t r =
            mpi_result(fn, "MPI_Alltoall",
                       MPI_Alltoall(pack.data(), ic, MPI_FLOAT, got.data(), ic, MPI_FLOAT, comm->mpi));
        r != ncclSuccess)
      return r;
    sum_in_rank_order(got, comm->world, c, sum.data());
    narrow(sum.data(), datatype, c, out + off * es);
  }
  return ncclSuccess;
#else
  return fail(ncclInvalidUsage, fn, "a world of more than one rank without MPI");
#endif
}

static ncclResult_t run_ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t) {
  const char* fn = "ncclAllGather";
  if (ncclResult_t r = check_comm(fn, comm); r != ncclSuccess) return r;
  const size_t es = type_size(datatype);
  if (es == 0)
    return fail(ncclInvalidArgument, fn, "unknown data type " + std::to_string(static_cast<int>(datatype)));
  if (sendcount == 0) return ncclSuccess;
  if (sendbuff == nullptr || recvbuff == nullptr) return fail(ncclInvalidArgument, fn, "null buffer");
  if (comm->world == 1) {
    if (sendbuff != recvbuff) std::memmove(recvbuff, sendbuff, sendcount * es);
    return ncclSuccess;
  }
#if defined(STRATA_HAVE_MPI)
  // Bytes, through a copy of this rank's chunk (in place is allowed: sendbuff == recvbuff + rank *
  // sendcount).
  const auto* in = static_cast<const char*>(sendbuff);
  auto* out = static_cast<char*>(recvbuff);
  const size_t world = static_cast<size_t>(comm->world);
  std::vector<char> mine, all;
  for (size_t off = 0; off < sendcount; off += kChunk) {
    const size_t c = std::min(kChunk, sendcount - off), bytes = c * es;
    mine.assign(in + off * es, in + off * es + bytes);
    all.resize(bytes * world);
    const int ib = static_cast<int>(bytes);
    if (ncclResult_t r =
            mpi_result(fn, "MPI_Allgather",
                       MPI_Allgather(mine.data(), ib, MPI_BYTE, all.data(), ib, MPI_BYTE, comm->mpi));
        r != ncclSuccess)
      return r;
    for (size_t j = 0; j < world; ++j)
      std::memcpy(out + (j * sendcount + off) * es, all.data() + j * bytes, bytes);
  }
  return ncclSuccess;
#else
  return fail(ncclInvalidUsage, fn, "a world of more than one rank without MPI");
#endif
}

static ncclResult_t run_ncclReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                        ncclRedOp_t op, int root, ncclComm_t comm, cudaStream_t) {
  const char* fn = "ncclReduce";
  if (ncclResult_t r = check_comm(fn, comm); r != ncclSuccess) return r;
  if (ncclResult_t r = check_reduction(fn, datatype, op); r != ncclSuccess) return r;
  if (ncclResult_t r = check_root(fn, comm, root); r != ncclSuccess) return r;
  if (count == 0) return ncclSuccess;
  if (sendbuff == nullptr || (comm->rank == root && recvbuff == nullptr))
    return fail(ncclInvalidArgument, fn, "null buffer");
  const size_t es = type_size(datatype);
  if (comm->world == 1) {
    if (sendbuff != recvbuff) std::memmove(recvbuff, sendbuff, count * es);
    return ncclSuccess;
  }
#if defined(STRATA_HAVE_MPI)
  // Each chunk gathered at the root, which sums it in rank order (in place is allowed: the chunk is read
  // before the root writes it).
  const auto* in = static_cast<const char*>(sendbuff);
  auto* out = static_cast<char*>(recvbuff);
  const bool is_root = comm->rank == root;
  std::vector<float> mine, all, sum;
  for (size_t off = 0; off < count; off += kChunk) {
    const size_t c = std::min(kChunk, count - off);
    mine.resize(c);
    if (is_root) {
      all.resize(c * static_cast<size_t>(comm->world));
      sum.resize(c);
    }
    widen(in + off * es, datatype, c, mine.data());
    const int ic = static_cast<int>(c);
    if (ncclResult_t r = mpi_result(
            fn, "MPI_Gather",
            MPI_Gather(mine.data(), ic, MPI_FLOAT, is_root ? all.data() : nullptr, ic, MPI_FLOAT, root, comm->mpi));
        r != ncclSuccess)
      return r;
    if (!is_root) continue;
    sum_in_rank_order(all, comm->world, c, sum.data());
    narrow(sum.data(), datatype, c, out + off * es);
  }
  return ncclSuccess;
#else
  return fail(ncclInvalidUsage, fn, "a world of more than one rank without MPI");
#endif
}

static ncclResult_t run_ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, int root,
                           ncclComm_t comm, cudaStream_t) {
  const char* fn = "ncclBroadcast";
  if (ncclResult_t r = check_comm(fn, comm); r != ncclSuccess) return r;
  const size_t es = type_size(datatype);
  if (es == 0)
    return fail(ncclInvalidArgument, fn, "unknown data type " + std::to_string(static_cast<int>(datatype)));
  if (ncclResult_t r = check_root(fn, comm, root); r != ncclSuccess) return r;
  if (count == 0) return ncclSuccess;
  if (recvbuff == nullptr || (comm->rank == root && sendbuff == nullptr))
    return fail(ncclInvalidArgument, fn, "null buffer");
  if (comm->rank == root && sendbuff != recvbuff) std::memmove(recvbuff, sendbuff, count * es);
  if (comm->world == 1) return ncclSuccess;
#if defined(STRATA_HAVE_MPI)
  auto* data = static_cast<char*>(recvbuff);
  for (size_t off = 0; off < count * es; off += kChunk) {
    const int ib = static_cast<int>(std::min(kChunk, count * es - off));
    if (ncclResult_t r = mpi_result(fn, "MPI_Bcast", MPI_Bcast(data + off, ib, MPI_BYTE, root, comm->mpi));
        r != ncclSuccess)
      return r;
  }
  return ncclSuccess;
#else
  return fail(ncclInvalidUsage, fn, "a world of more than one rank without MPI");
#endif
}

}  // extern "C"

namespace {
// The collectives as operations of their stream (kernels/cuda/emu/emu.h): run at once by default; under
// STRATA_EMU_STREAMS they may wait in the stream's queue, and a queued collective that fails ends the process
// (its error was printed; a real NCCL reports it asynchronously).
template <class F>
ncclResult_t on_stream(cudaStream_t stream, F body) {
  if (!strata::emu::deferred(stream)) return body();
  strata::emu::on_stream(stream, [body] {
    if (body() == ncclSuccess) return;
    std::fprintf(stderr, "strata: emulated NCCL: a queued collective failed\n");
    std::abort();
  });
  return ncclSuccess;
}

}  // namespace

extern "C" {

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  return on_stream(stream,
                   [=] { return run_ncclAllReduce(sendbuff, recvbuff, count, datatype, op, comm, stream); });
}
ncclResult_t ncclReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount, ncclDataType_t datatype,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  return on_stream(stream,
                   [=] { return run_ncclReduceScatter(sendbuff, recvbuff, recvcount, datatype, op, comm, stream); });
}
ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t stream) {
  return on_stream(stream,
                   [=] { return run_ncclAllGather(sendbuff, recvbuff, sendcount, datatype, comm, stream); });
}
ncclResult_t ncclReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                        ncclRedOp_t op, int root, ncclComm_t comm, cudaStream_t stream) {
  return on_stream(stream,
                   [=] { return run_ncclReduce(sendbuff, recvbuff, count, datatype, op, root, comm, stream); });
}
ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, int root,
                           ncclComm_t comm, cudaStream_t stream) {
  return on_stream(stream,
                   [=] { return run_ncclBroadcast(sendbuff, recvbuff, count, datatype, root, comm, stream); });
}

ncclResult_t ncclGroupStart() {
  ++g_group_depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  if (g_group_depth == 0) return fail(ncclInvalidUsage, "ncclGroupEnd", "without ncclGroupStart");
  --g_group_depth;
  return ncclSuccess;
}

}  // extern "C"
