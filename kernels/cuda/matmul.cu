// kernels/cuda/matmul.cu: the linear map through cuBLASLt, bf16 in and out, fp32 accumulation
// (CUBLAS_COMPUTE_32F, fp32 alpha/beta). GPU only: library calls cannot run in the CPU emulation. CPU twins:
// kernels/cpu/matmul.cpp, kernels/cpu/matmul_gelu.cpp.
//
// forward:      out (N,OC) = inp (N,IC) @ weight (OC,IC)^T + bias (OC, or null)                 out `=`
// gelu forward: pre (N,OC) = inp @ weight^T + bias (or null);  out (N,OC) = gelu(pre)          out, pre `=`
// backward with the GELU derivative (matmul_backward_dgelu): dpre (N,IC) = gelu'(pre) * (dout @ weight), `=`,
//               then dweight and dbias as below
// backward:     dinp (N,IC) = dout (N,OC) @ weight (OC,IC)          (skipped when dinp is null)  dinp `=`
//               dweight (OC,IC) += dout^T @ inp                                                  dweight `+=`
//               dbias (OC) += sum_n dout[n,:]                         (when dbias is non-null)   dbias `+=`
//
// Row-major onto column-major: cuBLASLt is column-major, and a row-major (R,C) matrix with row stride C is
// the column-major (C,R) matrix with leading dimension C, its transpose. Each product is therefore computed
// transposed, D (m,n) = op(A) op(B) + beta D, with every matrix passed as stored ("W stored (IC,OC)" is the
// row-major (OC,IC) weight seen column-major):
//   forward  out^T (OC,N)      = W stored (IC,OC) op T  x  inp^T (IC,N) op N    m=OC n=N  k=IC  (TN)
//   dinp     dinp^T (IC,N)     = W stored (IC,OC) op N  x  dout^T (OC,N) op N   m=IC n=N  k=OC  (NN)
//   dweight  dweight^T (IC,OC) = inp^T (IC,N) op N      x  dout^T (OC,N) op T   m=IC n=OC k=N   (NT, beta 1)
// The bias broadcast over D's columns (BIAS epilogue: a vector of D's m = OC rows) is exactly a
// per-output-feature bias. GELU_AUX_BIAS writes gelu(acc + bias) to D and acc + bias to the aux matrix (pre),
// whose leading dimension (OC) cuBLASLt requires to be a multiple of 8.
//
// Epilogues: BIAS (forward with bias), GELU_AUX_BIAS / GELU_AUX (matmul_gelu_forward), DGELU (dpre of
// matmul_backward_dgelu: cuBLASLt reads pre as its aux input, leading dimension IC, and multiplies the fp32
// sums by GELU's derivative there before the one rounding to bf16), BGRADB (variant 2's bias gradient,
// below), DEFAULT otherwise.
//
// Bias gradient: dbias += dout^T @ ones, one more GEMM (a GEMV, reading dout once: N*OC*2 bytes) with
// beta = 1: fp32 sums over N, rounded to bf16 once, with the previous dbias added in fp32:
//   dbias    dbias (OC,1)      = dout^T (OC,N) op N     x  ones (N,1) op N      m=OC n=1  k=N   (beta 1)
// Run 6 (H200) measured it at 0.09 ms per gpt2-124m block, ~1.1 ms per step at N = 16384 (bench/KERNELS.md).
// Variant 2 (kernel_bench and the tests) sums dout in the dweight product's BGRADB epilogue instead, as
// dout's tiles pass through the GEMM. That epilogue writes (`=`) the sums, so they go to a scratch vector
// that one small kernel adds into dbias in fp32: fp32 where the library takes that bias-gradient type
// (CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE = R_32F), else bf16 (D's type: a second rounding). cuBLASLt 13.0 on an
// H200 refuses fp32 (INVALID_VALUE), and with bf16 the four gpt2-124m backward products measured 1-7% slower
// than the plain product plus the GEMV (run 8), so the GEMV stays the default. Where no BGRADB algorithm
// exists, variant 2 falls back to the GEMV.
//
// Accuracy and determinism: the heuristic may only pick split-K schemes that reduce in fp32 in the workspace
// (NONE or COMPUTE_TYPE), never INPLACE or OUTPUT_TYPE, which would round partial sums to bf16. The algorithm
// is chosen once per GEMM shape and cached, and cuBLASLt's kernels do not use floating-point atomics for
// these schemes, so results are bitwise reproducible on a given GPU model and library version.
//
// Cache: one cuBLASLt handle per device, a 32 MB workspace per (device, stream) (GEMMs on different streams
// may run concurrently and must not share one) and an fp32 bias-gradient scratch likewise, a bf16 vector of
// ones grown to the largest N, and the plans:
// per (m, n, k, leading dimensions, transposes, beta, epilogue, pointer alignments) the matmul descriptor,
// the three matrix layouts and the heuristic's algorithm. Pointer alignments are part of the key because the
// heuristic chooses kernels by them (the preferences state each operand's alignment, so a misaligned operand,
// e.g. a row stride that is not a multiple of 8 elements, gets a kernel that handles it rather than a fault).
// All of it is behind one mutex, held until the GEMM is enqueued (plans' bias/aux pointers are set per call),
// and lives for the process: destroying CUDA objects from static destructors races the runtime's own
// teardown. The first call with a new shape or N allocates (cudaMalloc): warm the shapes up before a CUDA
// graph capture.
//
// Algorithm choice: the heuristic's first, unless autotuning is on (STRATA_MATMUL_AUTOTUNE=<cache file>, or
// set_matmul_autotune; kernels/cuda/matmul_tuning.h): then the first plan of a shape times the heuristic's
// first 8 candidates on scratch outputs (synchronising its stream once) and keeps the fastest, or takes the
// choice the cache file recorded for this card, library version and shape.
#include <cublasLt.h>  // before engine/check.h (via common.cuh), which then defines CUBLAS_CHECK

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/matmul_tuning.h"
#include "kernels/cuda/nvtx.h"
#include "kernels/ops.h"

