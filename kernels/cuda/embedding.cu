// kernels/cuda/embedding.cu: token (+ learned position) embedding, CUDA, bf16 storage, fp32 sums. CPU twin:
// kernels/cpu/embedding.cpp.
//
// forward:  out[b,t,:] = wte[tokens[b,t], :] + (wpe ? wpe[t, :] : 0)                              out `=`
// backward: dwte[v, :] += sum of dout[b,t,:] over the (b,t) with tokens[b,t] == v, in (b,t) order;
//           dwpe[t, :] += sum_b dout[b,t,:], b in order (when dwpe is non-null)          dwte, dwpe `+=`
// Shapes: out, dout (B,T,C); tokens (B,T) in [0,V) (not checked on the device: the ops get no V); wte,
// dwte (V,C); wpe, dwpe (Tmax,C), Tmax >= T. N = B*T.
//
// Forward: one thread per 8 columns (a 16-byte vector when C % 8 == 0 and the pointers are 16-byte aligned,
// else one column per thread), 256 threads per block. Reads 2 B of wte (a row gather) and 2 B of wpe (the T
// rows stay in L2 across the batch) per element, writes 2 B.
//
// Backward, deterministic with no atomics:
//   1. sort the (token, position) pairs by token, stably (cub::DeviceRadixSort; positions come from an iota
//      kernel), so each token's positions are contiguous and in increasing order;
//   2. one block per sorted position that starts a run of equal tokens (the others exit at once) times
//      ceil(C/8 / threads) column blocks: each thread sums its 8 columns over the run's rows in position
//      order in fp32, then adds into dwte[token] (bf16, read-modify-write; no two blocks share a row);
//   3. dwpe: one thread per (t, 8 columns) sums b = 0..B-1 in order and adds into dwpe[t].
//   Traffic per element of dout: 2 B read in step 2, 2 B in step 3; plus one read-modify-write of each
//   distinct token's dwte row and of dwpe. A token repeated k times is summed by one block serially (k rows),
//   so a pathological batch of one repeated token is latency-bound; real text spreads over thousands of
//   tokens. Workspace: embedding_backward_workspace_bytes(B, T) (kernels/cuda/workspace.h): three int32
//   arrays of N (sorted tokens, iota, sorted positions) and cub's scratch. Under the CPU emulation
//   (STRATA_CUDA_EMU) device memory is host memory and std::stable_sort on the host stands in for the library
//   sort it cannot run.
#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/nvtx.h"
#include "kernels/cuda/workspace.h"
#include "kernels/ops.h"

#if !defined(STRATA_CUDA_EMU)
#include <cub/device/device_radix_sort.cuh>
#endif

namespace strata::cuda {
namespace {

constexpr int kThreads = 256;     // elementwise kernels: 8 warps, a common sweet spot for streaming
constexpr int kRowThreads = 256;  // wte-sum blocks: up to 2048 columns per block, more blocks above
constexpr size_t kAlign = 256;    // each workspace array starts on a 256-byte boundary


bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}
size_t round_up(size_t x) {
  return (x + kAlign - 1) / kAlign * kAlign;
}

template <int W>
__global__ void __launch_bounds__(kThreads)
    embedding_forward_kernel(bf16* out, const int32_t* tokens, const bf16* wte, const bf16* wpe, int N, int T,
                             int C) {
  const int CV = C / W;
  const int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i >= int64_t{N} * CV) return;
  const int n = static_cast<int>(i / CV), v = static_cast<int>(i % CV);
  float e[W];
  load_floats<W>(wte + int64_t{tokens[n]} * C + v * W, e);
  if (wpe) {
    float p[W];
    load_floats<W>(wpe + int64_t{n % T} * C + v * W, p);
    for (int k = 0; k < W; ++k) e[k] += p[k];
  }
  store_floats<W>(out + int64_t{n} * C + v * W, e);
}

#if !defined(STRATA_CUDA_EMU)
__global__ void __launch_bounds__(kThreads) iota_kernel(int32_t* out, int N) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < N) out[i] = i;
}
#endif

