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
//
// The products run on the matrix unit (mma_bf16_16816: D 16x8 fp32 += A 16x16 bf16 * B 16x8 bf16), one warp per
// 16 rows. Operand tiles are staged in shared memory with rows padded by 8 bf16 (16 bytes): a fragment register
// is 2 consecutive bf16 at row g, column 2t (g = lane/4, t = lane%4), and with a row stride of HS/2 + 4 words the
// 32 lanes of a fragment load hit 32 different banks. The B operand of the second product of each pass reads
// along the other axis (P V needs V[key][dim] with two consecutive keys per register), so those tiles are also
// stored transposed (Vt, Qt, dOt, Kt); the transposed copies are written with consecutive rows on consecutive
// lanes, which keeps their 2-byte stores conflict-free. The accumulator of one product is the A operand of the
// next with no shared-memory trip: the D fragments of n-tiles 2k and 2k+1 are exactly the A fragment of
// k-step k (the FlashAttention-2 register layout), rounded to bf16.
//
// Kernels, 128 threads (4 warps) each. Without cp.async/TMA (not in the portable subset) a block cannot overlap
// its own global loads with its math; 2-3 resident blocks per SM do that instead, which is what the register
// budgets below (__launch_bounds__ min-blocks 3, or 2 for dK/dV at HS 128) and shared-memory sizes allow.
//   forward: block = (64-query tile, head, batch), the tiles with the most keys launched first. Loop over 64-key
//     tiles up to the diagonal: S = Q K^T, online softmax in the log2 domain (running max m and sum l per row;
//     exp2f), O = diag(alpha) O + P V; only the diagonal tile (and the one holding T) is masked. Q fragments
//     are re-read from smem per tile (registers for 3 blocks/SM). Smem Q, K (64 x HS+8), Vt (HS x 72).
//   backward, deterministic (no atomics): (1) delta = rowsum(dout * out), HS/8 lanes per row; (2) block =
//     (64-key tile, KV head, batch), 16 keys per warp: dK, dV in registers while looping over the query heads of
//     the group and the query tiles at or after the diagonal: S^T = K Q^T, P^T = exp2(S^T - lse),
//     dP^T = V dO^T, dS^T = P^T (dP^T - delta), dV += P^T dO, dK += dS^T Q; each element is written once, so
//     the group's sum has a fixed order; (3) block = (64-query tile, head, batch): dQ in registers over the key
//     tiles, recomputing S and dP. At HS 128 the inner tiles are 32 wide: the fp32 dK+dV accumulators alone
//     take 128 registers. 7 products per (query, key) pair instead of FlashAttention-2's 5 (dQ by atomics):
//     the price of bitwise-reproducible gradients. ops::Cuda::deterministic = false takes the same path (an
//     atomic-dQ variant is not written).
//   Resources (ptxas, sm_90 / sm_80; no spills), smem per block:
//     HS 64:  forward 127/119 regs, 27.0 KB; dK/dV 168/168, 54.5 KB; dQ 158/150, 45.0 KB; delta 26.
//     HS 128: forward 168/162 regs, 52.0 KB; dK/dV 239/232, 71.3 KB; dQ 166/158, 61.0 KB (> 48 KB: opted in).
//
// Work (causal half counted): forward 2 products = 2 HS T^2 flops per (b, h); backward 7 products = 3.5 HS T^2
// (FlashAttention's convention counts 2.5x the forward). B=8, T=2048, NH=16, HS=128: forward 137 GFLOP, backward
// 241 GFLOP executed. Napkin bound on an H100 SXM: every mma (2048 FMA) reads its B fragment from smem, 2
// conflict-free 128-byte wavefronts, and an SM reads 128 B/clk, so smem caps the products at ~1 mma per 2 clk per
// SM (~480 TFLOP/s at 1.83 GHz, ~50% of the 989 TFLOP/s dense bf16 peak, which needs wgmma; mma.sync itself tops
// out near ~65% of it). The exp2f per score (MUFU), barriers and unhidden global-load latency come on top:
// expected ~200-300 TFLOP/s forward (20-30% of peak) and ~150-250 TFLOP/s of executed backward work. An estimate
// from the instruction mix, not a measurement: the `gpu` test checks correctness only; the benchmark should
// confirm it. The next steps would be cp.async double buffering (sm_80+) and a wgmma/TMA path for sm_90.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/ops.h"