namespace strata::cuda {

namespace {

constexpr size_t kWorkspaceBytes = size_t{32} << 20;
constexpr int64_t kMinOnes = 4096;

// kBGradB32 / kBGradB16: BGRADB with an fp32 / a bf16 bias gradient.
enum class Epilogue : int32_t { kDefault, kBias, kGeluAux, kGeluAuxBias, kDGelu, kBGradB32, kBGradB16 };
bool is_bgradb(Epilogue e) {
  return e == Epilogue::kBGradB32 || e == Epilogue::kBGradB16;
}

cublasLtEpilogue_t lt_epilogue(Epilogue e) {
  switch (e) {
    case Epilogue::kBias:
      return CUBLASLT_EPILOGUE_BIAS;
    case Epilogue::kGeluAux:
      return CUBLASLT_EPILOGUE_GELU_AUX;
    case Epilogue::kGeluAuxBias:
      return CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    case Epilogue::kDGelu:
      return CUBLASLT_EPILOGUE_DGELU;
    case Epilogue::kBGradB32:
    case Epilogue::kBGradB16:
      return CUBLASLT_EPILOGUE_BGRADB;
    case Epilogue::kDefault:
      break;
  }
  return CUBLASLT_EPILOGUE_DEFAULT;
}
bool has_bias(Epilogue e) {
  return e == Epilogue::kBias || e == Epilogue::kGeluAuxBias;
}
bool has_aux(Epilogue e) {
  return e == Epilogue::kGeluAux || e == Epilogue::kGeluAuxBias || e == Epilogue::kDGelu;
}

// One GEMM, column-major: D (m,n) = op(A) op(B) [+ D when accumulate], then the epilogue.
struct Gemm {
  bool trans_a = false, trans_b = false;
  int m = 0, n = 0, k = 0;
  const bf16* a = nullptr;
  int lda = 0;
  const bf16* b = nullptr;
  int ldb = 0;
  bf16* d = nullptr;
  int ldd = 0;
  bool accumulate = false;
  Epilogue epilogue = Epilogue::kDefault;
  const bf16* bias = nullptr;  // (m) for the bias epilogues
  bf16* aux = nullptr;         // (m,n), leading dimension ldd: written by GELU_AUX*, read by DGELU
  void* bias_grad = nullptr;   // (n) fp32 or bf16, written (`=`) by BGRADB: the sums of op(B) over k
};

// The alignment (bytes, a power of two up to 16) of every column start of a bf16 matrix at p with leading
// dimension ld: of the pointer and of the row stride both.
int32_t alignment(const void* p, int64_t ld) {
  const uint64_t bits =
      reinterpret_cast<uintptr_t>(p) | static_cast<uint64_t>(ld * int64_t{sizeof(bf16)}) | 16u;
  return static_cast<int32_t>(bits & (~bits + 1));  // lowest set bit
}

// Everything the heuristic's choice depends on. All int32, no padding, so it hashes as bytes.
struct GemmKey {
  int32_t m, n, k, lda, ldb, ldd;
  int32_t trans_a, trans_b, accumulate, epilogue;
  int32_t align_a, align_b, align_d, align_bias, align_aux;
  bool operator==(const GemmKey& o) const { return std::memcmp(this, &o, sizeof(GemmKey)) == 0; }
};
static_assert(sizeof(GemmKey) == 15 * sizeof(int32_t), "GemmKey must have no padding: it hashes as bytes");
struct GemmKeyHash {
  size_t operator()(const GemmKey& key) const {
    unsigned char bytes[sizeof(GemmKey)];
    std::memcpy(bytes, &key, sizeof(GemmKey));
    uint64_t h = 1469598103934665603ull;  // FNV-1a
    for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
    return static_cast<size_t>(h);
  }
};

GemmKey key_of(const Gemm& g) {
  GemmKey key;
  std::memset(&key, 0, sizeof(key));
  key.m = g.m, key.n = g.n, key.k = g.k, key.lda = g.lda, key.ldb = g.ldb, key.ldd = g.ldd;
  key.trans_a = g.trans_a, key.trans_b = g.trans_b, key.accumulate = g.accumulate;
  key.epilogue = static_cast<int32_t>(g.epilogue);
  key.align_a = alignment(g.a, g.lda);
  key.align_b = alignment(g.b, g.ldb);
  key.align_d = alignment(g.d, g.ldd);
  key.align_bias = g.bias ? alignment(g.bias, 0) : g.bias_grad ? alignment(g.bias_grad, 0) : 0;
  key.align_aux = g.aux ? alignment(g.aux, g.ldd) : 0;
  return key;
}

// A cached GEMM: descriptors and the chosen algorithm. C and D share a layout (C is D when accumulating).
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool found = false;  // the heuristic returned an algorithm (else the GEMM cannot run this way)
};

struct DeviceContext {
  cublasLtHandle_t handle = nullptr;
  std::map<cudaStream_t, void*> workspaces;
  bf16* ones = nullptr;
  int64_t ones_n = 0;
  // BGRADB's output (fp32 or bf16), per stream.
  std::map<cudaStream_t, std::pair<float*, int64_t>> bias_grads;
  std::unordered_map<GemmKey, Plan, GemmKeyHash> plans;
  // Autotuning (kernels/cuda/matmul_tuning.h): the candidate index chosen per shape, from the cache file or
  // timed here; loaded from the file on the first plan made while tuning is on.
  std::unordered_map<GemmKey, int, GemmKeyHash> tuned;
  bool tune_loaded = false;
};

std::mutex g_mutex;
std::atomic<int64_t> g_bias_grad_fallbacks{0};  // matmul_bias_grad_fallbacks()
// Autotuning's cache file (empty: off); the environment is read on the first GEMM unless
// set_matmul_autotune came first.
std::string g_tune_path;
bool g_tune_configured = false;
constexpr int kTuneCandidates = 8;
std::map<int, DeviceContext*>& contexts() {
  static auto* all = new std::map<int, DeviceContext*>();  // never destroyed (see the header)
  return *all;
}

// The calling thread's current device's context, created on first use. Caller holds g_mutex.
DeviceContext& context() {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  DeviceContext*& ctx = contexts()[device];
  if (!ctx) {
    ctx = new DeviceContext();
    CUBLAS_CHECK(cublasLtCreate(&ctx->handle));
  }
  return *ctx;
}

void* workspace(DeviceContext& ctx, cudaStream_t stream) {
  void*& ws = ctx.workspaces[stream];
  if (!ws) CUDA_CHECK(cudaMalloc(&ws, kWorkspaceBytes));
  return ws;
}

// A bf16 vector of at least n ones (for the bias-gradient GEMV).
const bf16* ones(DeviceContext& ctx, int64_t n) {
  if (ctx.ones_n < n) {
    int64_t cap = kMinOnes;
    while (cap < n) cap *= 2;
    if (ctx.ones) CUDA_CHECK(cudaFree(ctx.ones));  // synchronises the device: no GEMM still reads it
    CUDA_CHECK(cudaMalloc(&ctx.ones, static_cast<size_t>(cap) * sizeof(bf16)));
    const std::vector<bf16> host(static_cast<size_t>(cap), __float2bfloat16_rn(1.0f));
    CUDA_CHECK(cudaMemcpy(ctx.ones, host.data(), host.size() * sizeof(bf16), cudaMemcpyHostToDevice));
    ctx.ones_n = cap;
  }
  return ctx.ones;
}

// An fp32 vector of at least n elements on stream, for the BGRADB epilogue's output (one per stream, as the
// workspaces: products on different streams may run concurrently).
float* bias_grad_scratch(DeviceContext& ctx, cudaStream_t stream, int64_t n) {
  auto& [p, cap] = ctx.bias_grads[stream];
  if (cap < n) {
    // cudaFree synchronises the device: no GEMM still writes the old vector, no add still reads it.
    if (p) CUDA_CHECK(cudaFree(p));
    CUDA_CHECK(cudaMalloc(&p, static_cast<size_t>(n) * sizeof(float)));
    cap = n;
  }
  return p;
}

template <class T>
void set_desc(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const T& value) {
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(T)));
}
template <class T>
void set_pref(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr, const T& value) {
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(T)));
}

