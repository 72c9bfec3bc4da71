// engine/check.h: the one error header of Strata.
//
// Two kinds of failure, two tools:
//  - strata::Error: a user-facing failure (bad flag, bad file, bad config, bad growth spec). Its message is
//  one
//    line that names the thing and what is wrong; `strata` prints it as "strata: error: <message>" and
//    exits 1. Throw it with STRATA_FAIL(...) or STRATA_REQUIRE(cond, ...).
//  - STRATA_CHECK(cond, ...): an internal invariant. Stays on in release builds. The message carries the
//  statement
//    text, file:line, function, and the process context (rank, host, device) so a failure on node 37 of a
//    multi-node run is attributable.
//  CUDA_CHECK / CUBLAS_CHECK / CUDNN_CHECK / NCCL_CHECK / MPI_CHECK are built on the same reporter; each is
//  defined when the corresponding API header was included before this one.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace strata {

// A failure to report to the user: one line, no stack of context.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// An error every rank of a data-parallel run raised identically (a config mismatch found by an all-gather, a
// checkpoint write one rank failed): rank 0 alone prints it (engine/comm.h).
class AgreedError : public Error {
 public:
  using Error::Error;
};

// Concatenates any streamable values into a string: cat("shard ", path, ": ", n, " tokens").
template <typename... Args>
std::string cat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

// Process context printed with every internal check failure. Rank/world are set by the communicator (a later
// issue); device by the CUDA backend. Defaults describe a single CPU process.
struct ProcessContext {
  int rank = 0;
  int world = 1;
  int device = -1;  // CUDA device ordinal, -1 when none
};
ProcessContext& process_context();
std::string host_name();
// "rank 0/1 on host h" (+ ", device d" when a GPU is in use).
std::string process_description();

namespace detail {
[[noreturn]] void check_failed(std::string_view what, std::string_view statement, const char* file, int line,
                               const char* func, const std::string& message);
}  // namespace detail

}  // namespace strata

// User-facing error: STRATA_FAIL("shard '", path, "': wrong magic ", m).
#define STRATA_FAIL(...) throw ::strata::Error(::strata::cat(__VA_ARGS__))
#define STRATA_REQUIRE(cond, ...)          \
  do {                                     \
    if (!(cond)) STRATA_FAIL(__VA_ARGS__); \
  } while (0)

// Internal invariant, on in every build type.
#define STRATA_CHECK(cond, ...)                                                     \
  do {                                                                              \
    if (!(cond))                                                                    \
      ::strata::detail::check_failed("check", #cond, __FILE__, __LINE__, __func__,  \
                                     ::strata::cat("" __VA_OPT__(, ) __VA_ARGS__)); \
  } while (0)

#if defined(CUDART_VERSION)
#define CUDA_CHECK(stmt)                                                          \
  do {                                                                            \
    cudaError_t strata_err_ = (stmt);                                             \
    if (strata_err_ != cudaSuccess)                                               \
      ::strata::detail::check_failed("CUDA", #stmt, __FILE__, __LINE__, __func__, \
                                     cudaGetErrorString(strata_err_));            \
  } while (0)
// After a kernel launch: checks the launch, and with STRATA_SYNC_CHECKS also waits for the kernel, so an
// asynchronous fault is reported at the launch that caused it.
#if defined(STRATA_SYNC_CHECKS)
#define CUDA_CHECK_LAUNCH()              \
  do {                                   \
    CUDA_CHECK(cudaGetLastError());      \
    CUDA_CHECK(cudaDeviceSynchronize()); \
  } while (0)
#else
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
#endif
#endif

#if defined(CUBLAS_VER_MAJOR)
#define CUBLAS_CHECK(stmt)                                                                    \
  do {                                                                                        \
    cublasStatus_t strata_st_ = (stmt);                                                       \
    if (strata_st_ != CUBLAS_STATUS_SUCCESS)                                                  \
      ::strata::detail::check_failed("cuBLAS", #stmt, __FILE__, __LINE__, __func__,           \
                                     ::strata::cat("status ", static_cast<int>(strata_st_))); \
  } while (0)
#endif

#if defined(CUDNN_MAJOR)
#define CUDNN_CHECK(stmt)                                                          \
  do {                                                                             \
    cudnnStatus_t strata_st_ = (stmt);                                             \
    if (strata_st_ != CUDNN_STATUS_SUCCESS)                                        \
      ::strata::detail::check_failed("cuDNN", #stmt, __FILE__, __LINE__, __func__, \
                                     cudnnGetErrorString(strata_st_));             \
  } while (0)
#endif

#if defined(NCCL_MAJOR)
#define NCCL_CHECK(stmt)                                                          \
  do {                                                                            \
    ncclResult_t strata_st_ = (stmt);                                             \
    if (strata_st_ != ncclSuccess)                                                \
      ::strata::detail::check_failed("NCCL", #stmt, __FILE__, __LINE__, __func__, \
                                     ncclGetErrorString(strata_st_));             \
  } while (0)
#endif

#if defined(MPI_VERSION)
#define MPI_CHECK(stmt)                                                          \
  do {                                                                           \
    int strata_st_ = (stmt);                                                     \
    if (strata_st_ != MPI_SUCCESS)                                               \
      ::strata::detail::check_failed("MPI", #stmt, __FILE__, __LINE__, __func__, \
                                     ::strata::cat("error code ", strata_st_));  \
  } while (0)
#endif