// keys (N): tokens sorted; pos (N): their positions n = b*T + t, increasing within a run of equal tokens.
template <int W>
__global__ void __launch_bounds__(kRowThreads)
    embedding_backward_wte_kernel(bf16* dwte, const bf16* dout, const int32_t* keys, const int32_t* pos,
                                  int N, int C) {
  const int i = static_cast<int>(blockIdx.x);
  const int32_t tok = keys[i];
  if (i > 0 && keys[i - 1] == tok) return;  // inside a run: the run's first position sums it
  const int v = static_cast<int>(blockIdx.y * blockDim.x + threadIdx.x);
  if (v >= C / W) return;
  float acc[W] = {};
  for (int j = i; j < N && keys[j] == tok; ++j) {
    float g[W];
    load_floats<W>(dout + int64_t{pos[j]} * C + v * W, g);
    for (int k = 0; k < W; ++k) acc[k] += g[k];
  }
  bf16* d = dwte + int64_t{tok} * C + v * W;
  float cur[W];
  load_floats<W>(d, cur);
  for (int k = 0; k < W; ++k) cur[k] += acc[k];
  store_floats<W>(d, cur);
}

template <int W>
__global__ void __launch_bounds__(kThreads)
    embedding_backward_wpe_kernel(bf16* dwpe, const bf16* dout, int B, int T, int C) {
  const int CV = C / W;
  const int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i >= int64_t{T} * CV) return;
  const int t = static_cast<int>(i / CV), v = static_cast<int>(i % CV);
  float acc[W] = {};
  for (int b = 0; b < B; ++b) {
    float g[W];
    load_floats<W>(dout + (int64_t{b} * T + t) * C + v * W, g);
    for (int k = 0; k < W; ++k) acc[k] += g[k];
  }
  bf16* d = dwpe + int64_t{t} * C + v * W;
  float cur[W];
  load_floats<W>(d, cur);
  for (int k = 0; k < W; ++k) cur[k] += acc[k];
  store_floats<W>(d, cur);
}

size_t sort_scratch_bytes(int N) {
#if defined(STRATA_CUDA_EMU)
  (void)N;
  return 0;
#else
  size_t bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, bytes, static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), N));
  return bytes;
#endif
}

// Stable sort of (tokens[n], n) by token into keys, pos.
void sort_tokens(int32_t* keys, int32_t* pos, int32_t* iota, void* scratch, size_t scratch_bytes,
                 const int32_t* tokens, int N, cudaStream_t stream) {
#if defined(STRATA_CUDA_EMU)
  (void)iota, (void)scratch, (void)scratch_bytes;
  emu::on_stream(stream, [keys, pos, tokens, N] {  // an operation of the stream, like the library's sort
    std::vector<std::pair<int32_t, int32_t>> pairs(static_cast<size_t>(N));
    for (int n = 0; n < N; ++n) pairs[static_cast<size_t>(n)] = {tokens[n], n};
    std::stable_sort(pairs.begin(), pairs.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    for (int n = 0; n < N; ++n)
      keys[n] = pairs[static_cast<size_t>(n)].first, pos[n] = pairs[static_cast<size_t>(n)].second;
  });
#else
  launch(iota_kernel, dim3(static_cast<unsigned>(ceil_div(N, kThreads))), dim3(kThreads), 0, stream, iota, N);
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(scratch, scratch_bytes, tokens, keys, iota, pos, N, 0,
                                             static_cast<int>(sizeof(int32_t) * 8), stream));
#endif
}

}  // namespace

size_t embedding_backward_workspace_bytes(int B, int T) {
  STRATA_CHECK(B > 0 && T > 0, "embedding_backward_workspace_bytes: B=", B, " T=", T);
  const int N = B * T;
  return 3 * round_up(static_cast<size_t>(N) * sizeof(int32_t)) + round_up(sort_scratch_bytes(N));
}

}  // namespace strata::cuda

