// bench/kernel_bench.cu: every CUDA op of kernels/cuda/ at training shapes, against ceilings measured in the same
// run: the device-to-device copy bandwidth (bytes read + written) for the memory-bound ops, and cuBLASLt's bf16
// GEMM rate for the matrix ops and attention. Prints one table (op, shape, median time, GB/s or TFLOP/s, % of
// its ceiling) and, with --json FILE, the same rows as JSON for bench/device_kernels_check.sh.
//
// Timing: CUDA events around each launch, 5 warm-up launches, the median of --reps timed launches. Memory-bound
// ops use tensors far larger than the 50-60 MB L2 so repeated launches do not measure the cache. Inputs are
// seeded random values, never zeros.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "engine/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/matmul_tuning.h"
#include "kernels/cuda/workspace.h"
#include "kernels/ops.h"

namespace strata::cuda {
namespace {

__global__ void fill_kernel(bf16* p, int64_t n, uint32_t seed, float scale) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    p[i] = __float2bfloat16_rn(scale * (static_cast<float>(hash_u32(seed, static_cast<uint32_t>(i)) >> 8) *
                                            (2.0f / 16777216.0f) - 1.0f));
}
__global__ void fill_f32_kernel(float* p, int64_t n, uint32_t seed, float lo, float hi) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    p[i] = lo + (hi - lo) * static_cast<float>(hash_u32(seed, static_cast<uint32_t>(i)) >> 8) / 16777216.0f;
}
__global__ void fill_tokens_kernel(int32_t* p, int64_t n, uint32_t seed, int V) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    p[i] = static_cast<int32_t>(hash_u32(seed, static_cast<uint32_t>(i)) % static_cast<uint32_t>(V));
}

template <class T>
T* dalloc(int64_t n) {
  T* p = nullptr;
  CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p), std::max<int64_t>(n, 1) * sizeof(T)));
  return p;
}
uint32_t g_seed = 1;
bf16* random_bf16(int64_t n, float scale = 1.0f) {
  bf16* p = dalloc<bf16>(n);
  launch(&fill_kernel, dim3(1024), dim3(256), 0, nullptr, p, n, g_seed++, scale);
  return p;
}
float* random_f32(int64_t n, float lo, float hi) {
  float* p = dalloc<float>(n);
  launch(&fill_f32_kernel, dim3(1024), dim3(256), 0, nullptr, p, n, g_seed++, lo, hi);
  return p;
}
int32_t* random_tokens(int64_t n, int V) {
  int32_t* p = dalloc<int32_t>(n);
  launch(&fill_tokens_kernel, dim3(1024), dim3(256), 0, nullptr, p, n, g_seed++, V);
  return p;
}

