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
  (void)stream;
  emu::launch(grid, block, smem_bytes, [&] { kernel(static_cast<KArgs>(args)...); });
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
    *reinterpret_cast<int4*>(&out) = *reinterpret_cast<const int4*>(p);
    return out;
  }
  __device__ __forceinline__ void store(T* p) const { *reinterpret_cast<int4*>(p) = *reinterpret_cast<const int4*>(this); }
};

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
