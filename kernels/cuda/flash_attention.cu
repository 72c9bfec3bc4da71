// kernels/cuda/flash_attention.cu: causal grouped-query flash attention on the tensor cores, bf16 in and out,
// fp32 accumulation and softmax. The CPU twin is kernels/cpu/flash_attention.cpp.
//
// qkv (B,T,(NH+2*KVH)*HS): per token NH query heads, then KVH key heads, then KVH value heads (after RoPE).
// Query head h reads key/value head g = h / (NH/KVH). scale = 1/sqrt(HS); s_ts = q_t . k_s * scale, s <= t.
// forward:  lse[b,h,t] = log sum_{s<=t} exp(s_ts)  (natural log, fp32)                          lse `=`
//           out[b,t,h*HS:(h+1)*HS] = sum_{s<=t} exp(s_ts - lse) v_s                              out `=`
// backward: delta[b,h,t] = dout_t . out_t (fp32)                                               delta `=`
//           p_ts = exp(s_ts - lse[t]) (recomputed);  ds_ts = p_ts (dout_t . v_s - delta[t]) scale
//           dq_t = sum_s ds_ts k_s;  dk_s = sum_{h in g} sum_t ds_ts q_t;  dv_s = sum_{h in g} sum_t p_ts dout_t
//                                                                                              dqkv `=`
// Shapes: out, dout (B,T,NH*HS); lse, delta (B,NH,T); dqkv like qkv. HS is 64 or 128 (a template parameter,
// so every fragment array has a compile-time size and lives in registers); T is any positive length.
// With ops::Cuda::deterministic == false the backward also needs flash_attention_backward_workspace_bytes()
// (kernels/cuda/workspace.h) of workspace: an fp32 dQ accumulator (B,T,NH,HS).
//
// The products run on the matrix unit (mma_bf16_16816: D 16x8 fp32 += A 16x16 bf16 * B 16x8 bf16). A warp owns
// 16 or 32 rows of a product (one or two m16 tiles); with two, every B fragment it loads feeds two mma's (the
// lever of FlashAttention-2's 128-row blocks of 4 warps). Operand tiles are staged row-major in shared memory by
// cp.async, rows padded by 8 bf16 (16 bytes). Fragments come from ldmatrix: an A fragment is one ldmatrix.x4, a B
// fragment one ldmatrix.x2 (see "fragments" below for why not x4), and a B operand that reads a tile along its
// other axis (V in P V: two consecutive keys per register) uses the .trans form, so no tile is stored transposed.
// With the padded stride the 8 rows of each 8x8 matrix fall in distinct bank groups (conflict-free). The
// accumulator of one product is the A operand of the next with no shared-memory trip: the D fragments of n-tiles
// 2k and 2k+1 are exactly the A fragment of k-step k (the FlashAttention-2 register layout), rounded to bf16.
//
// Kernels, 128 threads (4 warps) each; every block overlaps its global loads with its math by cp.async (one tile
// in flight, every wait is cp_async_wait<0> followed by __syncthreads: the comments at each loop say which buffer
// the barrier frees), and 2-3 blocks run per SM (__launch_bounds__ min-blocks: see min_blocks below). Every grid
// is (heads, B, tiles) with the tile index slowest and the tiles with the most work first, so the whole grid runs
// longest-first and its last wave holds the shortest tiles (x-fastest tile order only sorted within a head, and a
// head's longest tile could start in the last wave: up to one such tile of tail).
//   forward: block = (head, batch, 128-query tile), 32 query rows per warp. Loop over 64-key tiles up to the
//     diagonal: S = Q K^T, online softmax in the log2 domain (running max m and sum l per row; exp2f),
//     O = diag(alpha) O + P V; only the diagonal tiles (and the one holding T) are masked, and a warp whose rows
//     all precede a tile skips its products (warps 0-1 on the last diagonal tile). FlashAttention-2's pipeline with
//     one K and one V buffer: V(j) is copied under S = Q K(j)^T and the softmax, K(j+1) under P V(j) (a second K/V
//     buffer would cost 18/34 KB for a wait that each block's other warps and the SM's other block already cover).
//     Q fragments are re-read from smem per tile (holding them would take 32/64 more registers).
//   backward, deterministic (the default; no atomics): (1) delta = rowsum(dout * out), HS/8 lanes per row;
//     (2) block = (KV head, batch, 64-key tile), 16 keys per warp: dK, dV in registers while looping over the
//     query heads of the group and the query tiles (64 queries at HS 64, 32 at HS 128) at or after the diagonal
//     (Q, dO double-buffered): S^T = K Q^T, P^T = exp2(S^T - lse), dP^T = V dO^T, dS^T = P^T (dP^T - delta),
//     dV += P^T dO, dK += dS^T Q; each element is written once, so the group's sum has a fixed order (32 keys per
//     warp at HS 128 would need 256 registers of fp32 dK, dV alone); (3) block = (head, batch, 64-query tile), 16
//     queries per warp: dQ in registers over key tiles (64 keys at HS 64, 32 at HS 128; K, V double-buffered),
//     recomputing S and dP. 7 products per (query, key) pair: the price of bitwise-reproducible gradients. These
//     are run 1's tiles: run 2 gave the HS 64 backward 32 rows per warp (128-row tiles, 32-wide inner tiles,
//     rolled k-loops at 255 registers, 2 blocks per SM), which measured 3-4% slower on an H200 (see Measured), so
//     HS 64 is back at 16 rows per warp; the kMTiles machinery stays generic (kernels take the tiles' kMTiles).
//   backward, atomic (deterministic == false; FlashAttention-2's scheme, 5 products per pair): (1) delta, and the
//     same threads zero the fp32 dQ accumulator; (2) kernel (2) above, which also writes each item's dS^T (bf16,
//     the value the dK product uses) to smem and, after a barrier, computes dQ = dS K for the item's query tile
//     (each warp 16 queries x 64 dims) and adds it with fp32 atomics (8-byte red.global.add.v2.f32 on sm_90);
//     (3) a pass converts the accumulator to bf16 dQ (scaled). The dK, dV code is shared with the deterministic
//     path. Run to run, dQ may differ in the last bits (the atomics' order).
//   Resources (ptxas -v of CUDA 13.0, sm_90 / sm_80 registers; no spills), smem per block, min blocks per SM
//   (sm_90 / sm_80):
//     HS 64:  forward 255/232 regs, 36.0 KB, 2/2; dK/dV 168/198, 55.0 KB, 3/2 (atomic: 168/210, 64.0 KB, 3/2);
//             dQ 156/152, 54.0 KB, 3/2; delta 26; dQ conversion 24.
//     HS 128: forward 255/254, 68.0 KB, 2/2; dK/dV 245/238, 68.5 KB, 2/2 (atomic: 245/240, 73.5 KB, 2/2);
//             dQ 166/164, 68.0 KB, 3/2. (> 48 KB: opted in.)
//     The backward's numbers are run 1's again (run 1's code gives the same under CUDA 13.0). Run 2's HS 64
//     backward (32 rows per warp) took dK/dV 255/255 (atomic 254/255) and dQ 211/216 registers at 2/2 blocks; its
//     per-element mask bounds also gave HS 128 dK/dV 244/244 (atomic 250/250). With 16 rows per warp the forward
//     was 126/127 and 168/167 registers at 4 and 3 blocks; 32 rows per warp cannot fit 168 registers (3
//     blocks/SM spill).
//
// Work (causal half counted): a product is HS T^2 flops per (b, h); forward 2 products, backward 7 (deterministic)
// or 5 (atomic; FlashAttention's convention counts 5, 2.5x the forward, whichever runs). B=8, T=2048, NH=16,
// HS=128: forward 137 GFLOP, backward 481 (deterministic) or 344 (atomic) GFLOP executed.
// Napkin model for an H100/H200 SXM (132 SMs, ~1.8-1.98 GHz, 128 B/clk of smem per SM): every mma (2048 FMA)
// reads its B fragment from smem (256 bytes = 2 clk) unless a second m-tile shares it, while mma.sync issues one
// per ~1.5 clk per SM (~2/3 of the dense peak). Shared-memory clocks per mma, counting A fragments and the
// staging stores, were (16 rows per warp) forward 2.75, dK/dV 2.5, dQ 2.67, atomic dK/dV/dQ 2.6: smem bound, a
// forward ceiling of ~360 TFLOP/s; measured on an H200 148-197 TFLOP/s (fwd, B=8, T=1024-2048), 1.09-1.43x
// the time of FlashAttention-2. With 32 rows per warp (the forward since run 2; the HS 64 backward in run 2 only,
// now back at 16 rows and 2.5 / 2.67 / 2.6 clk), per warp and tile:
//   forward, 64 keys x 32 rows: S reads 2 A x4 (1 KB) + 8 B x2 (2 KB) per k-step for 16 mma; P V 256 B per 2
//     mma: 160 B/mma at HS 64 and 128, + 32 B/mma staging K, V = 1.5 clk/mma (was 2.75): level with the mma issue
//     rate, so the ceiling moves from ~360 to ~660 TFLOP/s, co-bound by issue. Softmax beside it, per warp-tile:
//     2048 exp2f = 128 MUFU clk (16/clk/SM) against 384 mma clk at HS 128 but 192 at HS 64, plus ~8 ALU
//     instructions per score: at HS 64 issue and MUFU nearly bind too, so HS 64 gains less.
//   run 2's dK/dV at HS 64, 32 keys x 32 queries: S^T and dP^T each 4 KB A + 4 KB B for 32 mma, dV and dK 4 KB B
//     for 32: 192 B/mma + 16 staging = 1.63 clk (was 2.5); atomic, with the dQ product (384 B/mma: A re-read per 32
//     dims) and the dS^T stores, 2.0 (was 2.6), and half the fp32 atomics per (query, key) (one per 128 keys).
//   run 2's dQ at HS 64, 32 queries x 32 keys: 213 B/mma + 21 staging = 1.83 clk (was 2.67).
//   HS 128 backward: unchanged tiles (the registers), only the grid order.
//   The model missed the HS 64 backward (measured slower, below): it charges shared-memory bytes, not the latency
//   a warp exposes when, at 255 registers with rolled k-loops, it cannot load the next step's fragments early.
// Longest-first order: the old x-fastest order could start a head's longest tile (16 of 136 tile-units at T=1024,
// 64-row tiles) in the last wave, with ~44-66 units per block slot at B=8: up to ~25-35% tail at T=1024, ~12-19%
// at T=2048; longest-first leaves a tail of the shortest tiles (1-2 units).
// Measured (H200, bench/KERNELS.md run 2) against the predictions below: forward 1.30x at HS 128 (T=2048 0.696 ->
// 0.536 ms, T=1024 0.211 -> 0.161), 1.09-1.10x at HS 64 (0.793 -> 0.730, 0.232 -> 0.210); the deterministic
// backward at HS 64 3-4% slower (2.309 -> 2.406 ms, 0.662 -> 0.679: the rolled k-loops at 255 registers cost
// more than the halved shared-memory traffic saved), at HS 128 1.03-1.10x. The HS 64 backward is therefore back
// at run 1's tiles (kept with run 2's longest-first grid); its prediction is the last paragraph here.
// Predictions (written before measuring; bench/kernel_bench.cu's attention rows check them, B=8, H200):
// forward 1.4-1.8x
// at HS 128 (T=2048: 0.70 -> 0.39-0.50 ms, FlashAttention-2 0.52; T=1024: 0.21 -> 0.12-0.15), 1.2-1.5x at HS 64
// (T=2048: 0.79 -> 0.53-0.66; T=1024: 0.23 -> 0.15-0.19); deterministic backward 1.25-1.45x at HS 64 (T=2048:
// 2.31 -> 1.6-1.85 ms) and 1.0-1.15x at HS 128 (grid order only); atomic backward 1.15-1.35x at HS 64, 1.0-1.15x
// at HS 128. Risks: 8 warps per SM (2 blocks) hide less latency than 12-16 did (FlashAttention-2 runs the same 8
// at 255 registers); the forward and dK/dV at HS 64 sit at 254-255 registers, so a compiler change can spill
// (check ptxas -v); dK/dV at HS 64 keeps its S^T, dP^T k-step loops rolled (else 255 registers spill on sm_90),
// so a warp cannot prefetch the next step's fragments; and it has half as many blocks (B KVH T/128: 512 at B=8,
// KVH=8, T=1024), under two waves of 264 slots for small B KVH. (The HS 64 backward measured slower; it is
// reverted, see below.) Next steps: dK/dV with 32 keys per warp at HS 128 (dK, dV split over more warps to fit the
// registers), and a wgmma/TMA path for sm_90.
// Prediction for the revert of the HS 64 backward to run 1's tiles (NOT YET MEASURED: nothing in this change ran
// on a GPU; the CPU emulation's tests check its results only): the deterministic backward at B=8 back at run 1's
// 0.662 ms (T=1024) and 2.309 ms (T=2048), or slightly faster from the longest-first grid order, which alone gave
// the HS 128 backward (tiles unchanged) 1.03-1.10x in run 2: 0.60-0.66 and 2.20-2.31 ms. The atomic backward
// likewise at or under run 1's 0.622 / 2.131 ms. The HS 128 backward should stay at run 2's 0.630 / 2.267 ms (its
// tiles and blocks per SM unchanged; its dK/dV registers moved by 1-10, see Resources). The forward is untouched.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/nvtx.h"
#include "kernels/cuda/workspace.h"
// ops::Cuda::cudnn_attention: cuDNN's SDPA graphs, where this build has them (not on the emulation).
#if defined(STRATA_HAVE_CUDNN_SDPA) && !defined(STRATA_CUDA_EMU)
#define STRATA_CUDNN_ATTENTION 1
#include "kernels/cuda/cudnn_sdpa.h"
#else
#define STRATA_CUDNN_ATTENTION 0
#endif
#include "kernels/ops.h"