int g_reps = 20;
// Median milliseconds of fn over g_reps launches after 5 warm-ups.
double time_ms(const std::function<void()>& fn) {
  for (int i = 0; i < 5; ++i) fn();
  cudaEvent_t a, b;
  CUDA_CHECK(cudaEventCreate(&a));
  CUDA_CHECK(cudaEventCreate(&b));
  std::vector<float> ms(g_reps);
  for (auto& m : ms) {
    CUDA_CHECK(cudaEventRecord(a));
    fn();
    CUDA_CHECK(cudaEventRecord(b));
    CUDA_CHECK(cudaEventSynchronize(b));
    CUDA_CHECK(cudaEventElapsedTime(&m, a, b));
  }
  CUDA_CHECK(cudaEventDestroy(a));
  CUDA_CHECK(cudaEventDestroy(b));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

struct Row {
  std::string op, shape, unit;
  double ms, rate, pct;
};
std::vector<Row> g_rows;
double g_copy_gbs = 0, g_gemm_tflops = 0;

void memory_row(const std::string& op, const std::string& shape, double bytes, double ms) {
  const double gbs = bytes / ms / 1e6;
  g_rows.push_back({op, shape, "GB/s", ms, gbs, g_copy_gbs > 0 ? 100.0 * gbs / g_copy_gbs : 0});
}
void compute_row(const std::string& op, const std::string& shape, double flops, double ms) {
  const double tf = flops / ms / 1e9;
  g_rows.push_back({op, shape, "TFLOP/s", ms, tf, g_gemm_tflops > 0 ? 100.0 * tf / g_gemm_tflops : 0});
}
std::string dims(std::initializer_list<std::pair<const char*, int64_t>> d) {
  std::string s;
  for (const auto& [k, v] : d) s += (s.empty() ? "" : " ") + std::string(k) + "=" + std::to_string(v);
  return s;
}

void ceilings(const ops::Cuda& dev) {
  const int64_t bytes = int64_t{1} << 30;
  char *src = dalloc<char>(bytes), *dst = dalloc<char>(bytes);
  CUDA_CHECK(cudaMemset(src, 1, bytes));
  const double ms = time_ms([&] { CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice)); });
  g_copy_gbs = 2.0 * bytes / ms / 1e6;
  g_rows.push_back({"ceiling: device copy", "1 GiB", "GB/s", ms, g_copy_gbs, 100});
  cudaFree(src), cudaFree(dst);
  const int n = 8192;
  bf16 *a = random_bf16(int64_t{n} * n), *w = random_bf16(int64_t{n} * n), *o = dalloc<bf16>(int64_t{n} * n);
  const double gms = time_ms([&] { ops::matmul_forward(dev, o, a, w, static_cast<const bf16*>(nullptr), n, n, n); });
  g_gemm_tflops = 2.0 * n * n * double(n) / gms / 1e9;
  g_rows.push_back({"ceiling: cuBLASLt bf16 GEMM", "8192^3", "TFLOP/s", gms, g_gemm_tflops, 100});
  cudaFree(a), cudaFree(w), cudaFree(o);
}

void bench_rows(const ops::Cuda& dev) {
  // Row ops at a llama-1.1b activation (B*T = 32768 rows of C = 2048) and a gpt2-124m one (C = 768).
  for (const auto& [N, C] : {std::pair{32768, 2048}, std::pair{65536, 768}}) {
    const int64_t nc = int64_t{N} * C;
    bf16 *x = random_bf16(nc), *br = random_bf16(nc), *res = dalloc<bf16>(nc), *out = dalloc<bf16>(nc);
    bf16 *w = random_bf16(C), *b = random_bf16(C), *dw = random_bf16(C), *db = random_bf16(C);
    bf16 *dout = random_bf16(nc), *dinp = random_bf16(nc);
    float *rstd = dalloc<float>(N), *mean = dalloc<float>(N);
    const std::string s = dims({{"N", N}, {"C", C}});
    double ms = time_ms([&] { ops::residual_rmsnorm_forward(dev, res, out, rstd, x, br, w, N, C, 1e-5f); });
    memory_row("residual+rmsnorm fwd", s, 4.0 * nc * 2 + 4.0 * N, ms);
    ms = time_ms([&] { ops::rmsnorm_backward(dev, dinp, dw, dout, res, w, static_cast<const float*>(rstd), N, C); });
    memory_row("rmsnorm bwd", s, 4.0 * nc * 2 + 4.0 * N, ms);
    ms = time_ms([&] { ops::residual_layernorm_forward(dev, res, out, mean, rstd, x, br, w, b, N, C, 1e-5f); });
    memory_row("residual+layernorm fwd", s, 4.0 * nc * 2 + 8.0 * N, ms);
    ms = time_ms([&] {
      ops::layernorm_backward(dev, dinp, dw, db, dout, res, w, static_cast<const float*>(mean),
                              static_cast<const float*>(rstd), N, C);
    });
    memory_row("layernorm bwd", s, 4.0 * nc * 2 + 8.0 * N, ms);
    ms = time_ms([&] { ops::residual_forward(dev, res, res, static_cast<const bf16*>(br), nc); });
    memory_row("residual add", s, 3.0 * nc * 2, ms);
    for (void* p : {(void*)x, (void*)br, (void*)res, (void*)out, (void*)w, (void*)b, (void*)dw, (void*)db,
                    (void*)dout, (void*)dinp, (void*)rstd, (void*)mean})
      cudaFree(p);
  }
}

