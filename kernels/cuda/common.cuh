// kernels/cuda/common.cuh: what every kernel file includes. Compiles under nvcc (sm_80, sm_90) and, with
// STRATA_CUDA_EMU, under the host compiler for the CPU emulation (emu/emu.h), so keep to the subset emu.h
// provides: launches through strata::cuda::launch, dynamic shared memory through STRATA_DYNAMIC_SMEM, warp
// shuffles, __syncthreads, atomics, and the matrix-unit product through mma_bf16_16816.
#pragma once

#if defined(STRATA_CUDA_EMU)
#include "kernels/cuda/emu/emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#endif

#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>

#include "engine/check.h"

namespace strata::cuda {

using bf16 = __nv_bfloat16;

// Launches kernel<<<grid, block, smem, stream>>>(args...) and checks the launch (and, with STRATA_SYNC_CHECKS,
// waits for it). Arguments are converted to the kernel's parameter types first, as a real launch does.
template <class... KArgs, class... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem_bytes, cudaStream_t stream,
            Args&&... args) {
  static_assert(sizeof...(KArgs) == sizeof...(Args), "launch: wrong number of kernel arguments");
#if defined(STRATA_CUDA_EMU)
  // The arguments are taken by value now, as a launch does: the stream may run the kernel later (emu.h).
  emu::on_stream(stream, [kernel, grid, block, smem_bytes,
                          a = std::tuple<std::decay_t<KArgs>...>(static_cast<KArgs>(args)...)] {
    emu::launch(grid, block, smem_bytes, [&] { std::apply(kernel, a); });
  });
#else
  kernel<<<grid, block, smem_bytes, stream>>>(static_cast<KArgs>(args)...);
#endif
  CUDA_CHECK_LAUNCH();
}

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

__host__ __device__ constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }
__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- conversions -------------------------------------------------------------------------------------------
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(bf16 x) { return __bfloat162float(x); }
template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ bf16 from_float<bf16>(float x) {
  return __float2bfloat16_rn(x);
}

// A 32-bit hash of (seed, index) for stochastic rounding: deterministic for a given seed and element, so a run
// replays bit for bit. (Squirrel-style integer noise: multiply/xor-shift rounds.)
__host__ __device__ __forceinline__ uint32_t hash_u32(uint32_t seed, uint32_t index) {
  uint32_t x = index * 0xB5297A4Du + seed;
  x ^= x >> 8;
  x += 0x68E31DA4u;
  x ^= x << 8;
  x *= 0x1B56C4E9u;
  x ^= x >> 8;
  return x;
}

// Rounds x to bf16 up or down with probability proportional to the distance (unbiased in expectation):
// adds 16 random bits below bf16's last kept bit, then truncates. NaN/Inf pass through.
__device__ __forceinline__ bf16 bf16_stochastic(float x, uint32_t random_bits) {
  uint32_t u = __float_as_uint(x);
  if ((u & 0x7f800000u) == 0x7f800000u) return __float2bfloat16_rn(x);
  u += (random_bits & 0xffffu);
  u &= 0xffff0000u;
  return __float2bfloat16_rn(__uint_as_float(u));  // exact: the low 16 bits are zero
}

// ---- 16-byte vectors ----------------------------------------------------------------------------------------
// N elements of T in one aligned 16-byte load/store (8 bf16 or 4 float).
template <class T>
struct alignas(16) Vec16 {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
  __device__ __forceinline__ static Vec16 load(const T* p) {
    Vec16 out;
#if defined(STRATA_CUDA_EMU)
    std::memcpy(static_cast<void*>(&out), p, 16);  // the host compiler's aliasing rules
#else
    *reinterpret_cast<int4*>(&out) = *reinterpret_cast<const int4*>(p);  // one 16-byte load
#endif
    return out;
  }
  __device__ __forceinline__ void store(T* p) const {
#if defined(STRATA_CUDA_EMU)
    std::memcpy(static_cast<void*>(p), this, 16);
#else
    *reinterpret_cast<int4*>(p) = *reinterpret_cast<const int4*>(this);
#endif
  }
};

// W consecutive bf16 as floats and back: one 16-byte access for W = 8 (p 16-byte aligned), W scalar ones otherwise.
template <int W>
__device__ __forceinline__ void load_floats(const bf16* p, float (&f)[W]) {
  if constexpr (W == 8) {
    const Vec16<bf16> v = Vec16<bf16>::load(p);
    for (int k = 0; k < W; ++k) f[k] = to_float(v.v[k]);
  } else {
    for (int k = 0; k < W; ++k) f[k] = to_float(p[k]);
  }
}
template <int W>
__device__ __forceinline__ void store_floats(bf16* p, const float (&f)[W]) {
  if constexpr (W == 8) {
    Vec16<bf16> v;
    for (int k = 0; k < W; ++k) v.v[k] = from_float<bf16>(f[k]);
    v.store(p);
  } else {
    for (int k = 0; k < W; ++k) p[k] = from_float<bf16>(f[k]);
  }
}

// ---- reductions ------------------------------------------------------------------------------------------------
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}
// Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result. `scratch` holds 32
// floats of shared memory; the function synchronises before reusing it, so it can be called repeatedly.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int nwarps = blockDim.x / kWarpSize;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : 0.0f;
  return warp_sum(v);  // fixed order: the same bits on every call with the same inputs
}