// Full unrolling of the fragment loops (their arrays then live in registers); the host compiler of the CPU
// emulation does not know the pragma.
#if defined(STRATA_CUDA_EMU)
#define STRATA_UNROLL
#else
#define STRATA_UNROLL _Pragma("unroll")
#endif

namespace strata::ops {

using cuda::bf16;

namespace {

using cuda::kWarpSize;
using cuda::mma_bf16_16816;
using cuda::pack_bf16x2;

constexpr int kThreads = 128;  // 4 warps of 16 rows: a 64-row tile per block
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Tile sizes. kLd: row stride of a row-major smem tile (HS + 8); kLdT: row stride of a transposed one.
template <int HS>
struct ForwardTiles {
  static constexpr int kBlockQ = 64, kBlockK = 64;
  static constexpr int kLd = HS + 8, kLdT = kBlockK + 8;
  static constexpr size_t kSmemBytes = size_t(kBlockQ * kLd + kBlockK * kLd + HS * kLdT) * sizeof(bf16);
};
template <int HS>
struct KvTiles {  // backward dK/dV: 16 keys per warp, query tiles of kBlockQ
  static constexpr int kBlockK = 64, kBlockQ = HS == 128 ? 32 : 64;
  static constexpr int kLd = HS + 8, kLdT = kBlockQ + 8;
  static constexpr size_t kSmemBytes =
      size_t(2 * kBlockK * kLd + 2 * kBlockQ * kLd + 2 * HS * kLdT) * sizeof(bf16) + 2 * kBlockQ * sizeof(float);
};
template <int HS>
struct QTiles {  // backward dQ: 16 queries per warp, key tiles of kBlockK
  static constexpr int kBlockQ = 64, kBlockK = HS == 128 ? 32 : 64;
  static constexpr int kLd = HS + 8, kLdT = kBlockK + 8;
  static constexpr size_t kSmemBytes = size_t(2 * kBlockQ * kLd + 2 * kBlockK * kLd + HS * kLdT) * sizeof(bf16);
};
static_assert(ForwardTiles<64>::kBlockQ == 4 * 16 && QTiles<128>::kBlockQ == 4 * 16 && KvTiles<64>::kBlockK == 4 * 16,
              "a warp owns 16 rows of the block's tile");
static_assert(ForwardTiles<128>::kSmemBytes <= 100 * 1024 && KvTiles<128>::kSmemBytes <= 100 * 1024 &&
                  QTiles<128>::kSmemBytes <= 100 * 1024,
              "at least two blocks per SM on sm_80 (164 KB) and sm_90 (227 KB)");

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

// ---- shared-memory staging ------------------------------------------------------------------------------------

// Rows [0, rows) x [0, HS) of a bf16 matrix with row stride src_ld into smem (row stride ld); rows at and past
// `valid` are zeros. Consecutive threads copy consecutive 16-byte pieces of a row (coalesced).
template <int HS>
__device__ __forceinline__ void load_rows(bf16* dst, int ld, const bf16* src, int64_t src_ld, int rows, int valid) {
  constexpr int kPieces = HS / 8;
  for (int c = static_cast<int>(threadIdx.x); c < rows * kPieces; c += kThreads) {
    const int r = c / kPieces, col = (c % kPieces) * 8;
    store_bits(dst + r * ld + col, r < valid ? load_bits<int4>(src + r * src_ld + col) : make_int4(0, 0, 0, 0));
  }
}

// The same copy stored transposed, dst_t[d * ldt + r] = src[r][d], and also row-major into dst (when non-null).
// Consecutive threads take consecutive rows, so the 2-byte transposed stores of a warp fall in distinct banks.
template <int HS>
__device__ __forceinline__ void load_rows_transposed(bf16* dst_t, int ldt, bf16* dst, int ld, const bf16* src,
                                                     int64_t src_ld, int rows, int valid) {
  constexpr int kPieces = HS / 8;
  for (int c = static_cast<int>(threadIdx.x); c < rows * kPieces; c += kThreads) {
    const int r = c % rows, col = (c / rows) * 8;
    const int4 v = r < valid ? load_bits<int4>(src + r * src_ld + col) : make_int4(0, 0, 0, 0);
    if (dst) store_bits(dst + r * ld + col, v);
    const uint32_t w[4] = {static_cast<uint32_t>(v.x), static_cast<uint32_t>(v.y), static_cast<uint32_t>(v.z),
                           static_cast<uint32_t>(v.w)};
STRATA_UNROLL
    for (int i = 0; i < 4; ++i) {
      dst_t[(col + 2 * i) * ldt + r] = __ushort_as_bfloat16(static_cast<unsigned short>(w[i] & 0xffffu));
      dst_t[(col + 2 * i + 1) * ldt + r] = __ushort_as_bfloat16(static_cast<unsigned short>(w[i] >> 16));
    }
  }
}

// ---- fragments (layouts: kernels/cuda/common.cuh, mma_bf16_16816) ---------------------------------------------

__device__ __forceinline__ uint32_t ld32(const bf16* p) { return load_bits<uint32_t>(p); }

// A (16x16): rows [0,16) and columns [k0, k0+16) of a row-major smem tile m (row stride ld).
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const bf16* m, int ld, int k0, int gr, int tq) {
  const bf16* p = m + gr * ld + k0 + 2 * tq;
  a[0] = ld32(p);
  a[1] = ld32(p + 8 * ld);
  a[2] = ld32(p + 8);
  a[3] = ld32(p + 8 * ld + 8);
}

// B (16x8) with B[k][n] = m[n0 + n][k0 + k]: the rows of the smem tile m are B's columns, so each register is
// two consecutive elements of one row.
__device__ __forceinline__ void load_b(uint32_t (&b)[2], const bf16* m, int ld, int n0, int k0, int gr, int tq) {
  const bf16* p = m + (n0 + gr) * ld + k0 + 2 * tq;
  b[0] = ld32(p);
  b[1] = ld32(p + 8);
}

// The D fragments of n-tiles 2k, 2k+1 (16 columns) as the A fragment of k-step k of the next product.
__device__ __forceinline__ void accum_as_a(uint32_t (&a)[4], const float (&d0)[4], const float (&d1)[4]) {
  a[0] = pack_bf16x2(d0[0], d0[1]);
  a[1] = pack_bf16x2(d0[2], d0[3]);
  a[2] = pack_bf16x2(d1[0], d1[1]);
  a[3] = pack_bf16x2(d1[2], d1[3]);
}

// D (16 x N) += A (16 x K, row-major smem rows of this warp) * M^T, M an (N, K) row-major smem tile.
template <int N, int K>
__device__ __forceinline__ void mma_a_smem(float (&d)[N / 8][4], const bf16* a_rows, int lda, const bf16* m, int ldm,
                                           int gr, int tq) {
STRATA_UNROLL
  for (int kk = 0; kk < K / 16; ++kk) {
    uint32_t a[4];
    load_a(a, a_rows, lda, 16 * kk, gr, tq);
STRATA_UNROLL
    for (int j = 0; j < N / 8; ++j) {
      uint32_t b[2];
      load_b(b, m, ldm, 8 * j, 16 * kk, gr, tq);
      mma_bf16_16816(d[j], a, b);
    }
  }
}

// D (16 x N) += P (16 x K, fp32 accumulators of a previous product, rounded to bf16) * M^T, M an (N, K)
// row-major smem tile (a transposed copy).
template <int N, int K>
__device__ __forceinline__ void mma_a_regs(float (&d)[N / 8][4], const float (&p)[K / 8][4], const bf16* m, int ldm,
                                           int gr, int tq) {
STRATA_UNROLL
  for (int kk = 0; kk < K / 16; ++kk) {
    uint32_t a[4];
    accum_as_a(a, p[2 * kk], p[2 * kk + 1]);
STRATA_UNROLL
    for (int n = 0; n < N / 8; ++n) {
      uint32_t b[2];
      load_b(b, m, ldm, 8 * n, 16 * kk, gr, tq);
      mma_bf16_16816(d[n], a, b);
    }
  }
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

// grid (ceil(T/64), NH, B), block 128. scale_log2 = scale * log2(e).
template <int HS>
__global__ void __launch_bounds__(kThreads, 3)
    flash_forward_kernel(bf16* out, float* lse, const bf16* qkv, int T, int NH, int KVH, float scale_log2) {
  using Tiles = ForwardTiles<HS>;
  constexpr int BQ = Tiles::kBlockQ, BK = Tiles::kBlockK, kLd = Tiles::kLd, kLdT = Tiles::kLdT;
  STRATA_DYNAMIC_SMEM(bf16, smem);
  bf16* q_s = smem;              // (BQ, kLd)
  bf16* k_s = q_s + BQ * kLd;    // (BK, kLd)
  bf16* vt_s = k_s + BK * kLd;   // (HS, kLdT): V transposed
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize, lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int gr = lane / 4, tq = lane % 4;
  const int q0 = static_cast<int>(gridDim.x - 1 - blockIdx.x) * BQ;  // the longest rows start first
  const int h = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z), g = h / (NH / KVH);
  const int R = (NH + 2 * KVH) * HS;
  const bf16* base = qkv + int64_t{b} * T * R;
  const bf16* k = base + (NH + g) * HS;
  const bf16* v = base + (NH + KVH + g) * HS;

  load_rows<HS>(q_s, kLd, base + int64_t{q0} * R + h * HS, R, BQ, T - q0);
  __syncthreads();
  bf16* q_w = q_s + warp * 16 * kLd;  // this warp's 16 query rows

  const int row_w = q0 + warp * 16;
  const int rows[2] = {row_w + gr, row_w + gr + 8};  // the rows of accumulator entries [0,1] and [2,3]
  float o[HS / 8][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // l: this thread's partial sums (quad-reduced at the end)
  const int n_tiles = cuda::ceil_div(q0 + BQ < T ? q0 + BQ : T, BK);
  for (int kt = 0; kt < n_tiles; ++kt) {
    const int k0 = kt * BK;
    __syncthreads();  // every warp is done with the previous K, V tile
    load_rows<HS>(k_s, kLd, k + int64_t{k0} * R, R, BK, T - k0);
    load_rows_transposed<HS>(vt_s, kLdT, nullptr, 0, v + int64_t{k0} * R, R, BK, T - k0);
    __syncthreads();

    // S = Q K^T. The Q fragments are re-read from smem per tile rather than held in registers (32 more at
    // HS 128): that keeps the kernel near 128 registers, 3 blocks per SM.
    float s[BK / 8][4] = {};
    mma_a_smem<BK, HS>(s, q_w, kLd, k_s, kLd, gr, tq);
    // Only the diagonal tile and the tile holding T need the mask (keys after the row, keys past T).
    const bool masked = k0 + BK - 1 > row_w || k0 + BK > T;
    float mx[2] = {-INFINITY, -INFINITY};
STRATA_UNROLL
    for (int j = 0; j < BK / 8; ++j)
STRATA_UNROLL
      for (int i = 0; i < 4; ++i) {
        const int key = k0 + 8 * j + 2 * tq + (i & 1);
        float x = s[j][i] * scale_log2;
        if (masked && (key > rows[i / 2] || key >= T)) x = -INFINITY;
        s[j][i] = x;
        mx[i / 2] = fmaxf(mx[i / 2], x);
      }
    float m_use[2], alpha[2];
STRATA_UNROLL
    for (int r = 0; r < 2; ++r) {
      const float m_new = fmaxf(m[r], quad_max(mx[r]));
      m_use[r] = m_new == -INFINITY ? 0.0f : m_new;  // a row with no key yet: keep exp2f(-inf - m) = 0, not NaN
      alpha[r] = exp2f(m[r] - m_use[r]);
      m[r] = m_new;
    }
    float sum[2] = {0.0f, 0.0f};
STRATA_UNROLL
    for (int j = 0; j < BK / 8; ++j)
STRATA_UNROLL
      for (int i = 0; i < 4; ++i) {
        s[j][i] = exp2f(s[j][i] - m_use[i / 2]);
        sum[i / 2] += s[j][i];
      }
STRATA_UNROLL
    for (int r = 0; r < 2; ++r) l[r] = l[r] * alpha[r] + sum[r];
STRATA_UNROLL
    for (int n = 0; n < HS / 8; ++n) {
      o[n][0] *= alpha[0], o[n][1] *= alpha[0];
      o[n][2] *= alpha[1], o[n][3] *= alpha[1];
    }
    mma_a_regs<HS, BK>(o, s, vt_s, kLdT, gr, tq);
  }

  float inv[2];
STRATA_UNROLL
  for (int r = 0; r < 2; ++r) {
    l[r] = quad_sum(l[r]);
    inv[r] = 1.0f / l[r];
    if (tq == 0 && rows[r] < T) lse[(int64_t{b} * NH + h) * T + rows[r]] = m[r] * kLn2 + logf(l[r]);
  }
  // Normalise per row half: fold 1/l into the accumulator, then stage through this warp's Q rows.
STRATA_UNROLL
  for (int n = 0; n < HS / 8; ++n) {
    o[n][0] *= inv[0], o[n][1] *= inv[0];
    o[n][2] *= inv[1], o[n][3] *= inv[1];
  }
  const int64_t OC = int64_t{NH} * HS;
  store_warp_rows<HS>(out + (int64_t{b} * T + row_w) * OC + h * HS, OC, q_w, kLd, o, 1.0f, T - row_w, lane);
}

// ---- backward -------------------------------------------------------------------------------------------------------

// delta[b,h,t] = dout[b,t,h,:] . out[b,t,h,:]: HS/8 lanes per (b,t,h) row, one 16-byte piece each.
// grid ceil(B*T*NH*HS/8 / 256), block 256.
template <int HS>
__global__ void __launch_bounds__(256)
    flash_delta_kernel(float* delta, const bf16* dout, const bf16* out, int64_t rows, int T, int NH) {
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
  }
STRATA_UNROLL
  for (int off = kLanes / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(cuda::kFullMask, acc, off);
  if (row < rows && piece == 0) {
    const int64_t bt = row / NH;
    const int64_t h = row % NH, bb = bt / T, t = bt % T;
    delta[(bb * NH + h) * T + t] = acc;
  }
}

// dK, dV of one 64-key tile of KV head g: grid (ceil(T/64), KVH, B), block 128 (16 keys per warp).
template <int HS>
__global__ void __launch_bounds__(kThreads, HS == 128 ? 2 : 3)
    flash_backward_dkdv_kernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* delta,
                               int T, int NH, int KVH, float scale, float scale_log2) {
  using Tiles = KvTiles<HS>;
  constexpr int BK = Tiles::kBlockK, BQ = Tiles::kBlockQ, kLd = Tiles::kLd, kLdT = Tiles::kLdT;
  STRATA_DYNAMIC_SMEM(bf16, smem);
  bf16* k_s = smem;               // (BK, kLd)
  bf16* v_s = k_s + BK * kLd;     // (BK, kLd)
  bf16* q_s = v_s + BK * kLd;     // (BQ, kLd)
  bf16* do_s = q_s + BQ * kLd;    // (BQ, kLd)
  bf16* qt_s = do_s + BQ * kLd;   // (HS, kLdT): Q transposed
  bf16* dot_s = qt_s + HS * kLdT; // (HS, kLdT): dO transposed
  float* lse_s = reinterpret_cast<float*>(dot_s + HS * kLdT);  // (BQ) lse * log2(e)
  float* delta_s = lse_s + BQ;                                 // (BQ)
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / kWarpSize, lane = tid % kWarpSize, gr = lane / 4, tq = lane % 4;
  const int k0 = static_cast<int>(blockIdx.x) * BK;
  const int g = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z), group = NH / KVH;
  const int R = (NH + 2 * KVH) * HS, OC = NH * HS;
  const bf16* base = qkv + int64_t{b} * T * R;