void bench_elementwise(const ops::Cuda& dev) {
  {  // RoPE on llama-1.1b's qkv: 32 query + 4 key heads rotated of 32 + 2*4 heads of 64
    const int B = 16, T = 2048, NH = 32, KVH = 4, HS = 64;
    const int64_t n = int64_t{B} * T * (NH + 2 * KVH) * HS;
    bf16* qkv = random_bf16(n);
    const double moved = 2.0 * B * T * (NH + KVH) * HS * 2;  // q and k read and written
    const std::string s = dims({{"B", B}, {"T", T}, {"NH", NH}, {"KVH", KVH}, {"HS", HS}});
    memory_row("rope fwd", s, moved, time_ms([&] { ops::rope_forward(dev, qkv, B, T, NH, KVH, HS, 10000.f, 0); }));
    memory_row("rope bwd", s, moved, time_ms([&] { ops::rope_backward(dev, qkv, B, T, NH, KVH, HS, 10000.f, 0); }));
    // Variant 1 (rope.cu): lanes across the heads of a position, the batch rows in each thread's loop.
    ops::Cuda heads = dev;
    heads.variant = 1;
    memory_row("rope fwd, variant 1 (lanes across heads)", s, moved,
               time_ms([&] { ops::rope_forward(heads, qkv, B, T, NH, KVH, HS, 10000.f, 0); }));
    memory_row("rope bwd, variant 1 (lanes across heads)", s, moved,
               time_ms([&] { ops::rope_backward(heads, qkv, B, T, NH, KVH, HS, 10000.f, 0); }));
    cudaFree(qkv);
  }
  {  // SwiGLU at llama-1.1b's MLP (F = 5632), GELU at gpt2-124m's (4C = 3072)
    const int N = 16384, F = 5632;
    bf16 *inp = random_bf16(int64_t{N} * 2 * F), *out = dalloc<bf16>(int64_t{N} * F);
    bf16 *dout = random_bf16(int64_t{N} * F), *dinp = dalloc<bf16>(int64_t{N} * 2 * F);
    const std::string s = dims({{"N", N}, {"F", F}});
    memory_row("swiglu fwd", s, 3.0 * N * F * 2, time_ms([&] { ops::swiglu_forward(dev, out, inp, N, F); }));
    memory_row("swiglu bwd", s, 5.0 * N * F * 2, time_ms([&] { ops::swiglu_backward(dev, dinp, dout, inp, N, F); }));
    const int64_t n = int64_t{65536} * 3072;
    bf16 *g = random_bf16(n), *go = dalloc<bf16>(n), *gd = random_bf16(n), *gdi = dalloc<bf16>(n);
    const std::string sg = dims({{"n", n}});
    memory_row("gelu fwd", sg, 2.0 * n * 2, time_ms([&] { ops::gelu_forward(dev, go, g, n); }));
    memory_row("gelu bwd", sg, 3.0 * n * 2, time_ms([&] { ops::gelu_backward(dev, gdi, gd, g, n); }));
    for (void* p : {(void*)inp, (void*)out, (void*)dout, (void*)dinp, (void*)g, (void*)go, (void*)gd, (void*)gdi})
      cudaFree(p);
  }
}