// Per-call pointers of the epilogue (the heuristic also reads them, for their alignment).
void set_epilogue_pointers(const Plan& plan, const Gemm& g) {
  if (has_bias(g.epilogue))
    set_desc(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, static_cast<const void*>(g.bias));
  if (has_aux(g.epilogue))
    set_desc(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, static_cast<void*>(g.aux));
  if (is_bgradb(g.epilogue)) set_desc(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias_grad);
}

// The matmul descriptor and the three layouts of g (the plan without its algorithm).
Plan describe(const Gemm& g) {
  Plan plan;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  set_desc(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA,
           static_cast<int32_t>(g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N));
  set_desc(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB,
           static_cast<int32_t>(g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N));
  set_desc(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, static_cast<uint32_t>(lt_epilogue(g.epilogue)));
  if (has_aux(g.epilogue))
    set_desc(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, static_cast<int64_t>(g.ldd));
  // The bias gradient in fp32 (the default is D's type, bf16), so that the caller adds it into the bf16 dbias
  // with one rounding. Where the library refuses that type the heuristic finds no algorithm (cuBLASLt 13.0 on
  // an H200 answers INVALID_VALUE), and the caller tries the bf16 form.
  if (g.epilogue == Epilogue::kBGradB32)
    set_desc(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, static_cast<int32_t>(CUDA_R_32F));
  set_epilogue_pointers(plan, g);
  // Layouts of the matrices as stored (before op): A is (k,m) when transposed, B is (n,k).
  CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&plan.a, CUDA_R_16BF, g.trans_a ? g.k : g.m, g.trans_a ? g.m : g.k, g.lda));
  CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&plan.b, CUDA_R_16BF, g.trans_b ? g.n : g.k, g.trans_b ? g.k : g.n, g.ldb));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.d, CUDA_R_16BF, g.m, g.n, g.ldd));
  return plan;
}