  load_rows<HS>(k_s, kLd, base + int64_t{k0} * R + (NH + g) * HS, R, BK, T - k0);
  load_rows<HS>(v_s, kLd, base + int64_t{k0} * R + (NH + KVH + g) * HS, R, BK, T - k0);
  const int key_w = k0 + warp * 16;  // this warp's first key
  const int keys[2] = {key_w + gr, key_w + gr + 8};
  bf16* k_w = k_s + warp * 16 * kLd;
  bf16* v_w = v_s + warp * 16 * kLd;
  float dk[HS / 8][4] = {}, dv[HS / 8][4] = {};
  for (int hi = 0; hi < group; ++hi) {
    const int h = g * group + hi;
    const bf16* q = base + h * HS;
    const bf16* dy = dout + int64_t{b} * T * OC + h * HS;
    const float* lse_h = lse + (int64_t{b} * NH + h) * T;
    const float* delta_h = delta + (int64_t{b} * NH + h) * T;
    for (int qs = k0 / BQ * BQ; qs < T; qs += BQ) {  // query tiles holding a query t >= k0
      __syncthreads();  // every warp is done with the previous query tile (and K, V are loaded)
      load_rows_transposed<HS>(qt_s, kLdT, q_s, kLd, q + int64_t{qs} * R, R, BQ, T - qs);
      load_rows_transposed<HS>(dot_s, kLdT, do_s, kLd, dy + int64_t{qs} * OC, OC, BQ, T - qs);
      if (tid < BQ) {
        const int t = qs + tid;
        lse_s[tid] = t < T ? lse_h[t] * kLog2e : 0.0f;
        delta_s[tid] = t < T ? delta_h[t] : 0.0f;
      }
      __syncthreads();
      if (qs + BQ - 1 < key_w) continue;  // every query of the tile precedes every key of this warp: P = 0

      float st[BQ / 8][4] = {}, dpt[BQ / 8][4] = {};  // S^T, dP^T: this warp's 16 keys x BQ queries
      mma_a_smem<BQ, HS>(st, k_w, kLd, q_s, kLd, gr, tq);
      mma_a_smem<BQ, HS>(dpt, v_w, kLd, do_s, kLd, gr, tq);
      const bool masked = qs < key_w + 15 || qs + BQ > T;
STRATA_UNROLL
      for (int j = 0; j < BQ / 8; ++j)
STRATA_UNROLL
        for (int i = 0; i < 4; ++i) {
          const int ql = 8 * j + 2 * tq + (i & 1);
          float p = exp2f(st[j][i] * scale_log2 - lse_s[ql]);
          if (masked && (qs + ql < keys[i / 2] || qs + ql >= T)) p = 0.0f;
          st[j][i] = p;
          dpt[j][i] = p * (dpt[j][i] - delta_s[ql]);  // dS^T without the scale (applied once at the end)
        }
      mma_a_regs<HS, BQ>(dv, st, dot_s, kLdT, gr, tq);
      mma_a_regs<HS, BQ>(dk, dpt, qt_s, kLdT, gr, tq);
    }
  }
  // The smem K, V rows of a warp are read by that warp only: stage the results there.
  store_warp_rows<HS>(dqkv + (int64_t{b} * T + key_w) * R + (NH + g) * HS, R, k_w, kLd, dk, scale, T - key_w, lane);
  store_warp_rows<HS>(dqkv + (int64_t{b} * T + key_w) * R + (NH + KVH + g) * HS, R, v_w, kLd, dv, 1.0f, T - key_w,
                      lane);
}