void bench_classifier_embedding(ops::Cuda dev, void* workspace, size_t workspace_bytes) {
  const int N = 8192, V = 50304, C = 768;
  {
    bf16* logits = random_bf16(int64_t{N} * V, 4.0f);
    float* losses = dalloc<float>(N);
    int32_t* targets = random_tokens(N, V);
    // The default kernel (4 vectors in flight per thread), then the forms measured beside it (classifier.cu).
    for (int variant = 0; variant <= 2; ++variant) {
      ops::Cuda d = dev;
      d.variant = variant;
      const double ms =
          time_ms([&] { ops::softmax_cross_entropy(d, logits, losses, targets, N, V, -100, 1.0f / N); });
      const char* name = variant == 0   ? "fused classifier (loss + dlogits)"
                         : variant == 1 ? "fused classifier, variant 1 (2 vectors in flight)"
                                        : "fused classifier, variant 2 (1 vector in flight)";
      memory_row(name, dims({{"N", N}, {"V", V}}), 2.0 * N * double(V) * 2, ms);
    }
    cudaFree(logits), cudaFree(losses), cudaFree(targets);
  }
  {
    const int B = 16, T = 1024;
    bf16 *wte = random_bf16(int64_t{V} * C), *wpe = random_bf16(int64_t{T} * C);
    bf16 *out = dalloc<bf16>(int64_t{B} * T * C), *dout = random_bf16(int64_t{B} * T * C);
    bf16 *dwte = random_bf16(int64_t{V} * C), *dwpe = random_bf16(int64_t{T} * C);
    int32_t* tokens = random_tokens(int64_t{B} * T, V);
    const std::string s = dims({{"B", B}, {"T", T}, {"C", C}, {"V", V}});
    const double rows = double(B) * T * C * 2;
    memory_row("embedding fwd", s, 2.0 * rows + double(T) * C * 2,
               time_ms([&] { ops::embedding_forward(dev, out, tokens, wte, wpe, B, T, C); }));
    dev.workspace = workspace, dev.workspace_bytes = workspace_bytes;
    memory_row("embedding bwd (deterministic)", s, 3.0 * rows + 2.0 * T * C * 2,
               time_ms([&] { ops::embedding_backward(dev, dwte, dwpe, dout, tokens, B, T, C); }));
    for (void* p : {(void*)wte, (void*)wpe, (void*)out, (void*)dout, (void*)dwte, (void*)dwpe, (void*)tokens})
      cudaFree(p);
  }
}

void bench_adamw(ops::Cuda dev, void* workspace, size_t workspace_bytes) {
  // gpt2-124m's parameters in 4 tensors of unequal size, one launch.
  const int64_t sizes[4] = {38597376, 85054464, 1536 * 12, 2359296 - 1};
  std::vector<ops::AdamWTensor<bf16>> ts;
  std::vector<ops::ConstSpan<bf16>> gs;
  int64_t total = 0;
  for (int64_t n : sizes) {
    ops::AdamWTensor<bf16> t;
    t.param = random_bf16(n, 0.05f), t.grad = random_bf16(n, 0.01f), t.master = random_f32(n, -0.05f, 0.05f);
    t.m = random_f32(n, -1e-3f, 1e-3f), t.v = random_f32(n, 0.0f, 1e-5f), t.n = n, t.weight_decay = 0.1f;
    ts.push_back(t);
    gs.push_back({t.grad, n});
    total += n;
  }
  ops::AdamWStep step;
  step.lr = 6e-4f, step.bias_correction1 = 0.1f, step.bias_correction2 = 0.05f, step.seed = 42;
  // 28 bytes per parameter: read grad (2), m, v, master (12); write m, v, master (12), param (2).
  memory_row("adamw (fp32 master, bf16 SR)", dims({{"params", total}, {"tensors", 4}}), 28.0 * total,
             time_ms([&] { ops::adamw_update(dev, ts.data(), 4, step); }));
  dev.workspace = workspace, dev.workspace_bytes = workspace_bytes;
  float* norm = dalloc<float>(1);
  memory_row("grad norm (deterministic)", dims({{"params", total}}), 2.0 * total,
             time_ms([&] { ops::grad_norm_squared(dev, norm, gs.data(), 4); }));
  for (auto& t : ts) cudaFree(t.param), cudaFree(const_cast<bf16*>(t.grad)), cudaFree(t.master), cudaFree(t.m), cudaFree(t.v);
  cudaFree(norm);
}