// The heuristic's first `count` (<= kMaxAlgos) algorithms for plan (fewer when it has fewer; none when it has
// no heuristic for this configuration at all, NOT_SUPPORTED: e.g. an epilogue this library or card lacks), in
// its order of preference, each usable with kWorkspaceBytes. (Fixed arrays: nvcc 13's front end fails on a
// std::vector of these structs.)
constexpr int kMaxAlgos = 16;
struct Algorithms {
  cublasLtMatmulAlgo_t algo[kMaxAlgos];
  int n = 0;
};
Algorithms algorithms(cublasLtHandle_t handle, const Plan& plan, const GemmKey& key, int count) {
  STRATA_CHECK(count >= 1 && count <= kMaxAlgos, "cuBLASLt algorithms: count ", count);
  cublasLtMatmulPreference_t pref = nullptr;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  set_pref(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, static_cast<uint64_t>(kWorkspaceBytes));
  // Split-K partial sums stay fp32: no reduction in the bf16 output (INPLACE) or in bf16 scratch
  // (OUTPUT_TYPE).
  set_pref(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
           static_cast<uint32_t>(CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE));
  set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, static_cast<uint32_t>(key.align_a));
  set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, static_cast<uint32_t>(key.align_b));
  set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, static_cast<uint32_t>(key.align_d));
  set_pref(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, static_cast<uint32_t>(key.align_d));
  cublasLtMatmulHeuristicResult_t results[kMaxAlgos] = {};
  int found = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(handle, plan.desc, plan.a, plan.b, plan.d,
                                                               plan.d, pref, count, results, &found);
  CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
  Algorithms out;
  if (status == CUBLAS_STATUS_NOT_SUPPORTED) return out;
  // A bias-gradient type or layout the library does not take for these operands (BGRADB: cuBLASLt 13.0
  // answers INVALID_VALUE for the fp32 form on an H200).
  if (status == CUBLAS_STATUS_INVALID_VALUE && is_bgradb(static_cast<Epilogue>(key.epilogue))) return out;
  CUBLAS_CHECK(status);
  for (int i = 0; i < found && i < count; ++i) {
    if (results[i].state != CUBLAS_STATUS_SUCCESS) continue;
    STRATA_CHECK(results[i].workspaceSize <= kWorkspaceBytes, "cuBLASLt algorithm wants ",
                 results[i].workspaceSize, " bytes of workspace");
    out.algo[out.n++] = results[i].algo;
  }
  return out;
}

// The card and library a cache line applies to: "<device name>|sm_<cc>|cublasLt_<version>", spaces as '_'.
std::string tune_prefix() {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  std::string name = prop.name;
  for (char& c : name)
    if (c == ' ' || c == '\t') c = '_';
  return name + "|sm_" + std::to_string(prop.major * 10 + prop.minor) + "|cublasLt_" +
         std::to_string(cublasLtGetVersion());
}