// dQ of one 64-query tile of head h: grid (ceil(T/64), NH, B), block 128 (16 queries per warp).
template <int HS>
__global__ void __launch_bounds__(kThreads, 3)
    flash_backward_dq_kernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* delta,
                             int T, int NH, int KVH, float scale, float scale_log2) {
  using Tiles = QTiles<HS>;
  constexpr int BQ = Tiles::kBlockQ, BK = Tiles::kBlockK, kLd = Tiles::kLd, kLdT = Tiles::kLdT;
  STRATA_DYNAMIC_SMEM(bf16, smem);
  bf16* q_s = smem;             // (BQ, kLd)
  bf16* do_s = q_s + BQ * kLd;  // (BQ, kLd)
  bf16* k_s = do_s + BQ * kLd;  // (BK, kLd)
  bf16* v_s = k_s + BK * kLd;   // (BK, kLd)
  bf16* kt_s = v_s + BK * kLd;  // (HS, kLdT): K transposed
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize, lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int gr = lane / 4, tq = lane % 4;
  const int q0 = static_cast<int>(gridDim.x - 1 - blockIdx.x) * BQ;  // the longest rows start first
  const int h = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z), g = h / (NH / KVH);
  const int R = (NH + 2 * KVH) * HS, OC = NH * HS;
  const bf16* base = qkv + int64_t{b} * T * R;
  const bf16* k = base + (NH + g) * HS;
  const bf16* v = base + (NH + KVH + g) * HS;

  load_rows<HS>(q_s, kLd, base + int64_t{q0} * R + h * HS, R, BQ, T - q0);
  load_rows<HS>(do_s, kLd, dout + (int64_t{b} * T + q0) * OC + h * HS, OC, BQ, T - q0);
  const int row_w = q0 + warp * 16;
  const int rows[2] = {row_w + gr, row_w + gr + 8};
  float lse2[2], dlt[2];