void bench_matmul(const ops::Cuda& dev) {
  // gpt2-124m at B*T = 16384: the four linear maps of a block, forward and backward.
  const int N = 16384, C = 768;
  const std::tuple<const char*, int, int> block[] = {
      {"qkv", C, 3 * C}, {"attn out", C, C}, {"mlp up", C, 4 * C}, {"mlp down", 4 * C, C}};  // name, IC, OC
  for (const auto& [name, IC, OC] : block) {
    bf16 *inp = random_bf16(int64_t{N} * IC), *w = random_bf16(int64_t{OC} * IC, 0.05f), *bias = random_bf16(OC);
    bf16 *out = dalloc<bf16>(int64_t{N} * OC), *dout = random_bf16(int64_t{N} * OC);
    bf16 *dinp = dalloc<bf16>(int64_t{N} * IC), *dw = random_bf16(int64_t{OC} * IC), *db = random_bf16(OC);
    const std::string s = dims({{"N", N}, {"IC", IC}, {"OC", OC}});
    const double flops = 2.0 * N * double(IC) * OC;
    compute_row(std::string("matmul fwd+bias ") + name, s, flops,
                time_ms([&] { ops::matmul_forward(dev, out, inp, w, static_cast<const bf16*>(bias), N, IC, OC); }));
    compute_row(std::string("matmul bwd ") + name, s, 2 * flops,
                time_ms([&] { ops::matmul_backward(dev, dinp, dw, db, dout, inp, w, N, IC, OC); }));
    // The bias gradient in the dweight product's BGRADB epilogue instead of the default's GEMV of dout with a
    // ones vector (variant 2; the GEMV still, where cuBLASLt has no such algorithm: the row says so), and no
    // bias gradient at all: the differences are what each way of computing it costs.
    ops::Cuda bgradb = dev;
    bgradb.variant = 2;
    const int64_t fallbacks = matmul_bias_grad_fallbacks();
    const double bgradb_ms =
        time_ms([&] { ops::matmul_backward(bgradb, dinp, dw, db, dout, inp, w, N, IC, OC); });
    const bool gemv_fallback = matmul_bias_grad_fallbacks() != fallbacks;
    compute_row(std::string("matmul bwd ") + name + ", dbias by BGRADB" +
                    (gemv_fallback ? " (no algorithm: GEMV)" : ""),
                s, 2 * flops, bgradb_ms);
    compute_row(std::string("matmul bwd ") + name + ", no dbias", s, 2 * flops,
                time_ms([&] { ops::matmul_backward(dev, dinp, dw, static_cast<bf16*>(nullptr), dout, inp, w, N, IC, OC); }));
    for (void* p : {(void*)inp, (void*)w, (void*)bias, (void*)out, (void*)dout, (void*)dinp, (void*)dw, (void*)db})
      cudaFree(p);
  }
  // The heuristic's first algorithm (what matmul.cu runs) against the best of its first 8, per product of
  // each block GEMM and of the LM head (the runner pads gpt2's vocabulary to 50304 rows; ~27% of a gpt2-124m
  // step's FLOPs): what choosing among cuBLASLt's candidates on the card (autotuning, with its choice
  // persisted so that runs stay bitwise reproducible) would gain.
  std::vector<std::tuple<const char*, int, int>> sweep(std::begin(block), std::end(block));
  sweep.emplace_back("lm head", C, 50304);
  for (const auto& [name, IC, OC] : sweep) {
    bf16 *x = random_bf16(int64_t{N} * IC), *w = random_bf16(int64_t{OC} * IC, 0.05f), *dy = random_bf16(int64_t{N} * OC);
    bf16 *y = dalloc<bf16>(int64_t{N} * OC), *dx = dalloc<bf16>(int64_t{N} * IC), *dw = random_bf16(int64_t{OC} * IC);
    const std::string s = dims({{"N", N}, {"IC", IC}, {"OC", OC}});
    const double flops = 2.0 * N * double(IC) * OC;
    for (const auto& [what, product, out, a, b] :
         {std::tuple{"fwd", MatmulProduct::kForward, y, (const bf16*)x, (const bf16*)w},
          {"dinp", MatmulProduct::kDinp, dx, dy, w}, {"dweight", MatmulProduct::kDweight, dw, dy, x}}) {
      const std::vector<double> t = matmul_algorithm_times(product, out, a, b, N, IC, OC, 8, g_reps);
      if (t.empty()) continue;
      const size_t best = size_t(std::min_element(t.begin(), t.end()) - t.begin());
      const std::string op = std::string("matmul ") + what + " " + name;
      compute_row(op + ": heuristic's first", s, flops, t[0]);
      compute_row(op + ": best of " + std::to_string(t.size()) + " (#" + std::to_string(best) + ")", s, flops,
                  t[best]);
    }
    for (void* p : {(void*)x, (void*)w, (void*)dy, (void*)y, (void*)dx, (void*)dw}) cudaFree(p);
  }
  // GPT-2's MLP down-projection backward two ways, side by side: GELU's derivative in the product's epilogue
  // (DGELU, the default) against variant 1, the product and then gelu_backward in place over it (the runner's
  // way until 2026-11-27, with a separate d(act) buffer: the same bytes).
  {
    const int IC = 4 * C, OC = C;
    bf16 *inp = random_bf16(int64_t{N} * IC), *w = random_bf16(int64_t{OC} * IC, 0.05f),
         *pre = random_bf16(int64_t{N} * IC);
    bf16 *dout = random_bf16(int64_t{N} * OC), *dpre = dalloc<bf16>(int64_t{N} * IC);
    bf16 *dw = random_bf16(int64_t{OC} * IC), *db = random_bf16(OC);
    const std::string s = dims({{"N", N}, {"IC", IC}, {"OC", OC}});
    const double flops = 4.0 * N * double(IC) * OC;
    ops::Cuda unfused = dev;
    unfused.variant = 1;
    compute_row("matmul bwd mlp down, then gelu bwd", s, flops, time_ms([&] {
                  ops::matmul_backward_dgelu(unfused, dpre, dw, db, dout, inp, w, pre, N, IC, OC);
                }));
    compute_row("matmul bwd+dgelu mlp down (fused)", s, flops, time_ms([&] {
                  ops::matmul_backward_dgelu(dev, dpre, dw, db, dout, inp, w, pre, N, IC, OC);
                }));
    for (void* p : {(void*)inp, (void*)w, (void*)pre, (void*)dout, (void*)dpre, (void*)dw, (void*)db})
      cudaFree(p);
  }
}