// Cache lines: the prefix, GemmKey's 15 fields and the chosen candidate index, separated by spaces. Lines of
// other cards or library versions are skipped.
void load_tuned(DeviceContext& ctx) {
  ctx.tune_loaded = true;
  std::ifstream in(g_tune_path);
  if (!in) return;  // no cache yet: every shape is timed and appended
  const std::string prefix = tune_prefix();
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.empty()) continue;
    std::istringstream fields(line);
    std::string p;
    int32_t v[16];
    int got = 0;
    fields >> p;
    while (got < 16 && fields >> v[got]) ++got;
    std::string rest;
    if (!fields.eof() && !(fields >> rest).fail()) got = -1;  // trailing text
    if (p.empty() || got != 16 || v[15] < 0 || v[15] >= kTuneCandidates)
      STRATA_FAIL("matmul autotune cache '", g_tune_path, "' line ", number,
                  ": expected '<card>|sm_<cc>|cublasLt_<version>' then 15 shape fields and a candidate index "
                  "in [0, ",
                  kTuneCandidates, ")");
    if (p != prefix) continue;
    GemmKey key;
    std::memcpy(&key, v, sizeof(GemmKey));
    ctx.tuned[key] = v[15];
  }
}

void append_tuned(const GemmKey& key, int index) {
  std::ofstream out(g_tune_path, std::ios::app);
  int32_t v[15];
  std::memcpy(v, &key, sizeof(GemmKey));
  out << tune_prefix();
  for (int32_t x : v) out << ' ' << x;
  out << ' ' << index << '\n';
  STRATA_REQUIRE(out.good(), "matmul autotune cache '", g_tune_path, "': cannot append to it");
}

// The median time in ms of each of algos running g as planned (`warmups` launches, then `reps` timed ones,
// each waited for), on stream with workspace ws: autotuning's choice and kernel_bench's sweep.
std::vector<double> time_algorithms(cublasLtHandle_t handle, const Plan& plan, const Gemm& g,
                                    const Algorithms& algos, void* ws, cudaStream_t stream, int warmups,
                                    int reps) {
  cudaEvent_t start = nullptr, stop = nullptr;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  const float alpha = 1.0f, beta = g.accumulate ? 1.0f : 0.0f;
  auto launch = [&](int k) {
    CUBLAS_CHECK(cublasLtMatmul(handle, plan.desc, &alpha, g.a, plan.a, g.b, plan.b, &beta, g.d, plan.d, g.d,
                                plan.d, &algos.algo[k], ws, kWorkspaceBytes, stream));
  };
  std::vector<double> times;
  std::vector<float> ms(static_cast<size_t>(reps));
  for (int k = 0; k < algos.n; ++k) {
    for (int i = 0; i < warmups; ++i) launch(k);
    for (float& t : ms) {
      CUDA_CHECK(cudaEventRecord(start, stream));
      launch(k);
      CUDA_CHECK(cudaEventRecord(stop, stream));
      CUDA_CHECK(cudaEventSynchronize(stop));
      CUDA_CHECK(cudaEventElapsedTime(&t, start, stop));
    }
    std::nth_element(ms.begin(), ms.begin() + reps / 2, ms.end());
    times.push_back(ms[static_cast<size_t>(reps / 2)]);
  }
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  return times;
}

// The index of the fastest of algos for g (median of 5 launches each after 2 warm-ups, on stream), run on
// scratch outputs so that g's own output (and GELU_AUX's saved pre-activation) is not touched. cudaMalloc'd
// scratch is 256-byte aligned, at least g's alignment, so every candidate runs on it. 0 (the heuristic's
// first) when the scratch does not fit the device.
int fastest(cublasLtHandle_t handle, const Plan& plan, const Gemm& g, const Algorithms& algos, void* ws,
            cudaStream_t stream) {
  const size_t bytes = static_cast<size_t>(g.ldd) * static_cast<size_t>(g.n) * sizeof(bf16);
  const bool aux_out = g.epilogue == Epilogue::kGeluAux || g.epilogue == Epilogue::kGeluAuxBias;
  bf16 *d = nullptr, *aux = nullptr;
  if (cudaMalloc(&d, bytes) != cudaSuccess || (aux_out && cudaMalloc(&aux, bytes) != cudaSuccess)) {
    (void)cudaGetLastError();  // clear the allocation error
    if (d) CUDA_CHECK(cudaFree(d));
    return 0;
  }
  Gemm t = g;
  t.d = d;
  if (aux_out) t.aux = aux;
  set_epilogue_pointers(plan, t);
  CUDA_CHECK(cudaMemsetAsync(d, 0, bytes, stream));
  const std::vector<double> times = time_algorithms(handle, plan, t, algos, ws, stream, 2, 5);
  set_epilogue_pointers(plan, g);
  CUDA_CHECK(cudaFree(d));
  if (aux) CUDA_CHECK(cudaFree(aux));
  return static_cast<int>(std::min_element(times.begin(), times.end()) - times.begin());
}