STRATA_UNROLL
  for (int r = 0; r < 2; ++r) {
    const int64_t at = (int64_t{b} * NH + h) * T + rows[r];
    lse2[r] = rows[r] < T ? lse[at] * kLog2e : 0.0f;
    dlt[r] = rows[r] < T ? delta[at] : 0.0f;
  }
  bf16* q_w = q_s + warp * 16 * kLd;
  const bf16* do_w = do_s + warp * 16 * kLd;
  float dq[HS / 8][4] = {};
  const int n_tiles = cuda::ceil_div(q0 + BQ < T ? q0 + BQ : T, BK);
  for (int kt = 0; kt < n_tiles; ++kt) {
    const int k0 = kt * BK;
    __syncthreads();  // every warp is done with the previous K, V tile (and Q, dO are loaded)
    load_rows_transposed<HS>(kt_s, kLdT, k_s, kLd, k + int64_t{k0} * R, R, BK, T - k0);
    load_rows<HS>(v_s, kLd, v + int64_t{k0} * R, R, BK, T - k0);
    __syncthreads();
    if (k0 > row_w + 15) continue;  // every key of the tile follows every row of this warp: P = 0

    float s[BK / 8][4] = {}, dp[BK / 8][4] = {};  // S, dP: this warp's 16 queries x BK keys
    mma_a_smem<BK, HS>(s, q_w, kLd, k_s, kLd, gr, tq);
    mma_a_smem<BK, HS>(dp, do_w, kLd, v_s, kLd, gr, tq);
    const bool masked = k0 + BK - 1 > row_w || k0 + BK > T;
STRATA_UNROLL
    for (int j = 0; j < BK / 8; ++j)
STRATA_UNROLL
      for (int i = 0; i < 4; ++i) {
        const int key = k0 + 8 * j + 2 * tq + (i & 1);
        float p = exp2f(s[j][i] * scale_log2 - lse2[i / 2]);
        if (masked && (key > rows[i / 2] || key >= T)) p = 0.0f;
        s[j][i] = p * (dp[j][i] - dlt[i / 2]);  // dS without the scale
      }
    mma_a_regs<HS, BK>(dq, s, kt_s, kLdT, gr, tq);
  }
  store_warp_rows<HS>(dqkv + (int64_t{b} * T + row_w) * R + h * HS, R, q_w, kLd, dq, scale, T - row_w, lane);
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
  STRATA_CHECK(B <= 65535 && NH <= 65535, op, ": B=", B, " NH=", NH, " exceed the grid's y/z limit");
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <int HS>
void launch_forward(bf16* out, float* lse, const bf16* qkv, int B, int T, int NH, int KVH, cudaStream_t stream) {
  using Tiles = ForwardTiles<HS>;
  const float scale_log2 = static_cast<float>(kLog2e / std::sqrt(static_cast<double>(HS)));
  allow_smem(flash_forward_kernel<HS>, Tiles::kSmemBytes);
  const dim3 grid(static_cast<unsigned>(cuda::ceil_div(T, Tiles::kBlockQ)), static_cast<unsigned>(NH),
                  static_cast<unsigned>(B));
  cuda::launch(flash_forward_kernel<HS>, grid, dim3(kThreads), Tiles::kSmemBytes, stream, out, lse, qkv, T, NH,
               KVH, scale_log2);
}