void bench_attention(const ops::Cuda& dev, int B, int T, int NH, int KVH, int HS) {
  const int64_t qkv_n = int64_t{B} * T * (NH + 2 * KVH) * HS, o_n = int64_t{B} * T * NH * HS;
  bf16 *qkv = random_bf16(qkv_n), *out = dalloc<bf16>(o_n), *dout = random_bf16(o_n), *dqkv = dalloc<bf16>(qkv_n);
  float *lse = dalloc<float>(int64_t{B} * NH * T), *delta = dalloc<float>(int64_t{B} * NH * T);
  const std::string s = dims({{"B", B}, {"T", T}, {"NH", NH}, {"KVH", KVH}, {"HS", HS}});
  // Causal: half of the T x T scores. Forward 2 products, backward 5 (with the recomputed scores).
  const double fwd = 2.0 * 2.0 * B * NH * double(T) * T * HS / 2.0;
  const double f_ms = time_ms([&] { ops::flash_attention_forward(dev, out, lse, qkv, B, T, NH, KVH, HS); });
  compute_row("flash attention fwd", s, fwd, f_ms);
  const double b_ms = time_ms([&] {
    ops::flash_attention_backward(dev, dqkv, delta, dout, out, qkv, static_cast<const float*>(lse), B, T, NH, KVH, HS);
  });
  compute_row("flash attention bwd", s, 2.5 * fwd, b_ms);
  compute_row("flash attention fwd+bwd", s, 3.5 * fwd, f_ms + b_ms);
  // The non-deterministic backward (FlashAttention-2's: dQ by fp32 atomics into dev.workspace), same work count.
  ops::Cuda atomic = dev;
  atomic.deterministic = false;
  const double a_ms = time_ms([&] {
    ops::flash_attention_backward(atomic, dqkv, delta, dout, out, qkv, static_cast<const float*>(lse), B, T, NH, KVH,
                                  HS);
  });
  compute_row("flash attention bwd, atomic dQ", s, 2.5 * fwd, a_ms);
  compute_row("flash attention fwd+bwd, atomic dQ", s, 3.5 * fwd, f_ms + a_ms);
  // The same through cuDNN's SDPA graphs (kernels/cuda/cudnn_sdpa.h): its deterministic backward (dP kept in
  // the workspace) and its accumulating one, each with the workspace its plan asks for. Skipped, with a row
  // that says why, where cuDNN cannot be loaded or has no engine.
  try {
    for (const bool deterministic : {true, false}) {
      ops::Cuda cd = dev;
      cd.cudnn_attention = true;
      cd.deterministic = deterministic;
      const size_t bytes = cudnn_attention_workspace_bytes(B, T, NH, KVH, HS, deterministic);
      void* ws = nullptr;
      CUDA_CHECK(cudaMalloc(&ws, std::max<size_t>(bytes, 256)));
      cd.workspace = ws, cd.workspace_bytes = bytes;
      const double cf = time_ms([&] { ops::flash_attention_forward(cd, out, lse, qkv, B, T, NH, KVH, HS); });
      const double cb = time_ms([&] {
        ops::flash_attention_backward(cd, dqkv, delta, dout, out, qkv, static_cast<const float*>(lse), B, T,
                                      NH, KVH, HS);
      });
      const char* tag = deterministic ? "" : ", atomic dQ";
      if (deterministic) compute_row("cudnn attention fwd", s, fwd, cf);
      compute_row(std::string("cudnn attention bwd") + tag, s, 2.5 * fwd, cb);
      compute_row(std::string("cudnn attention fwd+bwd") + tag, s, 3.5 * fwd, cf + cb);
      CUDA_CHECK(cudaFree(ws));
    }
  } catch (const strata::Error& e) {
    std::fprintf(stderr, "cudnn attention %s: skipped: %s\n", s.c_str(), e.what());
  }
  for (void* p : {(void*)qkv, (void*)out, (void*)dout, (void*)dqkv, (void*)lse, (void*)delta}) cudaFree(p);
}

}  // namespace
}  // namespace strata::cuda