// The plan of g: the heuristic's first algorithm, or with autotuning on the cache's choice among its first
// kTuneCandidates, else the fastest of them (timed on stream, then appended to the cache). found is false
// when the heuristic has none (the plan is kept, so that answer is cached too).
Plan make_plan(DeviceContext& ctx, const Gemm& g, const GemmKey& key, cudaStream_t stream) {
  Plan plan = describe(g);
  const bool tune = !g_tune_path.empty();
  if (tune && !ctx.tune_loaded) load_tuned(ctx);
  const Algorithms algos = algorithms(ctx.handle, plan, key, tune ? kTuneCandidates : 1);
  if (algos.n == 0) return plan;
  int pick = 0;
  if (tune) {
    const auto it = ctx.tuned.find(key);
    if (it != ctx.tuned.end() && it->second < algos.n) {
      pick = it->second;
    } else {
      pick = fastest(ctx.handle, plan, g, algos, workspace(ctx, stream), stream);
      ctx.tuned[key] = pick;
      append_tuned(key, pick);
    }
  }
  plan.algo = algos.algo[pick];
  plan.found = true;
  return plan;
}

// Enqueues g on stream and returns true. dbias_gemv: B is the ones vector, supplied here (g.b is ignored).
// With a BGRADB epilogue, g.bias_grad is set here to the stream's scratch of g.n elements (fp32-sized);
// *bias_grad (when non-null) receives it. When cuBLASLt has no algorithm for g, or refuses the launch: false
// if may_fail (nothing enqueued; the caller has another way), else a checked error.
bool run(const Gemm& gemm, cudaStream_t stream, bool dbias_gemv = false, bool may_fail = false,
         void** bias_grad = nullptr) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_tune_configured) {
    g_tune_configured = true;
    if (const char* path = std::getenv("STRATA_MATMUL_AUTOTUNE")) g_tune_path = path;
  }
  DeviceContext& ctx = context();
  Gemm g = gemm;
  if (dbias_gemv) g.b = ones(ctx, g.k), g.ldb = g.k;
  if (is_bgradb(g.epilogue)) g.bias_grad = bias_grad_scratch(ctx, stream, g.n);
  if (bias_grad) *bias_grad = g.bias_grad;
  const GemmKey key = key_of(g);
  auto it = ctx.plans.find(key);
  if (it == ctx.plans.end()) {
    it = ctx.plans.emplace(key, make_plan(ctx, g, key, stream)).first;
  } else {
    set_epilogue_pointers(it->second, g);
  }
  const Plan& plan = it->second;
  if (!plan.found) {
    if (may_fail) return false;
    STRATA_CHECK(plan.found, "cuBLASLt has no algorithm for the GEMM m=", g.m, " n=", g.n, " k=", g.k,
                 " op(A)=", g.trans_a ? "T" : "N", " op(B)=", g.trans_b ? "T" : "N", " lda=", g.lda,
                 " ldb=", g.ldb, " ldd=", g.ldd, " epilogue=", static_cast<int>(g.epilogue),
                 " alignments A/B/D=", key.align_a, "/", key.align_b, "/", key.align_d);
  }
  const float alpha = 1.0f, beta = g.accumulate ? 1.0f : 0.0f;
  const cublasStatus_t status =
      cublasLtMatmul(ctx.handle, plan.desc, &alpha, g.a, plan.a, g.b, plan.b, &beta, g.d, plan.d, g.d, plan.d,
                     &plan.algo, workspace(ctx, stream), kWorkspaceBytes, stream);
  if (status != CUBLAS_STATUS_SUCCESS && may_fail) {
    // Refused at launch (nothing enqueued): cached as "no algorithm", so the caller's other way from now on.
    it->second.found = false;
    return false;
  }
  CUBLAS_CHECK(status);
  return true;
}

void check_sizes(const char* op, int N, int IC, int OC) {
  STRATA_CHECK(N > 0 && IC > 0 && OC > 0, op, ": N=", N, " IC=", IC, " OC=", OC);
}

// The forward product with the given epilogue: out^T (OC,N) = W (stored (IC,OC)), op T, x inp^T (IC,N).
Gemm forward_gemm(bf16* out, const bf16* inp, const bf16* weight, int N, int IC, int OC) {
  Gemm g;
  g.trans_a = true, g.trans_b = false;
  g.m = OC, g.n = N, g.k = IC;
  g.a = weight, g.lda = IC;
  g.b = inp, g.ldb = IC;
  g.d = out, g.ldd = OC;
  return g;
}

// dinp^T (IC,N) = W (stored (IC,OC)), op N, x dout^T (OC,N), op N.
Gemm dinp_gemm(bf16* dinp, const bf16* dout, const bf16* weight, int N, int IC, int OC) {
  Gemm g;
  g.m = IC, g.n = N, g.k = OC;
  g.a = weight, g.lda = IC;
  g.b = dout, g.ldb = OC;
  g.d = dinp, g.ldd = IC;
  return g;
}