template <int HS>
void launch_backward(bf16* dqkv, float* delta, const bf16* dout, const bf16* out, const bf16* qkv, const float* lse,
                     int B, int T, int NH, int KVH, cudaStream_t stream) {
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(HS)));
  const float scale_log2 = static_cast<float>(kLog2e / std::sqrt(static_cast<double>(HS)));
  const int64_t rows = int64_t{B} * T * NH;
  const int64_t delta_threads = rows * (HS / 8);
  cuda::launch(flash_delta_kernel<HS>, dim3(static_cast<unsigned>(cuda::ceil_div(delta_threads, int64_t{256}))),
               dim3(256), 0, stream, delta, dout, out, rows, T, NH);

  using Kv = KvTiles<HS>;
  allow_smem(flash_backward_dkdv_kernel<HS>, Kv::kSmemBytes);
  const dim3 kv_grid(static_cast<unsigned>(cuda::ceil_div(T, Kv::kBlockK)), static_cast<unsigned>(KVH),
                     static_cast<unsigned>(B));
  cuda::launch(flash_backward_dkdv_kernel<HS>, kv_grid, dim3(kThreads), Kv::kSmemBytes, stream, dqkv, dout, qkv, lse,
               delta, T, NH, KVH, scale, scale_log2);

  using Q = QTiles<HS>;
  allow_smem(flash_backward_dq_kernel<HS>, Q::kSmemBytes);
  const dim3 q_grid(static_cast<unsigned>(cuda::ceil_div(T, Q::kBlockQ)), static_cast<unsigned>(NH),
                    static_cast<unsigned>(B));
  cuda::launch(flash_backward_dq_kernel<HS>, q_grid, dim3(kThreads), Q::kSmemBytes, stream, dqkv, dout, qkv, lse,
               delta, T, NH, KVH, scale, scale_log2);
}

}  // namespace