// Full unrolling of the fragment loops (their arrays then live in registers); the host compiler of the CPU
// emulation does not know the pragma.
#if defined(STRATA_CUDA_EMU)
#define STRATA_UNROLL
#else
#define STRATA_UNROLL _Pragma("unroll")
#endif

namespace strata::cuda {

size_t flash_attention_backward_workspace_bytes(int B, int T, int NH, int HS) {
  STRATA_CHECK(B > 0 && T > 0 && NH > 0 && HS > 0, "flash_attention_backward_workspace_bytes: B=", B, " T=", T,
               " NH=", NH, " HS=", HS);
  return static_cast<size_t>(B) * static_cast<size_t>(T) * static_cast<size_t>(NH) * static_cast<size_t>(HS) *
         sizeof(float);
}

#if !STRATA_CUDNN_ATTENTION
constexpr const char* kNoCudnn =
    "attention through cuDNN: not in this build (the CPU emulation, or no cudnn_graph.h at configure time)";
#endif

size_t cudnn_attention_workspace_bytes(int B, int T, int NH, int KVH, int HS, bool deterministic) {
#if STRATA_CUDNN_ATTENTION
  const cudnn::SdpaShape sh{B, T, NH, KVH, HS};
  const int64_t fwd = cudnn::plan(cudnn::Direction::kForward, sh, deterministic).workspace_bytes;
  const int64_t bwd = cudnn::plan(cudnn::Direction::kBackward, sh, deterministic).workspace_bytes;
  return static_cast<size_t>(std::max(fwd, bwd));
#else
  (void)B, (void)T, (void)NH, (void)KVH, (void)HS, (void)deterministic;
  STRATA_FAIL(kNoCudnn);
#endif
}

}  // namespace strata::cuda