// dweight^T (IC,OC) += inp^T (IC,N), op N, x dout^T (stored (OC,N)), op T.
Gemm dweight_gemm(bf16* dweight, const bf16* dout, const bf16* inp, int N, int IC, int OC) {
  Gemm g;
  g.trans_b = true;
  g.m = IC, g.n = OC, g.k = N;
  g.a = inp, g.lda = IC;
  g.b = dout, g.ldb = OC;
  g.d = dweight, g.ldd = IC;
  g.accumulate = true;
  return g;
}

// dbias (n) `+=` the sums BGRADB wrote (fp32 or bf16): the previous value added in fp32, one rounding (as the
// GEMV's beta = 1 does it).
template <class S>
__global__ void add_bias_grad_kernel(bf16* dbias, const S* sums, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) dbias[i] = __float2bfloat16_rn(__bfloat162float(dbias[i]) + static_cast<float>(sums[i]));
}

}  // namespace

int64_t matmul_bias_grad_fallbacks() {
  return g_bias_grad_fallbacks.load();
}

void set_matmul_autotune(const std::string& cache_path) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_tune_configured = true;
  g_tune_path = cache_path;
  for (auto& [device, ctx] : contexts()) {
    ctx->plans.clear();  // their descriptors are dropped, not destroyed (see the header comment)
    ctx->tuned.clear();
    ctx->tune_loaded = false;
  }
  if (!cache_path.empty()) {
    DeviceContext& ctx = context();
    load_tuned(ctx);  // a cache that does not parse is an error now, not at the first GEMM
  }
}

std::vector<double> matmul_algorithm_times(MatmulProduct product, bf16* out, const bf16* a, const bf16* b,
                                           int N, int IC, int OC, int count, int reps) {
  STRATA_CHECK(out && a && b && count >= 1 && reps >= 1, "matmul_algorithm_times: bad arguments");
  check_sizes("matmul_algorithm_times", N, IC, OC);
  const Gemm g = product == MatmulProduct::kForward ? forward_gemm(out, a, b, N, IC, OC)
                 : product == MatmulProduct::kDinp  ? dinp_gemm(out, a, b, N, IC, OC)
                                                    : dweight_gemm(out, a, b, N, IC, OC);
  Algorithms algos;
  Plan plan;
  cublasLtHandle_t handle = nullptr;
  void* ws = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    DeviceContext& ctx = context();
    handle = ctx.handle;
    ws = workspace(ctx, nullptr);
    plan = describe(g);
    algos = algorithms(handle, plan, key_of(g), std::min(count, kMaxAlgos));
  }
  const std::vector<double> times = time_algorithms(handle, plan, g, algos, ws, nullptr, 3, reps);
  CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(plan.a));
  CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(plan.b));
  CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(plan.d));
  CUBLAS_CHECK(cublasLtMatmulDescDestroy(plan.desc));
  return times;
}

}  // namespace strata::cuda

