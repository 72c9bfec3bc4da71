// kernels/cuda/growth_ops.h: the device work of growth (growth/apply.h): a growth plan's rules executed on
// device buffers (the gather of each target layer through row and column maps, the stage's noise, the bf16
// rounding of the result), and of the growth phases that change how a step trains: G_random's mask on the
// bf16 weights and gradients, and G_learn's depth mixing W' = D W and its gradient dD = <dL/dW', W>. The host
// reference is growth/apply.cpp (GrowthMask, LearnedDepth); the caller is engine/cuda_growth.cpp. Built for
// the GPU (nvcc, strata_cuda) and for the CPU emulation (strata_cuda_emu).
//
// Shapes: L small-model layers, L' grown-model layers, n elements per layer of one per-layer tensor kind (or
// of the range of each layer an entry addresses).
#pragma once

#if defined(STRATA_CUDA_EMU)
#include "kernels/cuda/emu/emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#endif

#include <cstddef>
#include <cstdint>

namespace strata::cuda {

// ---- G_random's mask
// ------------------------------------------------------------------------------------------ One masked slice
// as the kernels see it: in the row-major (rows, cols) matrix at element `base` of a flat buffer, the
// elements whose row is in [row_begin, row_end) or whose column is in [col_begin, col_end) (growth/plan.h's
// MaskSlice). `first` is the number of masked elements of the regions before it: masked element k of the
// region is element first + k of the saved array. Regions must not overlap.
struct MaskRegion {
  int64_t base = 0, rows = 0, cols = 0;
  int64_t row_begin = 0, row_end = 0, col_begin = 0, col_end = 0;
  int64_t first = 0;
};
// The region's masked elements: (row_end - row_begin) whole rows plus col_end - col_begin of every other row.
int64_t mask_region_numel(const MaskRegion& r);

// For every masked element e (k-th overall) of the `count` regions (a device array, `first` ascending and
// total = the regions' masked elements):
//   growth_mask_begin: saved[k] = weights[e]; weights[e] = bf16_rn(c * weights[e])     saved (total) `=`
//   growth_mask_end:   weights[e] = saved[k]; grads[e] = bf16_rn(c * grads[e]) (grads may be null)
// weights, grads: bf16, the flat parameter layout.
void growth_mask_begin(__nv_bfloat16* weights, __nv_bfloat16* saved, const MaskRegion* regions, int count,
                       int64_t total, float c, cudaStream_t stream);
void growth_mask_end(__nv_bfloat16* weights, __nv_bfloat16* grads, const __nv_bfloat16* saved,
                     const MaskRegion* regions, int count, int64_t total, float c, cudaStream_t stream);

// ---- G_learn's depth mixing
// --------------------------------------------------------------------------------- One entry: n elements
// of every layer of one per-layer tensor kind, or of a range of its grown layers (device pointers). By
// default an entry is the kind's whole layers, one after another: src (L, n), master / weights / grads
// (L', n). The strides and the layer range let an entry address a sub-range of each layer and a subset of
// the grown layers, as a rank's ZeRO-1 pieces are (engine/shard_map.h): small layer j's elements are src[j *
// src_stride + i], grown layer l's (layer_begin <= l < layer_end) are master / weights / grads[(l -
// layer_begin) * stride + i], i < n.
struct DepthMixKind {
  const float* src = nullptr;            // fp32: the frozen small-model layers
  float* master = nullptr;               // fp32: the grown model's master weights
  __nv_bfloat16* weights = nullptr;      // bf16: the weights the kernels read
  const __nv_bfloat16* grads = nullptr;  // bf16: the step's gradients
  int64_t n = 0;
  int64_t src_stride = 0;  // elements from one small layer to the next in src; 0: n
  int64_t stride = 0;      // elements from one grown layer to the next in master, weights, grads; 0: n
  int layer_begin = 0;     // the grown layers covered, [layer_begin, layer_end); layer_end -1: L'
  int layer_end = -1;
};
constexpr int kDepthMixMaxKinds = 32;  // entries per call (callers with more call again)

// For every entry k, grown layer l it covers and element i < n:
//   master[l, i] = sum_{j < L, D[k, l, j] != 0} D[k, l, j] * src[j, i]   (j ascending, each product and sum
//                                                                         rounded: LearnedDepth::materialise)
//   weights[l, i] = bf16_rn(master[l, i])                                 master, weights `=`
// Either of master and weights may be null (not written); nothing else is written. D: device (count, L', L)
// fp32, one matrix per entry.
void depth_mix_materialise(const DepthMixKind* kinds, int count, const float* D, int L2, int L,
                           cudaStream_t stream);

// dots[(k L' + l) L + j] = sum_i grads[l, i] * src[j, i] for every entry k and grown layer l it covers (0 for
// the layers it does not): the entry's share of the mixing gradient dL/dD[l, j] (LearnedDepth::dots). dots:
// device (count, L', L) fp64 `=`. Deterministic: a fixed grid, each thread's elements summed in order in
// fp32, each block's in a fixed tree, the blocks' partials (workspace) in order in fp64.
void depth_mix_dots(const DepthMixKind* kinds, int count, int L2, int L, float* workspace,
                    size_t workspace_bytes, double* dots, cudaStream_t stream);
size_t depth_mix_dots_workspace_bytes(int count, int L2, int L);

// ---- Growth by a plan's rules (growth/plan.h, host reference growth/apply.cpp's run_plan)
// ------------------------------------------------------------------------------------------------------
// One target layer of one tensor, rows x cols (1-D tensors: cols 1, col_src null):
//   dst[r, c] = src[row_src[r], col_src[c]] * row_scale[r] * col_scale[c]    (each product rounded, in
//                                                                             that order; a null scale is 1)
//   dst[r, c] = fresh[r, c] (or 0 when fresh is null)                        where row_src[r] or col_src[c]
//                                                                             is -1 (a new element)
// `moments`: an AdamW moment mapped with the weights: copies without factors, new elements 0. src is the
// source layer, row-major with src_cols columns; row_src, row_scale (rows), col_src, col_scale (cols) and
// fresh (rows x cols) are device arrays. dst `=`.
struct GrowthGather {
  float* dst = nullptr;
  const float* src = nullptr;
  int64_t src_cols = 1;
  int64_t rows = 0, cols = 1;
  const int32_t* row_src = nullptr;
  const float* row_scale = nullptr;
  const int32_t* col_src = nullptr;
  const float* col_scale = nullptr;
  const float* fresh = nullptr;
  bool moments = false;
};
void growth_gather(const GrowthGather& g, cudaStream_t stream);

// The stage's noise: w[i] = fp32((1 - a) w[i] + a e[i]) computed in fp64 (keep = 1 - a from the host; each
// product and the sum rounded, no FMA), as growth::apply_params does. w `=` (n), e (n).
void growth_noise(float* w, const float* e, int64_t n, double keep, double a, cudaStream_t stream);

// out[i] = bf16_rn(in[i]) for i < n: the bf16 weights of grown fp32 master weights. out `=`.
void round_to_bf16(__nv_bfloat16* out, const float* in, int64_t n, cudaStream_t stream);

}  // namespace strata::cuda