template <class Dev, class F>
void flash_attention_forward(const Dev& dev, F* out, Stat<F>* lse, const F* qkv, int B, int T, int NH, int KVH,
                             int HS) {
  static_assert(std::is_same_v<Dev, Cuda> && std::is_same_v<F, bf16>, "the CUDA flash attention is bf16");
  STRATA_CHECK(out && lse && qkv, "flash_attention_forward: null pointer");
  check_args("flash_attention_forward", B, T, NH, KVH, HS);
  STRATA_CHECK(aligned16(out) && aligned16(qkv), "flash_attention_forward: out/qkv not 16-byte aligned");
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
  STRATA_CHECK(dqkv && delta && dout && out && qkv && lse, "flash_attention_backward: null pointer");
  check_args("flash_attention_backward", B, T, NH, KVH, HS);
  STRATA_CHECK(aligned16(dqkv) && aligned16(dout) && aligned16(out) && aligned16(qkv),
               "flash_attention_backward: dqkv/dout/out/qkv not 16-byte aligned");
  const auto stream = static_cast<cudaStream_t>(dev.stream);
  if (HS == 64)
    launch_backward<64>(dqkv, delta, dout, out, qkv, lse, B, T, NH, KVH, stream);
  else
    launch_backward<128>(dqkv, delta, dout, out, qkv, lse, B, T, NH, KVH, stream);
}

template void flash_attention_forward<Cuda, bf16>(const Cuda&, bf16*, float*, const bf16*, int, int, int, int, int);
template void flash_attention_backward<Cuda, bf16>(const Cuda&, bf16*, float*, const bf16*, const bf16*,
                                                   const bf16*, const float*, int, int, int, int, int);

}  // namespace strata::ops

#undef STRATA_UNROLL