int main(int argc, char** argv) {
  using namespace strata::cuda;
  std::string json, only;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json" && i + 1 < argc) json = argv[++i];
    else if (a == "--reps" && i + 1 < argc) g_reps = std::max(3, std::atoi(argv[++i]));
    else if (a == "--only" && i + 1 < argc) only = argv[++i];
    else {
      std::fprintf(stderr, "kernel_bench: unknown argument '%s' (use --json FILE, --reps N, --only GROUP)\n", a.c_str());
      return 2;
    }
  }
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
    std::fprintf(stderr, "kernel_bench: no CUDA device\n");
    return 1;
  }
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s (sm_%d%d, %d SMs)\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount);
  strata::ops::Cuda dev;
  const size_t ws_bytes = size_t{512} << 20;
  void* ws = nullptr;
  CUDA_CHECK(cudaMalloc(&ws, ws_bytes));
  dev.workspace = ws, dev.workspace_bytes = ws_bytes;
  auto want = [&](const char* g) { return only.empty() || only.find(g) != std::string::npos; };
  ceilings(dev);
  if (want("rows")) bench_rows(dev);
  if (want("elementwise")) bench_elementwise(dev);
  if (want("classifier")) bench_classifier_embedding(dev, ws, ws_bytes);
  if (want("adamw")) bench_adamw(dev, ws, ws_bytes);
  if (want("matmul")) bench_matmul(dev);
  if (want("attention"))
    for (int T : {1024, 2048})
      for (int HS : {64, 128}) bench_attention(dev, 8, T, 2048 / HS / 1, 2048 / HS / 1, HS);
  std::printf("\n| op | shape | ms | rate | %% of ceiling |\n|---|---|---|---|---|\n");
  for (const auto& r : g_rows)
    std::printf("| %s | %s | %.3f | %.1f %s | %.0f%% |\n", r.op.c_str(), r.shape.c_str(), r.ms, r.rate, r.unit.c_str(),
                r.pct);
  if (!json.empty()) {
    std::ofstream f(json);
    f << "{\"device\": \"" << prop.name << "\", \"copy_gbs\": " << g_copy_gbs << ", \"gemm_tflops\": " << g_gemm_tflops
      << ", \"rows\": [\n";
    for (size_t i = 0; i < g_rows.size(); ++i) {
      const auto& r = g_rows[i];
      f << "  {\"op\": \"" << r.op << "\", \"shape\": \"" << r.shape << "\", \"ms\": " << r.ms << ", \"rate\": " << r.rate
        << ", \"unit\": \"" << r.unit << "\", \"pct\": " << r.pct << "}" << (i + 1 < g_rows.size() ? ",\n" : "\n");
    }
    f << "]}\n";
  }
  cudaFree(ws);
  return 0;
}