namespace strata::ops {

using cuda::bf16;

template <>
void matmul_forward<Cuda, bf16>(const Cuda& dev, bf16* out, const bf16* inp, const bf16* weight,
                                const bf16* bias, int N, int IC, int OC) {
  using namespace cuda;
  STRATA_CHECK(out && inp && weight, "matmul_forward: null pointer");
  check_sizes("matmul_forward", N, IC, OC);
  NvtxRange range("matmul fwd", dev.stream);
  Gemm g = forward_gemm(out, inp, weight, N, IC, OC);
  if (bias) g.epilogue = Epilogue::kBias, g.bias = bias;
  run(g, static_cast<cudaStream_t>(dev.stream));
}

template <>
void matmul_gelu_forward<Cuda, bf16>(const Cuda& dev, bf16* out, bf16* pre, const bf16* inp,
                                     const bf16* weight, const bf16* bias, int N, int IC, int OC) {
  using namespace cuda;
  STRATA_CHECK(out && pre && inp && weight, "matmul_gelu_forward: null pointer");
  check_sizes("matmul_gelu_forward", N, IC, OC);
  STRATA_CHECK(OC % 8 == 0, "matmul_gelu_forward: OC=", OC,
               " is not a multiple of 8 (cuBLASLt's GELU aux output needs such a leading dimension)");
  NvtxRange range("matmul gelu fwd", dev.stream);
  Gemm g = forward_gemm(out, inp, weight, N, IC, OC);
  g.epilogue = bias ? Epilogue::kGeluAuxBias : Epilogue::kGeluAux;
  g.bias = bias;
  g.aux = pre;
  run(g, static_cast<cudaStream_t>(dev.stream));
}

namespace {

// matmul_backward, and matmul_backward_dgelu when pre is non-null: DGELU on the dinp product, or
// (dev.variant 1, for kernel_bench and the tests; or when cuBLASLt has no such algorithm) the plain product
// followed by gelu_backward in place. dbias: the GEMV of dout with a ones vector, or (dev.variant 2, for
// kernel_bench and the tests) BGRADB on the dweight product where cuBLASLt has such an algorithm.
void backward(const Cuda& dev, bf16* dinp, bf16* dweight, bf16* dbias, const bf16* dout, const bf16* inp,
              const bf16* weight, const bf16* pre, int N, int IC, int OC) {
  using namespace cuda;
  const cudaStream_t stream = static_cast<cudaStream_t>(dev.stream);
  if (dinp) {
    Gemm g = dinp_gemm(dinp, dout, weight, N, IC, OC);  // [then times gelu'(pre^T)]
    const bool fused = pre && dev.variant != 1;
    if (fused) g.epilogue = Epilogue::kDGelu, g.aux = const_cast<bf16*>(pre);  // read only
    if (!run(g, stream, /*dbias_gemv=*/false, /*may_fail=*/fused)) {
      // No DGELU algorithm for this shape on this card and library: the plain product (below).
      g.epilogue = Epilogue::kDefault, g.aux = nullptr;
      run(g, stream);
    }
    // Unfused (no algorithm, or variant 1): GELU's derivative by the elementwise kernel, in place (the
    // product rounded to bf16 first, then one more pass over dinp).
    if (pre && g.epilogue != Epilogue::kDGelu) gelu_backward(dev, dinp, dinp, pre, int64_t{N} * IC);
  }
  Gemm gw = dweight_gemm(dweight, dout, inp, N, IC, OC);
  if (dbias && dev.variant == 2) {
    // The bias gradient in the dweight product's epilogue: BGRADB sums op(B) = dout (N,OC) over k = N into
    // an fp32 scratch, or a bf16 one where the library refuses fp32, then one small kernel adds it into
    // dbias. Without either algorithm, the GEMV below.
    constexpr int kThreads = 256;
    const dim3 grid(static_cast<unsigned>(ceil_div(OC, kThreads)));
    void* sums = nullptr;
    gw.epilogue = Epilogue::kBGradB32;
    if (run(gw, stream, /*dbias_gemv=*/false, /*may_fail=*/true, &sums)) {
      launch(add_bias_grad_kernel<float>, grid, dim3(kThreads), 0, stream, dbias,
             static_cast<const float*>(sums), OC);
      return;
    }
    gw.epilogue = Epilogue::kBGradB16;
    if (run(gw, stream, /*dbias_gemv=*/false, /*may_fail=*/true, &sums)) {
      launch(add_bias_grad_kernel<bf16>, grid, dim3(kThreads), 0, stream, dbias,
             static_cast<const bf16*>(sums), OC);
      return;
    }
    ++g_bias_grad_fallbacks;
    gw.epilogue = Epilogue::kDefault;
  }
  run(gw, stream);
  if (dbias) {
    // dbias (OC,1) += dout^T (OC,N), op N, x ones (N,1).
    Gemm g;
    g.m = OC, g.n = 1, g.k = N;
    g.a = dout, g.lda = OC;
    g.d = dbias, g.ldd = OC;
    g.accumulate = true;
    run(g, stream, /*dbias_gemv=*/true);
  }
}

}  // namespace

template <>
void matmul_backward<Cuda, bf16>(const Cuda& dev, bf16* dinp, bf16* dweight, bf16* dbias, const bf16* dout,
                                 const bf16* inp, const bf16* weight, int N, int IC, int OC) {
  STRATA_CHECK(dweight && dout && inp && weight, "matmul_backward: null pointer");
  cuda::check_sizes("matmul_backward", N, IC, OC);
  cuda::NvtxRange range("matmul bwd", dev.stream);
  backward(dev, dinp, dweight, dbias, dout, inp, weight, nullptr, N, IC, OC);
}

template <>
void matmul_backward_dgelu<Cuda, bf16>(const Cuda& dev, bf16* dpre, bf16* dweight, bf16* dbias,
                                       const bf16* dout, const bf16* inp, const bf16* weight, const bf16* pre,
                                       int N, int IC, int OC) {
  STRATA_CHECK(dpre && dweight && dout && inp && weight && pre, "matmul_backward_dgelu: null pointer");
  cuda::check_sizes("matmul_backward_dgelu", N, IC, OC);
  STRATA_CHECK(IC % 8 == 0, "matmul_backward_dgelu: IC=", IC,
               " is not a multiple of 8 (cuBLASLt's GELU aux input needs such a leading dimension)");
  cuda::NvtxRange range("matmul bwd dgelu", dev.stream);
  backward(dev, dpre, dweight, dbias, dout, inp, weight, pre, N, IC, OC);
}

}  // namespace strata::ops