// ---- the matrix unit: D (16x8, f32) += A (16x16, bf16, row) * B (16x8, bf16, col) for one warp --------------
// Fragments as the PTX ISA lays them out for mma.m16n8k16 (g = lane / 4, t = lane % 4; a register holds two
// consecutive bf16, the lower column/row in the low half):
//   a[0] = A[g][2t..2t+1]   a[1] = A[g+8][2t..2t+1]   a[2] = A[g][2t+8..]   a[3] = A[g+8][2t+8..]
//   b[0] = B[2t..2t+1][g]   b[1] = B[2t+8..2t+9][g]
//   d[0..1] = D[g][2t..2t+1]   d[2..3] = D[g+8][2t..2t+1]
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(STRATA_CUDA_EMU)
  uint32_t mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
  uint32_t all[32][8];
  emu::warp_gather(mine, 6, all);
  auto lo = [](uint32_t r) { return __uint_as_float(r << 16); };
  auto hi = [](uint32_t r) { return __uint_as_float(r & 0xffff0000u); };
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    const uint32_t* f = all[l];
    A[g][2 * t] = lo(f[0]), A[g][2 * t + 1] = hi(f[0]);
    A[g + 8][2 * t] = lo(f[1]), A[g + 8][2 * t + 1] = hi(f[1]);
    A[g][2 * t + 8] = lo(f[2]), A[g][2 * t + 9] = hi(f[2]);
    A[g + 8][2 * t + 8] = lo(f[3]), A[g + 8][2 * t + 9] = hi(f[3]);
    B[2 * t][g] = lo(f[4]), B[2 * t + 1][g] = hi(f[4]);
    B[2 * t + 8][g] = lo(f[5]), B[2 * t + 9][g] = hi(f[5]);
  }
  const int g = emu::lane_id() / 4, t = emu::lane_id() % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
    float acc = 0.0f;
    for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
    d[i] += acc;
  }
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  (void)d, (void)a, (void)b;  // host pass of nvcc, or an architecture below sm_80 (not built)
#endif
}

// ---- shared-memory fragment loads and asynchronous copies (sm_80+) ------------------------------------------
// ldmatrix.x4: four 8x8 matrices of 16-bit elements from shared memory. Lane l passes the address of one 16-byte
// row: lanes 8i..8i+7 give rows 0..7 of matrix i. Afterwards r[i] of lane l holds matrix i's elements
// [l/4][2(l%4)] (low half) and [l/4][2(l%4)+1] (high half): the A/B fragment layout of mma_bf16_16816.
// ldmatrix_x4_trans gives each matrix transposed: r[i] holds [2(l%4)][l/4] (low) and [2(l%4)+1][l/4] (high).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row_addr, bool trans = false) {
#if defined(STRATA_CUDA_EMU)
  uint64_t mine = reinterpret_cast<uintptr_t>(row_addr);
  uint32_t words[2] = {static_cast<uint32_t>(mine), static_cast<uint32_t>(mine >> 32)};
  uint32_t all[32][8];
  emu::warp_gather(words, 2, all);
  const int l = emu::lane_id(), g = l / 4, t = l % 4;
  auto elem = [&](int mat, int row, int col) {
    const int src = 8 * mat + row;
    const auto* p = reinterpret_cast<const uint16_t*>((static_cast<uint64_t>(all[src][1]) << 32) | all[src][0]);
    return static_cast<uint32_t>(p[col]);
  };
  for (int i = 0; i < 4; ++i)
    r[i] = trans ? (elem(i, 2 * t, g) | (elem(i, 2 * t + 1, g) << 16)) : (elem(i, g, 2 * t) | (elem(i, g, 2 * t + 1) << 16));
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(row_addr));
  if (trans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
#else
  (void)r, (void)row_addr, (void)trans;
#endif
}

// ldmatrix.x2 (.trans): two 8x8 matrices, rows given by lanes 0-7 and 8-15 (the other lanes' addresses are not
// read on the GPU; give them valid ones, the emulation runs the x4 form); r[0], r[1] as r[0], r[1] of ldmatrix_x4.
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* row_addr, bool trans = false) {
#if defined(STRATA_CUDA_EMU)
  uint32_t r4[4];
  ldmatrix_x4(r4, row_addr, trans);
  r[0] = r4[0], r[1] = r4[1];
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(row_addr));
  if (trans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
#else
  (void)r, (void)row_addr, (void)trans;
#endif
}

// cp.async: a 16-byte copy global -> shared that completes asynchronously (sm_80+); cp_async_commit closes a group
// of copies, cp_async_wait<N>() waits until at most N groups are still in flight (then __syncthreads before other
// threads read the data). The emulation copies at once, so waits are no-ops there.
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src) {
#if defined(STRATA_CUDA_EMU)
  std::memcpy(smem_dst, gmem_src, 16);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(gmem_src));
#else
  (void)smem_dst, (void)gmem_src;
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if !defined(STRATA_CUDA_EMU) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if !defined(STRATA_CUDA_EMU) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// Two floats as one register of two bf16 (lo in the low half), the operand format of mma_bf16_16816.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const uint32_t l = __bfloat16_as_ushort(__float2bfloat16_rn(lo));
  const uint32_t h = __bfloat16_as_ushort(__float2bfloat16_rn(hi));
  return l | (h << 16);
}

}  // namespace strata::cuda

// Dynamic shared memory of the launch as a T*: STRATA_DYNAMIC_SMEM(float, smem);
#if defined(STRATA_CUDA_EMU)
#define STRATA_DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(::strata::emu::dynamic_smem())
#else
#define STRATA_DYNAMIC_SMEM(T, name)                         \
  extern __shared__ __align__(16) unsigned char strata_smem_[]; \
  T* name = reinterpret_cast<T*>(strata_smem_)
#endif