namespace strata::ops {

using cuda::bf16;

namespace {

using cuda::kWarpSize;
using cuda::mma_bf16_16816;
using cuda::pack_bf16x2;

constexpr int kThreads = 128;  // 4 warps of 16 rows: a 64-row tile per block
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Tile sizes. kLd: row stride of every row-major smem tile (HS + 8: see the header on bank conflicts).
template <int HS>
struct ForwardTiles {  // Q, one K tile, one V tile; 32 query rows (two m16 tiles) per warp
  static constexpr int kMTiles = 2, kBlockQ = 4 * 16 * kMTiles, kBlockK = 64;
  static constexpr int kMinBlocks = 2;  // registers: see the header's Resources
  static constexpr int kLd = HS + 8;
  static constexpr size_t kSmemBytes = size_t(kBlockQ + 2 * kBlockK) * kLd * sizeof(bf16);
};
// The backward runs 16 rows per warp (kMTiles 1) at both head sizes: at HS 64, 32 rows per warp (run 2) measured
// 3-4% slower on an H200 than these tiles (run 1), whose 3 blocks per SM on sm_90 fit in 168 registers unrolled.
template <int HS, bool kAtomicDq>
struct KvTiles {  // backward dK/dV (and dQ by atomics): 16 kMTiles keys per warp; K, V, two stages of (Q, dO, lse,
                 // delta). HS 128: 32-query tiles (the fp32 dK, dV accumulators alone take 128 registers).
  static constexpr int kMTiles = 1, kBlockK = 4 * 16 * kMTiles, kBlockQ = HS == 64 ? 64 : 32;
  static constexpr int kMinBlocks = HS == 64 ? 3 : 2;  // registers: see the header's Resources
  static constexpr int kLd = HS + 8;
  static constexpr int kLdS = kBlockQ + 8;  // dS^T (kBlockK, kLdS), atomic variant only
  static constexpr size_t kSmemBytes = size_t(2 * kBlockK + 4 * kBlockQ) * kLd * sizeof(bf16) +
                                       (kAtomicDq ? size_t(kBlockK) * kLdS * sizeof(bf16) : 0) +
                                       4 * kBlockQ * sizeof(float);
};
template <int HS>
struct QTiles {  // backward dQ: 16 kMTiles queries per warp; Q, dO, two stages of (K, V)
  static constexpr int kMTiles = 1, kBlockQ = 4 * 16 * kMTiles, kBlockK = HS == 64 ? 64 : 32;
  static constexpr int kMinBlocks = 3;  // registers: see the header's Resources
  static constexpr int kLd = HS + 8;
  static constexpr size_t kSmemBytes = size_t(2 * kBlockQ + 4 * kBlockK) * kLd * sizeof(bf16);
};
static_assert(ForwardTiles<64>::kBlockQ == 4 * 16 * ForwardTiles<64>::kMTiles &&
                  ForwardTiles<128>::kBlockQ == 4 * 16 * ForwardTiles<128>::kMTiles &&
                  QTiles<64>::kBlockQ == 4 * 16 * QTiles<64>::kMTiles &&
                  QTiles<128>::kBlockQ == 4 * 16 * QTiles<128>::kMTiles &&
                  KvTiles<64, false>::kBlockK == 4 * 16 * KvTiles<64, false>::kMTiles &&
                  KvTiles<128, false>::kBlockK == 4 * 16 * KvTiles<128, false>::kMTiles,
              "a warp owns kMTiles x 16 rows of the block's tile");
static_assert(ForwardTiles<128>::kSmemBytes <= 80 * 1024 && KvTiles<128, true>::kSmemBytes <= 80 * 1024 &&
                  QTiles<128>::kSmemBytes <= 80 * 1024,
              "at least two blocks per SM on sm_80 (164 KB) and sm_90 (228 KB)");

// The min-blocks of __launch_bounds__: `want` (3, or 2 for a kernel whose accumulators need more than the 168
// registers of 3 blocks: the forward, whose warps own 32 rows, and dK/dV at HS 128, whose fp32 dK, dV alone take
// 128) where the SM's shared memory holds that many blocks (plus the 1 KB each reserves), else as many as it holds,
// at least 2. Asking sm_80 for three of the 54-68 KB kernels would cap them at 168 registers (and spill) for an
// occupancy its shared memory never allows: the HS 64 backward gets 3 blocks on sm_90, 2 on sm_80.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
constexpr size_t kSmemPerSm = 164 * 1024;
#else
constexpr size_t kSmemPerSm = 228 * 1024;
#endif
constexpr int min_blocks(size_t smem_bytes, int want = 3) {
  const int fit = static_cast<int>(kSmemPerSm / (smem_bytes + 1024));
  return fit >= want ? want : fit >= 2 ? fit : 2;
}

// ---- raw loads and stores ----------------------------------------------------------------------------------------
// 4- and 16-byte accesses to bf16 arrays (fragment registers, vectorised copies). On the device each is one
// instruction; the CPU emulation goes through memcpy so the host compiler's strict-aliasing rules hold.
template <class W>
__device__ __forceinline__ W load_bits(const bf16* p) {
#if defined(STRATA_CUDA_EMU)
  W w;
  std::memcpy(&w, p, sizeof(W));
  return w;
#else
  return *reinterpret_cast<const W*>(p);
#endif
}
template <class W>
__device__ __forceinline__ void store_bits(bf16* p, const W& w) {
#if defined(STRATA_CUDA_EMU)
  std::memcpy(static_cast<void*>(p), &w, sizeof(W));
#else
  *reinterpret_cast<W*>(p) = w;
#endif
}
__device__ __forceinline__ float lo_float(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float hi_float(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }

// p[0..1] += (x, y) in global memory, no value returned: one 8-byte reduction on sm_90 (red.global.add.v2.f32),
// two 4-byte ones on sm_80. Written as PTX `red` so no return traffic is requested.
__device__ __forceinline__ void atomic_add_f32x2(float* p, float x, float y) {
#if defined(STRATA_CUDA_EMU)
  atomicAdd(p, x);
  atomicAdd(p + 1, y);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(p), "f"(x), "f"(y) : "memory");
#elif defined(__CUDA_ARCH__)
  asm volatile("red.global.add.f32 [%0], %1;\n" ::"l"(p), "f"(x) : "memory");
  asm volatile("red.global.add.f32 [%0], %1;\n" ::"l"(p + 1), "f"(y) : "memory");
#else
  (void)p, (void)x, (void)y;
#endif
}

// ---- shared-memory staging ------------------------------------------------------------------------------------

// Rows [0, rows) x [0, HS) of a bf16 matrix with row stride src_ld into smem (row stride ld) by cp.async; rows at
// and past `valid` are zero-filled with ordinary stores. Consecutive threads copy consecutive 16-byte pieces of a
// row (coalesced). The caller commits the group; before any thread reads the tile, every thread must
// cp_async_wait for the group and then pass a __syncthreads (which also publishes the zero rows).
template <int HS>
__device__ __forceinline__ void copy_rows_async(bf16* dst, int ld, const bf16* src, int64_t src_ld, int rows,
                                                int valid) {
  constexpr int kPieces = HS / 8;
  for (int c = static_cast<int>(threadIdx.x); c < rows * kPieces; c += kThreads) {
    const int r = c / kPieces, col = (c % kPieces) * 8;
    if (r < valid)
      cuda::cp_async_16(dst + r * ld + col, src + r * src_ld + col);
    else
      store_bits(dst + r * ld + col, make_int4(0, 0, 0, 0));
  }
}

// ---- fragments (layouts: kernels/cuda/common.cuh, mma_bf16_16816 and ldmatrix_x4) -----------------------------
// A fragments (16x16, 4 registers) come from one ldmatrix.x4, B fragments (16x8, 2 registers) from one
// ldmatrix.x2: its two 8x8 matrices are addressed by lanes 0-7 and 8-15 (lanes 16-31 are ignored, so they repeat
// 0-15). An x4 would fetch the B fragments of two n-tiles at once, but ptxas then wants 20-60 more registers per
// thread (-Xptxas -v without the min-blocks bound; with it, spills at 3 blocks per SM); with x2 the register counts
// stay near those of the 32-bit loads this replaced. With the padded row stride (HS + 8 or kBlockQ + 8
// bf16: 36, 68 or 20 words) the 8 rows of a matrix start in 8 distinct 4-bank groups, so every phase of an
// ldmatrix is conflict-free.

using cuda::ldmatrix_x2;

// A (16x16): rows [0,16), columns [k0, k0+16) of a row-major smem tile m (row stride ld). Matrices: rows 0-7 |
// rows 8-15 at columns k0, then the same at k0 + 8 (a[0..3] of mma_bf16_16816).
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const bf16* m, int ld, int k0, int lane) {
  cuda::ldmatrix_x4(a, m + ((lane & 7) + (lane & 8)) * ld + k0 + ((lane & 16) >> 1));
}

// A (16x16) with A[i][k] = m[k0 + k][i0 + i]: a tile stored transposed (rows of m are A's columns), by .trans.
// Matrices: (k 0-7, i 0-7), (k 0-7, i 8-15), (k 8-15, i 0-7), (k 8-15, i 8-15).
__device__ __forceinline__ void load_a_trans(uint32_t (&a)[4], const bf16* m, int ld, int k0, int i0, int lane) {
  cuda::ldmatrix_x4(a, m + (k0 + (lane & 7) + ((lane & 16) >> 1)) * ld + i0 + (lane & 8), true);
}

// B (16x8) with B[k][n] = m[n0 + n][k0 + k]: the rows of the smem tile m are B's columns (K in Q K^T).
__device__ __forceinline__ void load_b(uint32_t (&b)[2], const bf16* m, int ld, int n0, int k0, int lane) {
  ldmatrix_x2(b, m + (n0 + (lane & 7)) * ld + k0 + (lane & 8), false);
}

// B (16x8) with B[k][n] = m[k0 + k][n0 + n]: the rows of m are B's rows (V in P V), by .trans: no transposed copy.
__device__ __forceinline__ void load_b_trans(uint32_t (&b)[2], const bf16* m, int ld, int n0, int k0, int lane) {
  ldmatrix_x2(b, m + (k0 + (lane & 15)) * ld + n0, true);
}

// The D fragments of n-tiles 2k, 2k+1 (16 columns) as the A fragment of k-step k of the next product.
__device__ __forceinline__ void accum_as_a(uint32_t (&a)[4], const float (&d0)[4], const float (&d1)[4]) {
  a[0] = pack_bf16x2(d0[0], d0[1]);
  a[1] = pack_bf16x2(d0[2], d0[3]);
  a[2] = pack_bf16x2(d1[0], d1[1]);
  a[3] = pack_bf16x2(d1[2], d1[3]);
}
// P (16 x K, fp32 accumulators of a product) rounded to bf16: the A fragments of the next product, one per k-step
// (half the registers of P, so P is packed as soon as it is final).
template <int K>
__device__ __forceinline__ void pack_a(uint32_t (&pa)[K / 16][4], const float (&p)[K / 8][4]) {
STRATA_UNROLL
  for (int kk = 0; kk < K / 16; ++kk) accum_as_a(pa[kk], p[2 * kk], p[2 * kk + 1]);
}

// D (16M x N) += A (16M x K, row-major smem rows of this warp, M m16 tiles) * M^T, M an (N, K) row-major smem
// tile. Each B fragment feeds the M tiles' products: with M = 2 a 16-byte row of B serves 2 mma's. kRolled keeps
// the k-step loop a loop (its index only moves addresses), so ptxas cannot hoist the next step's fragments: the
// dK/dV kernel asks for it with more than one m-tile per warp (at HS 64 with 32 keys per warp it spilled at 255
// registers on sm_90 without it); with one m-tile, as now at both head sizes, the loop is unrolled.
template <int M, int N, int K, bool kRolled = false>
__device__ __forceinline__ void mma_rows_smem(float (&d)[M][N / 8][4], const bf16* a_rows, int lda, const bf16* m,
                                              int ldm, int lane) {
  if constexpr (kRolled) {
#pragma unroll 1
    for (int kk = 0; kk < K / 16; ++kk) mma_rows_smem<M, N, 16>(d, a_rows + 16 * kk, lda, m + 16 * kk, ldm, lane);
  } else {
STRATA_UNROLL
    for (int kk = 0; kk < K / 16; ++kk) {
      uint32_t a[M][4];
STRATA_UNROLL
      for (int mt = 0; mt < M; ++mt) load_a(a[mt], a_rows + 16 * mt * lda, lda, 16 * kk, lane);
STRATA_UNROLL
      for (int j = 0; j < N / 8; ++j) {
        uint32_t b[2];
        load_b(b, m, ldm, 8 * j, 16 * kk, lane);
STRATA_UNROLL
        for (int mt = 0; mt < M; ++mt) mma_bf16_16816(d[mt][j], a[mt], b);
      }
    }
  }
}
template <int N, int K>  // one m16 tile
__device__ __forceinline__ void mma_a_smem(float (&d)[N / 8][4], const bf16* a_rows, int lda, const bf16* m, int ldm,
                                           int lane) {
  mma_rows_smem<1, N, K>(reinterpret_cast<float(&)[1][N / 8][4]>(d), a_rows, lda, m, ldm, lane);
}

// D (16M x N) += P (M m16 tiles of 16 x K, packed by pack_a) * M, M a (K, N) row-major smem tile.
template <int M, int N, int K>
__device__ __forceinline__ void mma_rows_regs(float (&d)[M][N / 8][4], const uint32_t (&pa)[M][K / 16][4],
                                              const bf16* m, int ldm, int lane) {
STRATA_UNROLL
  for (int kk = 0; kk < K / 16; ++kk)
STRATA_UNROLL
    for (int n = 0; n < N / 8; ++n) {
      uint32_t b[2];
      load_b_trans(b, m, ldm, 8 * n, 16 * kk, lane);
STRATA_UNROLL
      for (int mt = 0; mt < M; ++mt) mma_bf16_16816(d[mt][n], pa[mt][kk], b);
    }
}
template <int N, int K>  // one m16 tile
__device__ __forceinline__ void mma_a_regs(float (&d)[N / 8][4], const uint32_t (&pa)[K / 16][4], const bf16* m,
                                           int ldm, int lane) {
  mma_rows_regs<1, N, K>(reinterpret_cast<float(&)[1][N / 8][4]>(d),
                         reinterpret_cast<const uint32_t(&)[1][K / 16][4]>(pa), m, ldm, lane);
}

// Writes a warp's 16 x HS accumulator (rows g and g+8 times mul) as bf16 into its 16 smem rows, then copies
// the rows [0, valid) to global memory (row stride dst_ld) with 16-byte stores. The smem rows must be this
// warp's own (no other warp reads them afterwards).
template <int HS>
__device__ __forceinline__ void store_warp_rows(bf16* dst, int64_t dst_ld, bf16* rows, int ld,
                                                const float (&acc)[HS / 8][4], float mul, int valid, int lane) {
  const int gr = lane / 4, tq = lane % 4;
  __syncwarp();
STRATA_UNROLL
  for (int n = 0; n < HS / 8; ++n) {
    store_bits(rows + gr * ld + 8 * n + 2 * tq, pack_bf16x2(acc[n][0] * mul, acc[n][1] * mul));
    store_bits(rows + (gr + 8) * ld + 8 * n + 2 * tq, pack_bf16x2(acc[n][2] * mul, acc[n][3] * mul));
  }
  __syncwarp();
  constexpr int kPieces = HS / 8;
  for (int c = lane; c < 16 * kPieces; c += kWarpSize) {
    const int r = c / kPieces, col = (c % kPieces) * 8;
    if (r < valid) store_bits(dst + r * dst_ld + col, load_bits<int4>(rows + r * ld + col));
  }
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(cuda::kFullMask, v, 1));
  return fmaxf(v, __shfl_xor_sync(cuda::kFullMask, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(cuda::kFullMask, v, 1);
  return v + __shfl_xor_sync(cuda::kFullMask, v, 2);
}

// ---- forward ------------------------------------------------------------------------------------------------------

// grid (NH, B, ceil(T/128)), block 128 (32 query rows per warp: two m16 tiles). scale_log2 = scale * log2(e).
template <int HS>
__global__ void __launch_bounds__(kThreads, min_blocks(ForwardTiles<HS>::kSmemBytes, ForwardTiles<HS>::kMinBlocks))
    flash_forward_kernel(bf16* out, float* lse, const bf16* qkv, int T, int NH, int KVH, float scale_log2) {
  using Tiles = ForwardTiles<HS>;
  constexpr int BQ = Tiles::kBlockQ, BK = Tiles::kBlockK, kLd = Tiles::kLd, MT = Tiles::kMTiles;
  STRATA_DYNAMIC_SMEM(bf16, smem);
  bf16* q_s = smem;              // (BQ, kLd)
  bf16* k_s = q_s + BQ * kLd;    // (BK, kLd)
  bf16* v_s = k_s + BK * kLd;    // (BK, kLd)
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize, lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int tq = lane % 4;
  // The query tile is the slowest grid index, counted down: every (head, batch)'s longest rows start before any
  // shorter tile (longest-first over the whole grid, so the last wave holds the shortest tiles).
  const int q0 = static_cast<int>(gridDim.z - 1 - blockIdx.z) * BQ;
  const int h = static_cast<int>(blockIdx.x), b = static_cast<int>(blockIdx.y), g = h / (NH / KVH);
  const int R = (NH + 2 * KVH) * HS;
  const bf16* base = qkv + int64_t{b} * T * R;
  const bf16* k = base + (NH + g) * HS;
  const bf16* v = base + (NH + KVH + g) * HS;

  // Pipeline (FlashAttention-2's, one buffer each for K and V): the copy of V(kt) runs under S = Q K(kt)^T and
  // the softmax, the copy of K(kt+1) under O += P V(kt). Each cp_async_wait<0> below has exactly one group in
  // flight (this thread's copies of the tile about to be read); the __syncthreads after it makes every thread's
  // copies visible and also proves that every warp is done with the buffer the next copy overwrites.
  copy_rows_async<HS>(q_s, kLd, base + int64_t{q0} * R + h * HS, R, BQ, T - q0);
  copy_rows_async<HS>(k_s, kLd, k, R, BK, T);
  cuda::cp_async_commit();
  constexpr int kRowsW = 16 * MT;  // query rows per warp
  bf16* q_w = q_s + warp * kRowsW * kLd;  // this warp's query rows (read by this warp only)
  const int row_w = q0 + warp * kRowsW;
  // The row of accumulator entries [2r, 2r+1] of m-tile mt is row_t + 16 mt + 8 r; last: the last key it attends
  // to (a row past T: T - 1, any value works).
  const int row_t = row_w + lane / 4;
  int last[MT][2];
STRATA_UNROLL
  for (int mt = 0; mt < MT; ++mt)
STRATA_UNROLL
    for (int r = 0; r < 2; ++r) last[mt][r] = row_t + 16 * mt + 8 * r < T ? row_t + 16 * mt + 8 * r : T - 1;
  float o[MT][HS / 8][4] = {};
  float m[MT][2], l[MT][2];  // l: this thread's partial sums (quad-reduced at the end)
STRATA_UNROLL
  for (int mt = 0; mt < MT; ++mt) m[mt][0] = m[mt][1] = -INFINITY, l[mt][0] = l[mt][1] = 0.0f;
  const int n_tiles = cuda::ceil_div(q0 + BQ < T ? q0 + BQ : T, BK);
  for (int kt = 0; kt < n_tiles; ++kt) {
    const int k0 = kt * BK;
    cuda::cp_async_wait<0>();  // this thread's copies of K(kt) (and, at kt = 0, of Q)
    __syncthreads();           // everyone's copies have landed; every warp is done with V(kt-1) (its P V is above)
    copy_rows_async<HS>(v_s, kLd, v + int64_t{k0} * R, R, BK, T - k0);
    cuda::cp_async_commit();

    // A warp whose rows all precede the tile's first key skips it (on the diagonal, warps 0-1 skip the second
    // 64-key tile); it still stages and passes the barriers. Active, every row of the warp sees key k0 (k0 is a
    // multiple of 64 <= row_w), so no row's maximum stays -inf past the first tile.
    const bool active = k0 <= row_w + kRowsW - 1;
    uint32_t pa[MT][BK / 16][4];  // P as bf16 A fragments
    if (active) {
      // S = Q K^T. The Q fragments are re-read from smem per tile rather than held in registers (32 more at HS 64,
      // 64 at HS 128); each K fragment feeds both m-tiles.
      float s[MT][BK / 8][4] = {};
      mma_rows_smem<MT, BK, HS>(s, q_w, kLd, k_s, kLd, lane);
      // Only the diagonal tiles and the tile holding T need the mask (keys after the row, keys past T).
      const bool masked = k0 + BK - 1 > row_w || k0 + BK > T;
STRATA_UNROLL
      for (int mt = 0; mt < MT; ++mt) {
        float mx[2] = {-INFINITY, -INFINITY};
STRATA_UNROLL
        for (int j = 0; j < BK / 8; ++j)
STRATA_UNROLL
          for (int i = 0; i < 4; ++i) {
            const int key = k0 + 8 * j + 2 * tq + (i & 1);
            float x = s[mt][j][i] * scale_log2;
            if (masked && key > last[mt][i / 2]) x = -INFINITY;
            s[mt][j][i] = x;
            mx[i / 2] = fmaxf(mx[i / 2], x);
          }
        float m_use[2], alpha[2];
STRATA_UNROLL
        for (int r = 0; r < 2; ++r) {
          const float m_new = fmaxf(m[mt][r], quad_max(mx[r]));
          m_use[r] = m_new == -INFINITY ? 0.0f : m_new;  // a row with no key yet: keep exp2f(-inf - m) = 0, not NaN
          alpha[r] = exp2f(m[mt][r] - m_use[r]);
          m[mt][r] = m_new;
        }
        float sum[2] = {0.0f, 0.0f};
STRATA_UNROLL
        for (int j = 0; j < BK / 8; ++j)
STRATA_UNROLL
          for (int i = 0; i < 4; ++i) {
            s[mt][j][i] = exp2f(s[mt][j][i] - m_use[i / 2]);
            sum[i / 2] += s[mt][j][i];
          }
STRATA_UNROLL
        for (int r = 0; r < 2; ++r) l[mt][r] = l[mt][r] * alpha[r] + sum[r];
STRATA_UNROLL
        for (int n = 0; n < HS / 8; ++n) {
          o[mt][n][0] *= alpha[0], o[mt][n][1] *= alpha[0];
          o[mt][n][2] *= alpha[1], o[mt][n][3] *= alpha[1];
        }
        pack_a<BK>(pa[mt], s[mt]);
      }
    }

    cuda::cp_async_wait<0>();  // this thread's copies of V(kt)
    __syncthreads();           // everyone's copies have landed; every warp is done reading K(kt)
    if (kt + 1 < n_tiles) {
      copy_rows_async<HS>(k_s, kLd, k + int64_t{k0 + BK} * R, R, BK, T - k0 - BK);
      cuda::cp_async_commit();
    }
    if (active) mma_rows_regs<MT, HS, BK>(o, pa, v_s, kLd, lane);
  }
  // No copy is in flight here: the last iteration issued none after its final wait.

  const int64_t OC = int64_t{NH} * HS;
STRATA_UNROLL
  for (int mt = 0; mt < MT; ++mt) {
    float inv[2];
STRATA_UNROLL
    for (int r = 0; r < 2; ++r) {
      l[mt][r] = quad_sum(l[mt][r]);
      inv[r] = 1.0f / l[mt][r];
      const int row = row_t + 16 * mt + 8 * r;
      if (tq == 0 && row < T) lse[(int64_t{b} * NH + h) * T + row] = m[mt][r] * kLn2 + logf(l[mt][r]);
    }
    // Normalise per row half: fold 1/l into the accumulator, then stage through this m-tile's Q rows.
STRATA_UNROLL
    for (int n = 0; n < HS / 8; ++n) {
      o[mt][n][0] *= inv[0], o[mt][n][1] *= inv[0];
      o[mt][n][2] *= inv[1], o[mt][n][3] *= inv[1];
    }
    const int row_m = row_w + 16 * mt;
    store_warp_rows<HS>(out + (int64_t{b} * T + row_m) * OC + h * HS, OC, q_w + 16 * mt * kLd, kLd, o[mt], 1.0f,
                        T - row_m, lane);
  }
}

// ---- backward -------------------------------------------------------------------------------------------------------

// delta[b,h,t] = dout[b,t,h,:] . out[b,t,h,:]: HS/8 lanes per (b,t,h) row, one 16-byte piece each. When dq_accum
// (B,T,NH,HS fp32, the atomic path's scratch) is non-null, the same thread also zeroes its 8 elements of it.
// grid ceil(B*T*NH*HS/8 / 256), block 256.
template <int HS>
__global__ void __launch_bounds__(256)
    flash_delta_kernel(float* delta, float* dq_accum, const bf16* dout, const bf16* out, int64_t rows, int T, int NH) {
  constexpr int kLanes = HS / 8;
  static_assert(kWarpSize % kLanes == 0, "a row's lanes stay in one warp");
  const int64_t tid = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  const int64_t row = tid / kLanes;  // (b*T + t)*NH + h: the layout of out
  const int piece = static_cast<int>(tid % kLanes);
  float acc = 0.0f;
  if (row < rows) {
    const int4 a = load_bits<int4>(dout + row * HS + piece * 8);
    const int4 c = load_bits<int4>(out + row * HS + piece * 8);
    const int aw[4] = {a.x, a.y, a.z, a.w}, cw[4] = {c.x, c.y, c.z, c.w};
STRATA_UNROLL
    for (int i = 0; i < 4; ++i) {
      const uint32_t x = static_cast<uint32_t>(aw[i]), y = static_cast<uint32_t>(cw[i]);
      acc += lo_float(x) * lo_float(y) + hi_float(x) * hi_float(y);
    }
    if (dq_accum) {
      const cuda::Vec16<float> zero{};
      zero.store(dq_accum + row * HS + piece * 8);
      zero.store(dq_accum + row * HS + piece * 8 + 4);
    }
  }
STRATA_UNROLL
  for (int off = kLanes / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(cuda::kFullMask, acc, off);
  if (row < rows && piece == 0) {
    const int64_t bt = row / NH;
    const int64_t h = row % NH, bb = bt / T, t = bt % T;
    delta[(bb * NH + h) * T + t] = acc;
  }
}

// dK, dV of one key tile of KV head g: grid (KVH, B, ceil(T/BK)), block 128, 16 kMTiles keys per warp (BK = 64,
// 16 keys per warp, at both head sizes; query tiles of BQ = 64 at HS 64, 32 at HS 128). The key tile is the slowest
// grid index and tile 0 (the most query tiles) comes first: longest-first over the whole grid. With kAtomicDq
// (FlashAttention-2's backward) the block also computes dQ = dS K for every query tile it visits and adds it
// (unscaled) into dq_accum (B,T,NH,HS fp32) with atomics; otherwise dq_accum is unused and dQ is left to
// flash_backward_dq_kernel.
template <int HS, bool kAtomicDq>
__global__ void __launch_bounds__(kThreads,
                                  min_blocks(KvTiles<HS, kAtomicDq>::kSmemBytes, KvTiles<HS, kAtomicDq>::kMinBlocks))
    flash_backward_dkdv_kernel(bf16* dqkv, float* dq_accum, const bf16* dout, const bf16* qkv, const float* lse,
                               const float* delta, int T, int NH, int KVH, float scale, float scale_log2) {
  using Tiles = KvTiles<HS, kAtomicDq>;
  constexpr int BK = Tiles::kBlockK, BQ = Tiles::kBlockQ, kLd = Tiles::kLd, kLdS = Tiles::kLdS;
  constexpr int MT = Tiles::kMTiles, kRowsW = 16 * MT;  // m16 tiles and keys per warp
  static_assert(BK == 4 * kRowsW && BQ % 16 == 0 && BQ <= kThreads, "4 warps of kRowsW keys; one thread per query");
  STRATA_DYNAMIC_SMEM(bf16, smem);
  bf16* k_s = smem;                    // (BK, kLd)
  bf16* v_s = k_s + BK * kLd;          // (BK, kLd)
  bf16* q_s = v_s + BK * kLd;          // 2 stages of (BQ, kLd)
  bf16* do_s = q_s + 2 * BQ * kLd;     // 2 stages of (BQ, kLd)
  bf16* ds_s = do_s + 2 * BQ * kLd;    // (BK, kLdS): dS^T, atomic variant only
  float* lse_s = reinterpret_cast<float*>(ds_s + (kAtomicDq ? BK * kLdS : 0));  // 2 stages of (BQ): lse * log2(e)
  float* delta_s = lse_s + 2 * BQ;                                               // 2 stages of (BQ)
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / kWarpSize, lane = tid % kWarpSize, gr = lane / 4, tq = lane % 4;
  const int k0 = static_cast<int>(blockIdx.z) * BK;
  const int g = static_cast<int>(blockIdx.x), b = static_cast<int>(blockIdx.y), group = NH / KVH;
  const int R = (NH + 2 * KVH) * HS, OC = NH * HS;
  const bf16* base = qkv + int64_t{b} * T * R;

  // The work is a flat list of (query head of the group, query tile at or after the diagonal); item `it` has
  // head h and first query qs.
  const int q_first = k0 / BQ * BQ, n_q = cuda::ceil_div(T - q_first, BQ), n_items = group * n_q;
  auto item = [&](int it, int& h, int& qs) {
    h = g * group + it / n_q;
    qs = q_first + (it % n_q) * BQ;
  };
  // lse (log2 domain) and delta of the item's queries go through registers one item ahead of their smem stage:
  // thread tid < BQ loads query tid's pair for item it+2 before computing item it, and stores it at item it+1.
  float lse_next = 0.0f, delta_next = 0.0f;
  auto fetch_stats = [&](int it) {
    if (tid < BQ) {
      int h, qs;
      item(it, h, qs);
      const int t = qs + tid;
      const int64_t at = (int64_t{b} * NH + h) * T + t;
      lse_next = t < T ? lse[at] * kLog2e : 0.0f;
      delta_next = t < T ? delta[at] : 0.0f;
    }
  };
  // Stage it & 1 receives item it: Q and dO rows by cp.async (one committed group), lse and delta from registers.
  auto stage_item = [&](int it) {
    int h, qs;
    item(it, h, qs);
    const int st = it & 1;
    copy_rows_async<HS>(q_s + st * BQ * kLd, kLd, base + int64_t{qs} * R + h * HS, R, BQ, T - qs);
    copy_rows_async<HS>(do_s + st * BQ * kLd, kLd, dout + (int64_t{b} * T + qs) * OC + h * HS, OC, BQ, T - qs);
    cuda::cp_async_commit();
    if (tid < BQ) lse_s[st * BQ + tid] = lse_next, delta_s[st * BQ + tid] = delta_next;
  };

  copy_rows_async<HS>(k_s, kLd, base + int64_t{k0} * R + (NH + g) * HS, R, BK, T - k0);
  copy_rows_async<HS>(v_s, kLd, base + int64_t{k0} * R + (NH + KVH + g) * HS, R, BK, T - k0);
  fetch_stats(0);
  stage_item(0);  // K, V and item 0 in one group
  if (n_items > 1) fetch_stats(1);

  const int key_w = k0 + warp * kRowsW;  // this warp's first key
  const bf16* k_w = k_s + warp * kRowsW * kLd;
  const bf16* v_w = v_s + warp * kRowsW * kLd;
  float dk[MT][HS / 8][4] = {}, dv[MT][HS / 8][4] = {};
  for (int it = 0; it < n_items; ++it) {
    // Double buffering: exactly one group is in flight here (item it's copies, issued one iteration ago), so
    // wait<0> completes this thread's share and the barrier everyone's. The barrier also proves that every warp
    // has finished item it-1, so stage (it+1) & 1 = (it-1) & 1 is free for item it+1, whose copies then run
    // under this item's products.
    cuda::cp_async_wait<0>();
    __syncthreads();
    if (it + 1 < n_items) {
      stage_item(it + 1);
      if (it + 2 < n_items) fetch_stats(it + 2);
    }
    int h, qs;
    item(it, h, qs);
    const int st = it & 1;
    const bf16* q_t = q_s + st * BQ * kLd;
    const bf16* do_t = do_s + st * BQ * kLd;
    const float* lse_t = lse_s + st * BQ;
    const float* delta_t = delta_s + st * BQ;

    if (qs + BQ - 1 >= key_w) {  // else every query of the tile precedes every key of this warp: P = 0
      // S^T then P^T, dP^T then dS^T: kRowsW keys x BQ queries; each Q, dO fragment feeds the MT m-tiles.
      float pt[MT][BQ / 8][4] = {}, dst[MT][BQ / 8][4] = {};
      mma_rows_smem<MT, BQ, HS, (MT > 1)>(pt, k_w, kLd, q_t, kLd, lane);
      mma_rows_smem<MT, BQ, HS, (MT > 1)>(dst, v_w, kLd, do_t, kLd, lane);
      const bool masked = qs < key_w + kRowsW - 1 || qs + BQ > T;
      const int end = T - qs;  // tile queries [first, end) see the key
STRATA_UNROLL
      for (int mt = 0; mt < MT; ++mt) {
        // first per m-tile and row half, outside the element loops: written per element (key_w + 16 mt + 8 (i/2)
        // + gr - qs), ptxas spills 52 bytes at HS 64's 168 registers (sm_90, CUDA 13.0).
        const int first[2] = {key_w + 16 * mt + gr - qs, key_w + 16 * mt + 8 + gr - qs};
STRATA_UNROLL
        for (int j = 0; j < BQ / 8; ++j)
STRATA_UNROLL
          for (int i = 0; i < 4; ++i) {
            const int ql = 8 * j + 2 * tq + (i & 1);
            float p = exp2f(pt[mt][j][i] * scale_log2 - lse_t[ql]);
            if (masked && (ql < first[i / 2] || ql >= end)) p = 0.0f;
            pt[mt][j][i] = p;
            dst[mt][j][i] = p * (dst[mt][j][i] - delta_t[ql]);  // dS^T without the scale (applied once at the end)
          }
      }
      uint32_t pa[MT][BQ / 16][4];  // P^T, then dS^T, as bf16 A fragments
STRATA_UNROLL
      for (int mt = 0; mt < MT; ++mt) pack_a<BQ>(pa[mt], pt[mt]);
      mma_rows_regs<MT, HS, BQ>(dv, pa, do_t, kLd, lane);  // dV += P^T dO
STRATA_UNROLL
      for (int mt = 0; mt < MT; ++mt) pack_a<BQ>(pa[mt], dst[mt]);
      if constexpr (kAtomicDq) {  // this warp's kRowsW rows of dS^T for the dQ product: the bf16 values dK uses
STRATA_UNROLL
        for (int mt = 0; mt < MT; ++mt) {
          bf16* ds_w = ds_s + (warp * kRowsW + 16 * mt) * kLdS;
STRATA_UNROLL
          for (int kk = 0; kk < BQ / 16; ++kk) {
            store_bits(ds_w + gr * kLdS + 16 * kk + 2 * tq, pa[mt][kk][0]);
            store_bits(ds_w + (gr + 8) * kLdS + 16 * kk + 2 * tq, pa[mt][kk][1]);
            store_bits(ds_w + gr * kLdS + 16 * kk + 8 + 2 * tq, pa[mt][kk][2]);
            store_bits(ds_w + (gr + 8) * kLdS + 16 * kk + 8 + 2 * tq, pa[mt][kk][3]);
          }
        }
      }
      mma_rows_regs<MT, HS, BQ>(dk, pa, q_t, kLd, lane);  // dK += dS^T Q
    }

    if constexpr (kAtomicDq) {
      // dQ (BQ x HS) += dS (BQ x BK) K (BK x HS): warp w takes 16 query rows (w % kRowGroups) and kDqDims head
      // dims (w / kRowGroups), reading dS^T transposed (ldmatrix.trans) and K through .trans. Key chunk c (16
      // keys, rows of warp c / MT) is read only when its warp was active for this item, i.e. for c < n_chunks
      // (skipped warps leave stale rows: chunks MT w .. MT w + MT - 1); later chunks hold no key <= the tile's
      // last query anyway.
      constexpr int kRowGroups = BQ / 16;
      static_assert(4 % kRowGroups == 0, "the 4 warps tile dQ (BQ 16, 32 or 64)");
      constexpr int kDqDims = HS / (4 / kRowGroups);
      __syncthreads();  // every warp's dS^T rows are in ds_s (the next write is after the next item's barrier)
      const int rg = warp % kRowGroups, d0 = (warp / kRowGroups) * kDqDims;
      const int n_chunks = cuda::ceil_div(qs + BQ - k0, 16);  // >= 1 since qs + BQ > k0
      float dq[kDqDims / 8][4] = {};
STRATA_UNROLL
      for (int kk = 0; kk < BK / 16; ++kk) {
        if (kk < n_chunks) {
          uint32_t a[4];
          load_a_trans(a, ds_s, kLdS, 16 * kk, 16 * rg, lane);
STRATA_UNROLL
          for (int n = 0; n < kDqDims / 8; ++n) {
            uint32_t bb[2];
            load_b_trans(bb, k_s, kLd, d0 + 8 * n, 16 * kk, lane);
            mma_bf16_16816(dq[n], a, bb);
          }
        }
      }
STRATA_UNROLL
      for (int r = 0; r < 2; ++r) {
        const int t = qs + 16 * rg + gr + 8 * r;
        if (t < T) {
          float* dst_row = dq_accum + ((int64_t{b} * T + t) * NH + h) * HS + d0 + 2 * tq;
STRATA_UNROLL
          for (int n = 0; n < kDqDims / 8; ++n) atomic_add_f32x2(dst_row + 8 * n, dq[n][2 * r], dq[n][2 * r + 1]);
        }
      }
    }
  }
  // No copy is in flight (the last item issued none). Every warp must be done reading K (the dQ product reads all
  // of k_s) before a warp overwrites its rows with dK: stage the results there.
  __syncthreads();
STRATA_UNROLL
  for (int mt = 0; mt < MT; ++mt) {
    const int key_m = key_w + 16 * mt;
    bf16* k_ws = k_s + (warp * kRowsW + 16 * mt) * kLd;
    bf16* v_ws = v_s + (warp * kRowsW + 16 * mt) * kLd;
    store_warp_rows<HS>(dqkv + (int64_t{b} * T + key_m) * R + (NH + g) * HS, R, k_ws, kLd, dk[mt], scale,
                        T - key_m, lane);
    store_warp_rows<HS>(dqkv + (int64_t{b} * T + key_m) * R + (NH + KVH + g) * HS, R, v_ws, kLd, dv[mt], 1.0f,
                        T - key_m, lane);
  }
}

// dqkv[b,t,h*HS + d] = scale * dq_accum[b,t,h,d] (the atomic path's fp32 dQ to bf16): 8 elements per thread.
// grid ceil(B*T*NH*HS/8 / 256), block 256.
template <int HS>
__global__ void __launch_bounds__(256)
    flash_dq_convert_kernel(bf16* dqkv, const float* dq_accum, int64_t rows, int NH, int R, float scale) {
  constexpr int kPieces = HS / 8;
  const int64_t tid = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  const int64_t row = tid / kPieces;  // (b*T + t)*NH + h
  if (row >= rows) return;
  const int col = static_cast<int>(tid % kPieces) * 8;
  const auto lo = cuda::Vec16<float>::load(dq_accum + row * HS + col);
  const auto hi = cuda::Vec16<float>::load(dq_accum + row * HS + col + 4);
  cuda::Vec16<bf16> o;
STRATA_UNROLL
  for (int i = 0; i < 4; ++i) {
    o.v[i] = __float2bfloat16_rn(lo.v[i] * scale);
    o.v[i + 4] = __float2bfloat16_rn(hi.v[i] * scale);
  }
  o.store(dqkv + (row / NH) * R + (row % NH) * HS + col);
}

// dQ of one query tile of head h: grid (NH, B, ceil(T/BQ)), block 128, 16 kMTiles queries per warp (BQ = 64, 16
// queries per warp, at both head sizes; key tiles of BK = 64 at HS 64, 32 at HS 128); query tiles slowest and
// counted down (longest-first, as the forward).
template <int HS>
__global__ void __launch_bounds__(kThreads, min_blocks(QTiles<HS>::kSmemBytes, QTiles<HS>::kMinBlocks))
    flash_backward_dq_kernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* delta,
                             int T, int NH, int KVH, float scale, float scale_log2) {
  using Tiles = QTiles<HS>;
  constexpr int BQ = Tiles::kBlockQ, BK = Tiles::kBlockK, kLd = Tiles::kLd, MT = Tiles::kMTiles;
  static_assert(BQ == 4 * 16 * MT && BK % 16 == 0, "4 warps of 16 MT queries; whole k-steps of keys");
  STRATA_DYNAMIC_SMEM(bf16, smem);
  bf16* q_s = smem;              // (BQ, kLd)
  bf16* do_s = q_s + BQ * kLd;   // (BQ, kLd)
  bf16* kv_s = do_s + BQ * kLd;  // 2 stages of K (BK, kLd) then V (BK, kLd)
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize, lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int gr = lane / 4, tq = lane % 4;
  const int q0 = static_cast<int>(gridDim.z - 1 - blockIdx.z) * BQ;  // the longest rows start first
  const int h = static_cast<int>(blockIdx.x), b = static_cast<int>(blockIdx.y), g = h / (NH / KVH);
  const int R = (NH + 2 * KVH) * HS, OC = NH * HS;
  const bf16* base = qkv + int64_t{b} * T * R;
  const bf16* k = base + (NH + g) * HS;
  const bf16* v = base + (NH + KVH + g) * HS;
  auto stage_tile = [&](int kt) {  // K, V tile kt into stage kt & 1 by cp.async (the caller commits)
    bf16* k_dst = kv_s + (kt & 1) * 2 * BK * kLd;
    copy_rows_async<HS>(k_dst, kLd, k + int64_t{kt * BK} * R, R, BK, T - kt * BK);
    copy_rows_async<HS>(k_dst + BK * kLd, kLd, v + int64_t{kt * BK} * R, R, BK, T - kt * BK);
  };

  copy_rows_async<HS>(q_s, kLd, base + int64_t{q0} * R + h * HS, R, BQ, T - q0);
  copy_rows_async<HS>(do_s, kLd, dout + (int64_t{b} * T + q0) * OC + h * HS, OC, BQ, T - q0);
  stage_tile(0);
  cuda::cp_async_commit();  // Q, dO and K, V tile 0 in one group
  constexpr int kRowsW = 16 * MT;  // query rows per warp
  const int row_w = q0 + warp * kRowsW;
  // Per m-tile mt and row half r (row row_w + 16 mt + 8 r + gr): the last key the row attends to (a row past T:
  // T - 1, any value works), lse (log2 domain) and delta.
  int last[MT][2];
  float lse2[MT][2], dlt[MT][2];
STRATA_UNROLL
  for (int mt = 0; mt < MT; ++mt)
STRATA_UNROLL
    for (int r = 0; r < 2; ++r) {
      const int row = row_w + 16 * mt + 8 * r + gr;
      const int64_t at = (int64_t{b} * NH + h) * T + row;
      last[mt][r] = row < T ? row : T - 1;
      lse2[mt][r] = row < T ? lse[at] * kLog2e : 0.0f;
      dlt[mt][r] = row < T ? delta[at] : 0.0f;
    }
  bf16* q_w = q_s + warp * kRowsW * kLd;
  const bf16* do_w = do_s + warp * kRowsW * kLd;
  float dq[MT][HS / 8][4] = {};
  const int n_tiles = cuda::ceil_div(q0 + BQ < T ? q0 + BQ : T, BK);
  for (int kt = 0; kt < n_tiles; ++kt) {
    const int k0 = kt * BK;
    // Double buffering: one group in flight here (tile kt, issued one iteration ago); wait<0> + the barrier
    // make it visible to all, and the barrier proves every warp is done with tile kt-1, whose stage tile kt+1
    // now overwrites while this tile's products run.
    cuda::cp_async_wait<0>();
    __syncthreads();
    if (kt + 1 < n_tiles) {
      stage_tile(kt + 1);
      cuda::cp_async_commit();
    }
    if (k0 > row_w + kRowsW - 1) continue;  // every key of the tile follows every row of this warp: P = 0
    const bf16* k_s = kv_s + (kt & 1) * 2 * BK * kLd;
    const bf16* v_s = k_s + BK * kLd;

    // S, dP: this warp's kRowsW queries x BK keys; each K, V fragment feeds the MT m-tiles.
    float s[MT][BK / 8][4] = {}, dp[MT][BK / 8][4] = {};
    mma_rows_smem<MT, BK, HS>(s, q_w, kLd, k_s, kLd, lane);
    mma_rows_smem<MT, BK, HS>(dp, do_w, kLd, v_s, kLd, lane);
    const bool masked = k0 + BK - 1 > row_w || k0 + BK > T;
    uint32_t pa[MT][BK / 16][4];
STRATA_UNROLL
    for (int mt = 0; mt < MT; ++mt) {
STRATA_UNROLL
      for (int j = 0; j < BK / 8; ++j)
STRATA_UNROLL
        for (int i = 0; i < 4; ++i) {
          const int key = k0 + 8 * j + 2 * tq + (i & 1);
          float p = exp2f(s[mt][j][i] * scale_log2 - lse2[mt][i / 2]);
          if (masked && key > last[mt][i / 2]) p = 0.0f;
          s[mt][j][i] = p * (dp[mt][j][i] - dlt[mt][i / 2]);  // dS without the scale
        }
      pack_a<BK>(pa[mt], s[mt]);
    }
    mma_rows_regs<MT, HS, BK>(dq, pa, k_s, kLd, lane);  // dQ += dS K
  }
  // No copy in flight; q_w is this warp's own (no other warp reads it).
STRATA_UNROLL
  for (int mt = 0; mt < MT; ++mt) {
    const int row_m = row_w + 16 * mt;
    store_warp_rows<HS>(dqkv + (int64_t{b} * T + row_m) * R + h * HS, R, q_w + 16 * mt * kLd, kLd, dq[mt], scale,
                        T - row_m, lane);
  }
}

// ---- launchers ----------------------------------------------------------------------------------------------------

// Opts a kernel in to more than the default 48 KB of dynamic shared memory.
template <class... Args>
void allow_smem(void (*kernel)(Args...), size_t bytes) {
  if (bytes > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                    cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

void check_args(const char* op, int B, int T, int NH, int KVH, int HS) {
  STRATA_CHECK(B > 0 && T > 0 && NH > 0 && KVH > 0, op, ": B=", B, " T=", T, " NH=", NH, " KVH=", KVH);
  STRATA_CHECK(NH % KVH == 0, op, ": NH=", NH, " is not a multiple of KVH=", KVH);
  STRATA_CHECK(HS == 64 || HS == 128, op, ": head size HS=", HS, " is not supported (64 or 128)");
  STRATA_CHECK(B <= 65535 && NH <= 65535 && T <= 65535 * 64, op, ": B=", B, " NH=", NH, " T=", T,
               " exceed the grid's y/z limit");
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <int HS>
void launch_forward(bf16* out, float* lse, const bf16* qkv, int B, int T, int NH, int KVH, cudaStream_t stream) {
  using Tiles = ForwardTiles<HS>;
  const float scale_log2 = static_cast<float>(kLog2e / std::sqrt(static_cast<double>(HS)));
  allow_smem(flash_forward_kernel<HS>, Tiles::kSmemBytes);
  // Query tiles slowest (z), so the longest tiles of every (head, batch) are dispatched first.
  const dim3 grid(static_cast<unsigned>(NH), static_cast<unsigned>(B),
                  static_cast<unsigned>(cuda::ceil_div(T, Tiles::kBlockQ)));
  cuda::launch(flash_forward_kernel<HS>, grid, dim3(kThreads), Tiles::kSmemBytes, stream, out, lse, qkv, T, NH,
               KVH, scale_log2);
}

// dq_accum null: the deterministic path (dK/dV kernel, then the dQ kernel); else the atomic path (delta zeroes
// dq_accum, the dK/dV kernel adds dQ into it, a last pass converts it into dqkv).
template <int HS>
void launch_backward(bf16* dqkv, float* delta, float* dq_accum, const bf16* dout, const bf16* out, const bf16* qkv,
                     const float* lse, int B, int T, int NH, int KVH, cudaStream_t stream) {
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(HS)));
  const float scale_log2 = static_cast<float>(kLog2e / std::sqrt(static_cast<double>(HS)));
  const int64_t rows = int64_t{B} * T * NH;
  const dim3 rows_grid(static_cast<unsigned>(cuda::ceil_div(rows * (HS / 8), int64_t{256})));
  cuda::launch(flash_delta_kernel<HS>, rows_grid, dim3(256), 0, stream, delta, dq_accum, dout, out, rows, T, NH);

  // Tiles slowest (z) in every grid below: the longest tiles of all heads are dispatched first.
  const dim3 kv_grid(static_cast<unsigned>(KVH), static_cast<unsigned>(B),
                     static_cast<unsigned>(cuda::ceil_div(T, KvTiles<HS, false>::kBlockK)));
  if (dq_accum) {
    using Kv = KvTiles<HS, true>;
    allow_smem(flash_backward_dkdv_kernel<HS, true>, Kv::kSmemBytes);
    cuda::launch(flash_backward_dkdv_kernel<HS, true>, kv_grid, dim3(kThreads), Kv::kSmemBytes, stream, dqkv,
                 dq_accum, dout, qkv, lse, delta, T, NH, KVH, scale, scale_log2);
    cuda::launch(flash_dq_convert_kernel<HS>, rows_grid, dim3(256), 0, stream, dqkv, dq_accum, rows, NH,
                 (NH + 2 * KVH) * HS, scale);
    return;
  }
  using Kv = KvTiles<HS, false>;
  allow_smem(flash_backward_dkdv_kernel<HS, false>, Kv::kSmemBytes);
  cuda::launch(flash_backward_dkdv_kernel<HS, false>, kv_grid, dim3(kThreads), Kv::kSmemBytes, stream, dqkv,
               static_cast<float*>(nullptr), dout, qkv, lse, delta, T, NH, KVH, scale, scale_log2);

  using Q = QTiles<HS>;
  allow_smem(flash_backward_dq_kernel<HS>, Q::kSmemBytes);
  const dim3 q_grid(static_cast<unsigned>(NH), static_cast<unsigned>(B),
                    static_cast<unsigned>(cuda::ceil_div(T, Q::kBlockQ)));
  cuda::launch(flash_backward_dq_kernel<HS>, q_grid, dim3(kThreads), Q::kSmemBytes, stream, dqkv, dout, qkv, lse,
               delta, T, NH, KVH, scale, scale_log2);
}

}  // namespace

template <class Dev, class F>
void flash_attention_forward(const Dev& dev, F* out, Stat<F>* lse, const F* qkv, int B, int T, int NH, int KVH,
                             int HS) {
  static_assert(std::is_same_v<Dev, Cuda> && std::is_same_v<F, bf16>, "the CUDA flash attention is bf16");
  cuda::NvtxRange range(dev.cudnn_attention ? "cudnn attention fwd" : "flash attention fwd", dev.stream);
  STRATA_CHECK(out && lse && qkv, "flash_attention_forward: null pointer");
  check_args("flash_attention_forward", B, T, NH, KVH, HS);
  STRATA_CHECK(aligned16(out) && aligned16(qkv), "flash_attention_forward: out/qkv not 16-byte aligned");
  if (dev.cudnn_attention) {
#if STRATA_CUDNN_ATTENTION
    cuda::cudnn::forward(dev.stream, out, lse, qkv, {B, T, NH, KVH, HS}, dev.deterministic, dev.workspace,
                         static_cast<int64_t>(dev.workspace_bytes));
    return;
#else
    STRATA_FAIL(cuda::kNoCudnn);
#endif
  }
  const auto stream = static_cast<cudaStream_t>(dev.stream);
  if (HS == 64)
    launch_forward<64>(out, lse, qkv, B, T, NH, KVH, stream);
  else
    launch_forward<128>(out, lse, qkv, B, T, NH, KVH, stream);
}

template <class Dev, class F>
void flash_attention_backward(const Dev& dev, F* dqkv, Stat<F>* delta, const F* dout, const F* out, const F* qkv,
                              const Stat<F>* lse, int B, int T, int NH, int KVH, int HS) {
  static_assert(std::is_same_v<Dev, Cuda> && std::is_same_v<F, bf16>, "the CUDA flash attention is bf16");
  cuda::NvtxRange range(dev.cudnn_attention ? "cudnn attention bwd" : "flash attention bwd", dev.stream);
  STRATA_CHECK(dqkv && delta && dout && out && qkv && lse, "flash_attention_backward: null pointer");
  check_args("flash_attention_backward", B, T, NH, KVH, HS);
  STRATA_CHECK(aligned16(dqkv) && aligned16(dout) && aligned16(out) && aligned16(qkv),
               "flash_attention_backward: dqkv/dout/out/qkv not 16-byte aligned");
  if (dev.cudnn_attention) {
#if STRATA_CUDNN_ATTENTION
    cuda::cudnn::backward(dev.stream, dqkv, delta, dout, out, qkv, lse, {B, T, NH, KVH, HS},
                          dev.deterministic, dev.workspace, static_cast<int64_t>(dev.workspace_bytes));
    return;
#else
    STRATA_FAIL(cuda::kNoCudnn);
#endif
  }
  float* dq_accum = nullptr;  // deterministic: no scratch
  if (!dev.deterministic) {
    const size_t need = cuda::flash_attention_backward_workspace_bytes(B, T, NH, HS);
    STRATA_CHECK(dev.workspace && dev.workspace_bytes >= need, "flash_attention_backward: workspace of ",
                 dev.workspace_bytes, " bytes, needs ", need, " (flash_attention_backward_workspace_bytes)");
    STRATA_CHECK(aligned16(dev.workspace), "flash_attention_backward: workspace not 16-byte aligned");
    dq_accum = static_cast<float*>(dev.workspace);
  }
  const auto stream = static_cast<cudaStream_t>(dev.stream);
  if (HS == 64)
    launch_backward<64>(dqkv, delta, dq_accum, dout, out, qkv, lse, B, T, NH, KVH, stream);
  else
    launch_backward<128>(dqkv, delta, dq_accum, dout, out, qkv, lse, B, T, NH, KVH, stream);
}

template void flash_attention_forward<Cuda, bf16>(const Cuda&, bf16*, float*, const bf16*, int, int, int, int, int);
template void flash_attention_backward<Cuda, bf16>(const Cuda&, bf16*, float*, const bf16*, const bf16*,
                                                   const bf16*, const float*, int, int, int, int, int);

}  // namespace strata::ops

#undef STRATA_UNROLL
#undef STRATA_CUDNN_ATTENTION