namespace strata::ops {

using cuda::bf16;

template <class Dev, class F>
void embedding_forward(const Dev& dev, F* out, const int32_t* tokens, const F* wte, const F* wpe, int B,
                       int T, int C) {
  cuda::NvtxRange range("embedding fwd", dev.stream);
  using namespace cuda;
  STRATA_CHECK(out && tokens && wte, "embedding_forward: null pointer");
  STRATA_CHECK(B > 0 && T > 0 && C > 0, "embedding_forward: B=", B, " T=", T, " C=", C);
  const int N = B * T;
  const bool vec = C % 8 == 0 && aligned16(out) && aligned16(wte) && (!wpe || aligned16(wpe));
  const int W = vec ? 8 : 1;
  const int64_t threads = int64_t{N} * (C / W);
  const dim3 grid(static_cast<unsigned>(ceil_div(threads, int64_t{kThreads})));
  const auto stream = static_cast<cudaStream_t>(dev.stream);
  launch(vec ? embedding_forward_kernel<8> : embedding_forward_kernel<1>, grid, dim3(kThreads), 0, stream,
         out, tokens, wte, wpe, N, T, C);
}

template <class Dev, class F>
void embedding_backward(const Dev& dev, F* dwte, F* dwpe, const F* dout, const int32_t* tokens, int B, int T,
                        int C) {
  cuda::NvtxRange range("embedding bwd", dev.stream);
  using namespace cuda;
  STRATA_CHECK(dwte && dout && tokens, "embedding_backward: null pointer");
  STRATA_CHECK(B > 0 && T > 0 && C > 0, "embedding_backward: B=", B, " T=", T, " C=", C);
  const size_t need = embedding_backward_workspace_bytes(B, T);
  STRATA_CHECK(dev.workspace && dev.workspace_bytes >= need, "embedding_backward: workspace of ",
               dev.workspace_bytes, " bytes, needs ", need, " (embedding_backward_workspace_bytes)");
  const int N = B * T;
  const auto stream = static_cast<cudaStream_t>(dev.stream);
  const size_t array = round_up(static_cast<size_t>(N) * sizeof(int32_t));
  auto* base = static_cast<unsigned char*>(dev.workspace);
  auto* keys = reinterpret_cast<int32_t*>(base);
  auto* iota = reinterpret_cast<int32_t*>(base + array);
  auto* pos = reinterpret_cast<int32_t*>(base + 2 * array);
  sort_tokens(keys, pos, iota, base + 3 * array, need - 3 * array, tokens, N, stream);

  const bool vec = C % 8 == 0 && aligned16(dwte) && aligned16(dout) && (!dwpe || aligned16(dwpe));
  const int W = vec ? 8 : 1, CV = C / W;
  // Threads cover a row's vectors (rounded up to a warp, at most kRowThreads); wider rows take more blocks in
  // y.
  const int row_threads = std::min(ceil_div(CV, kWarpSize) * kWarpSize, kRowThreads);
  const dim3 grid(static_cast<unsigned>(N), static_cast<unsigned>(ceil_div(CV, row_threads)));
  launch(vec ? embedding_backward_wte_kernel<8> : embedding_backward_wte_kernel<1>, grid,
         dim3(static_cast<unsigned>(row_threads)), 0, stream, dwte, dout, keys, pos, N, C);
  if (dwpe) {
    const dim3 wgrid(static_cast<unsigned>(ceil_div(int64_t{T} * CV, int64_t{kThreads})));
    launch(vec ? embedding_backward_wpe_kernel<8> : embedding_backward_wpe_kernel<1>, wgrid, dim3(kThreads),
           0, stream, dwpe, dout, B, T, C);
  }
}

template void embedding_forward<Cuda, bf16>(const Cuda&, bf16*, const int32_t*, const bf16*, const bf16*, int,
                                            int, int);
template void embedding_backward<Cuda, bf16>(const Cuda&, bf16*, bf16*, const bf16*, const int32_t*, int, int,
                                             int);

}  // namespace strata::ops
