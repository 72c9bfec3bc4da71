// kernels/cuda/cudnn_sdpa.cpp: see cudnn_sdpa.h. Host code only: the cuDNN backend API, opened with dlopen.
#include "kernels/cuda/cudnn_sdpa.h"

#include <cudnn_graph.h>
#include <dlfcn.h>

#include <array>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <utility>
#include <vector>

#include "engine/check.h"

namespace strata::cuda::cudnn {
namespace {

// ---- the library ------------------------------------------------------------------------------------------
struct Api {
  size_t (*GetVersion)() = nullptr;
  const char* (*GetErrorString)(cudnnStatus_t) = nullptr;
  void (*GetLastErrorString)(char*, size_t) = nullptr;
  cudnnStatus_t (*Create)(cudnnHandle_t*) = nullptr;
  cudnnStatus_t (*SetStream)(cudnnHandle_t, cudaStream_t) = nullptr;
  cudnnStatus_t (*CreateDescriptor)(cudnnBackendDescriptorType_t, cudnnBackendDescriptor_t*) = nullptr;
  cudnnStatus_t (*DestroyDescriptor)(cudnnBackendDescriptor_t) = nullptr;
  cudnnStatus_t (*SetAttribute)(cudnnBackendDescriptor_t, cudnnBackendAttributeName_t,
                                cudnnBackendAttributeType_t, int64_t, const void*) = nullptr;
  cudnnStatus_t (*GetAttribute)(cudnnBackendDescriptor_t const, cudnnBackendAttributeName_t,
                                cudnnBackendAttributeType_t, int64_t, int64_t*, void*) = nullptr;
  cudnnStatus_t (*Finalize)(cudnnBackendDescriptor_t) = nullptr;
  cudnnStatus_t (*Execute)(cudnnHandle_t, cudnnBackendDescriptor_t, cudnnBackendDescriptor_t) = nullptr;
};

struct Loaded {
  Library lib;
  Api api;
};

const Loaded& loaded() {
  static const Loaded l = [] {
    Loaded r;
    void* h = nullptr;
    std::string tried;
    for (const char* name : {"libcudnn.so.9", "libcudnn.so"}) {
      h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (h) break;
      const char* e = dlerror();
      tried += cat(tried.empty() ? "" : "; ", e ? e : name);
    }
    if (!h) {
      r.lib.error = cat("cuDNN not loadable (", tried, ")");
      return r;
    }
    bool missing = false;
    auto sym = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(h, name));
      if (!fn && !missing) {
        missing = true;
        r.lib.error = cat("cuDNN library lacks ", name);
      }
    };
    sym(r.api.GetVersion, "cudnnGetVersion");
    sym(r.api.GetErrorString, "cudnnGetErrorString");
    sym(r.api.GetLastErrorString, "cudnnGetLastErrorString");
    sym(r.api.Create, "cudnnCreate");
    sym(r.api.SetStream, "cudnnSetStream");
    sym(r.api.CreateDescriptor, "cudnnBackendCreateDescriptor");
    sym(r.api.DestroyDescriptor, "cudnnBackendDestroyDescriptor");
    sym(r.api.SetAttribute, "cudnnBackendSetAttribute");
    sym(r.api.GetAttribute, "cudnnBackendGetAttribute");
    sym(r.api.Finalize, "cudnnBackendFinalize");
    sym(r.api.Execute, "cudnnBackendExecute");
    if (missing) return r;
    r.lib.version = static_cast<int64_t>(r.api.GetVersion());
    // 9.8: device-property descriptors (plans built for a described GPU, and from a handle without the
    // deprecated plan/graph handle attributes).
    if (r.lib.version < 90800) {
      r.lib.error = cat("cuDNN ", r.lib.version, " is older than 9.8, which these graphs need");
      return r;
    }
    r.lib.ok = true;
    return r;
  }();
  return l;
}

const Api& api() {
  const Loaded& l = loaded();
  if (!l.lib.ok) throw Error(cat("attention through cuDNN: ", l.lib.error));
  return l.api;
}

std::string last_error(cudnnStatus_t st) {
  const Api& a = loaded().api;
  char buf[1024] = {0};
  a.GetLastErrorString(buf, sizeof buf);
  std::string msg = a.GetErrorString(st);
  if (buf[0]) msg += cat(": ", buf);
  for (char& c : msg)
    if (c == '\n') c = ' ';
  return msg;
}

// A cuDNN status that is not success, with the call it came from.
struct Failure {
  cudnnStatus_t status;
  std::string what;
};

void ok(cudnnStatus_t st, const char* what) {
  if (st != CUDNN_STATUS_SUCCESS) throw Failure{st, cat(what, ": ", last_error(st))};
}

// ---- descriptors ------------------------------------------------------------------------------------------
class Desc {
 public:
  Desc() = default;
  explicit Desc(cudnnBackendDescriptorType_t type) {
    ok(api().CreateDescriptor(type, &d_), "create descriptor");
  }
  ~Desc() {
    if (d_) api().DestroyDescriptor(d_);
  }
  Desc(Desc&& o) noexcept : d_(std::exchange(o.d_, nullptr)) {}
  Desc& operator=(Desc&& o) noexcept {
    std::swap(d_, o.d_);
    return *this;
  }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;
  cudnnBackendDescriptor_t get() const { return d_; }

  Desc& set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t n, const void* v) {
    ok(api().SetAttribute(d_, name, type, n, v), "set attribute");
    return *this;
  }
  Desc& i64(cudnnBackendAttributeName_t name, int64_t v) { return set(name, CUDNN_TYPE_INT64, 1, &v); }
  Desc& i64s(cudnnBackendAttributeName_t name, const std::vector<int64_t>& v) {
    return set(name, CUDNN_TYPE_INT64, static_cast<int64_t>(v.size()), v.data());
  }
  Desc& dtype(cudnnBackendAttributeName_t name, cudnnDataType_t v) {
    return set(name, CUDNN_TYPE_DATA_TYPE, 1, &v);
  }
  Desc& flag(cudnnBackendAttributeName_t name, bool v) { return set(name, CUDNN_TYPE_BOOLEAN, 1, &v); }
  Desc& desc(cudnnBackendAttributeName_t name, cudnnBackendDescriptor_t v) {
    return set(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &v);
  }
  Desc& finalize(const char* what) {
    ok(api().Finalize(d_), what);
    return *this;
  }

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
};

// ---- the graphs -------------------------------------------------------------------------------------------
// Tensor ids of the variant pack; virtual tensors count up from kVirtual.
enum Uid : int64_t {
  kQ = 1,
  kK,
  kV,
  kO,
  kStats,
  kScale,
  kMaskValue,
  kdO,
  kdQ,
  kdK,
  kdV,
  kSum,
  kdQAccum,
  kOne,
  kVirtual = 100,
};

using Dims = std::vector<int64_t>;

// Descriptors of one graph, kept alive as long as its plan.
struct Graph {
  std::vector<Desc> keep;
  std::vector<cudnnBackendDescriptor_t> ops;
  int64_t next_virtual = kVirtual;

  cudnnBackendDescriptor_t add(Desc d) {
    keep.push_back(std::move(d));
    return keep.back().get();
  }
  cudnnBackendDescriptor_t tensor(int64_t uid, const Dims& dims, const Dims& strides, cudnnDataType_t type,
                                  bool is_virtual = false, bool by_value = false,
                                  cudnnBackendTensorReordering_t reorder = CUDNN_TENSOR_REORDERING_NONE) {
    Desc t(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    t.dtype(CUDNN_ATTR_TENSOR_DATA_TYPE, type)
        .i64s(CUDNN_ATTR_TENSOR_DIMENSIONS, dims)
        .i64s(CUDNN_ATTR_TENSOR_STRIDES, strides)
        .i64(CUDNN_ATTR_TENSOR_UNIQUE_ID, uid)
        .i64(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, 16)
        .flag(CUDNN_ATTR_TENSOR_IS_VIRTUAL, is_virtual)
        .flag(CUDNN_ATTR_TENSOR_IS_BY_VALUE, by_value);
    if (reorder != CUDNN_TENSOR_REORDERING_NONE)
      t.set(CUDNN_ATTR_TENSOR_REORDERING_MODE, CUDNN_TYPE_TENSOR_REORDERING_MODE, 1, &reorder);
    t.finalize("tensor descriptor");
    return add(std::move(t));
  }
  cudnnBackendDescriptor_t virt(const Dims& dims, const Dims& strides,
                                cudnnDataType_t type = CUDNN_DATA_FLOAT,
                                cudnnBackendTensorReordering_t reorder = CUDNN_TENSOR_REORDERING_NONE) {
    return tensor(next_virtual++, dims, strides, type, true, false, reorder);
  }
  cudnnBackendDescriptor_t scalar(int64_t uid) {
    return tensor(uid, {1, 1, 1, 1}, {1, 1, 1, 1}, CUDNN_DATA_FLOAT, false, true);
  }

  void op(Desc d, const char* what) {
    d.finalize(what);
    ops.push_back(add(std::move(d)));
  }
  // y = mode(x[, b[, t]]) elementwise (b, t broadcast), in fp32 (the index generators: along `axis`).
  void pointwise(cudnnPointwiseMode_t mode, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b,
                 cudnnBackendDescriptor_t y, cudnnBackendDescriptor_t t = nullptr, int64_t axis = -1,
                 cudnnDataType_t precision = CUDNN_DATA_FLOAT) {
    Desc pw(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    pw.set(CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode)
        .dtype(CUDNN_ATTR_POINTWISE_MATH_PREC, precision);
    if (axis >= 0) pw.i64(CUDNN_ATTR_POINTWISE_AXIS, axis);
    pw.finalize("pointwise descriptor");
    cudnnBackendDescriptor_t pwd = add(std::move(pw));
    Desc o(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    o.desc(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pwd).desc(CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x);
    if (b) o.desc(CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b);
    if (t) o.desc(CUDNN_ATTR_OPERATION_POINTWISE_TDESC, t);
    o.desc(CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y);
    op(std::move(o), "pointwise operation");
  }
  void matmul(cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t c) {
    Desc m(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    m.dtype(CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_DATA_FLOAT).finalize("matmul descriptor");
    cudnnBackendDescriptor_t md = add(std::move(m));
    Desc o(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    o.desc(CUDNN_ATTR_OPERATION_MATMUL_ADESC, a)
        .desc(CUDNN_ATTR_OPERATION_MATMUL_BDESC, b)
        .desc(CUDNN_ATTR_OPERATION_MATMUL_CDESC, c)
        .desc(CUDNN_ATTR_OPERATION_MATMUL_DESC, md);
    op(std::move(o), "matmul operation");
  }
  void reduce(cudnnReduceTensorOp_t mode, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
    Desc r(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
    r.set(CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode)
        .dtype(CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_DATA_FLOAT)
        .finalize("reduction descriptor");
    cudnnBackendDescriptor_t rd = add(std::move(r));
    Desc o(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
    o.desc(CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x)
        .desc(CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y)
        .desc(CUDNN_ATTR_OPERATION_REDUCTION_DESC, rd);
    op(std::move(o), "reduction operation");
  }
  void reshape(cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
    Desc o(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
    o.desc(CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x).desc(CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y);
    op(std::move(o), "reshape operation");
  }
};

// Strata's layouts as (B, heads, T, HS) views: qkv rows of (NH+2*KVH)*HS, out rows of NH*HS.
struct Layout {
  Dims q, kv, q_stride, kv_stride, kt, kt_stride, o_stride, s, s_stride, st, st_stride, row, row_stride;
  explicit Layout(const SdpaShape& sh) {
    const int64_t B = sh.B, T = sh.T, NH = sh.NH, KVH = sh.KVH, HS = sh.HS;
    const int64_t C3 = (NH + 2 * KVH) * HS;
    q = {B, NH, T, HS};
    kv = {B, KVH, T, HS};
    q_stride = {T * C3, HS, C3, 1};
    kv_stride = q_stride;
    kt = {B, KVH, HS, T};
    kt_stride = {T * C3, HS, 1, C3};
    o_stride = {T * NH * HS, HS, NH * HS, 1};
    s = {B, NH, T, T};
    s_stride = {NH * T * T, T * T, T, 1};
    st = {B, NH, T, T};  // the transposed scores: (s, t) with strides swapped
    st_stride = {NH * T * T, T * T, 1, T};
    row = {B, NH, T, 1};
    row_stride = {NH * T, T, 1, 1};
  }
};

// -inf (kMaskValue) above the diagonal.
cudnnBackendDescriptor_t causal_mask(Graph& g, const Layout& l, cudnnBackendDescriptor_t x) {
  cudnnBackendDescriptor_t row = g.virt(l.s, l.s_stride), col = g.virt(l.s, l.s_stride);
  g.pointwise(CUDNN_POINTWISE_GEN_INDEX, x, nullptr, row, nullptr, 2);
  g.pointwise(CUDNN_POINTWISE_GEN_INDEX, x, nullptr, col, nullptr, 3);
  cudnnBackendDescriptor_t keep = g.virt(l.s, l.s_stride, CUDNN_DATA_BOOLEAN);
  g.pointwise(CUDNN_POINTWISE_CMP_GE, row, col, keep);
  cudnnBackendDescriptor_t masked = g.virt(l.s, l.s_stride);
  g.pointwise(CUDNN_POINTWISE_BINARY_SELECT, x, g.scalar(kMaskValue), masked, keep);
  return masked;
}

void build_forward(Graph& g, const SdpaShape& sh) {
  const Layout l(sh);
  cudnnBackendDescriptor_t q = g.tensor(kQ, l.q, l.q_stride, CUDNN_DATA_BFLOAT16);
  cudnnBackendDescriptor_t kt = g.tensor(kK, l.kt, l.kt_stride, CUDNN_DATA_BFLOAT16);
  cudnnBackendDescriptor_t v = g.tensor(kV, l.kv, l.kv_stride, CUDNN_DATA_BFLOAT16);
  cudnnBackendDescriptor_t o = g.tensor(kO, l.q, l.o_stride, CUDNN_DATA_BFLOAT16);
  cudnnBackendDescriptor_t stats = g.tensor(kStats, l.row, l.row_stride, CUDNN_DATA_FLOAT);
  cudnnBackendDescriptor_t s = g.virt(l.s, l.s_stride);
  g.matmul(q, kt, s);
  cudnnBackendDescriptor_t scaled = g.virt(l.s, l.s_stride);
  g.pointwise(CUDNN_POINTWISE_MUL, s, g.scalar(kScale), scaled);
  cudnnBackendDescriptor_t x = causal_mask(g, l, scaled);
  // softmax, its log-sum-exp written out: max, x - max, exp, sum, max + log(sum), exp / sum.
  cudnnBackendDescriptor_t mx = g.virt(l.row, l.row_stride);
  g.reduce(CUDNN_REDUCE_TENSOR_MAX, x, mx);
  cudnnBackendDescriptor_t shifted = g.virt(l.s, l.s_stride), e = g.virt(l.s, l.s_stride);
  g.pointwise(CUDNN_POINTWISE_SUB, x, mx, shifted);
  g.pointwise(CUDNN_POINTWISE_EXP, shifted, nullptr, e);
  cudnnBackendDescriptor_t sum = g.virt(l.row, l.row_stride), logsum = g.virt(l.row, l.row_stride);
  g.reduce(CUDNN_REDUCE_TENSOR_ADD, e, sum);
  g.pointwise(CUDNN_POINTWISE_LOG, sum, nullptr, logsum);
  g.pointwise(CUDNN_POINTWISE_ADD, mx, logsum, stats);
  cudnnBackendDescriptor_t p = g.virt(l.s, l.s_stride, CUDNN_DATA_BFLOAT16, CUDNN_TENSOR_REORDERING_F16x16);
  g.pointwise(CUDNN_POINTWISE_DIV, e, sum, p);
  g.matmul(p, v, o);
}

// dQ through an fp32 accumulator (dq_accumulate: the non-deterministic engines, which add partial sums with
// atomics; workspace B*NH*T*HS*4 bytes after the plan's own), or written directly (the deterministic form,
// whose plan keeps dP for the whole sequence in its workspace: ~B*NH*T*T*2 bytes). GQA: dK and dV per query
// head, then summed over each group.
void build_backward(Graph& g, const SdpaShape& sh, bool dq_accumulate) {
  const Layout l(sh);
  cudnnBackendDescriptor_t q = g.tensor(kQ, l.q, l.q_stride, CUDNN_DATA_BFLOAT16);
  cudnnBackendDescriptor_t kt = g.tensor(kK, l.kt, l.kt_stride, CUDNN_DATA_BFLOAT16);
  cudnnBackendDescriptor_t vt = g.tensor(kV, l.kt, l.kt_stride, CUDNN_DATA_BFLOAT16);
  cudnnBackendDescriptor_t o = g.tensor(kO, l.q, l.o_stride, CUDNN_DATA_BFLOAT16);
  cudnnBackendDescriptor_t dout = g.tensor(kdO, l.q, l.o_stride, CUDNN_DATA_BFLOAT16);
  cudnnBackendDescriptor_t stats = g.tensor(kStats, l.row, l.row_stride, CUDNN_DATA_FLOAT);
  cudnnBackendDescriptor_t dq = g.tensor(kdQ, l.q, l.q_stride, CUDNN_DATA_BFLOAT16);
  cudnnBackendDescriptor_t dk = g.tensor(kdK, l.kv, l.kv_stride, CUDNN_DATA_BFLOAT16);
  cudnnBackendDescriptor_t dv = g.tensor(kdV, l.kv, l.kv_stride, CUDNN_DATA_BFLOAT16);
  cudnnBackendDescriptor_t scale = g.scalar(kScale);
  const Dims full = l.q, full_stride = {int64_t{sh.NH} * sh.T * sh.HS, int64_t{sh.T} * sh.HS, sh.HS, 1};
  // out (KVH heads) = a b; under GQA a per-query-head product, then a sum over each group.
  auto kv_gradient = [&](cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b,
                         cudnnBackendDescriptor_t out) {
    if (sh.KVH == sh.NH) return g.matmul(a, b, out);
    cudnnBackendDescriptor_t per_head = g.virt(full, full_stride, CUDNN_DATA_BFLOAT16);
    g.matmul(a, b, per_head);
    g.reduce(CUDNN_REDUCE_TENSOR_ADD, per_head, out);
  };
  // delta = rowsum(dO * O) (times 1: the dropout scale's place), written to the caller's scratch
  cudnnBackendDescriptor_t prod = g.virt(l.q, l.o_stride), rowsum = g.virt(l.row, l.row_stride);
  g.pointwise(CUDNN_POINTWISE_MUL, dout, o, prod);
  g.reduce(CUDNN_REDUCE_TENSOR_ADD, prod, rowsum);
  cudnnBackendDescriptor_t delta = g.tensor(kSum, l.row, l.row_stride, CUDNN_DATA_FLOAT);
  g.pointwise(CUDNN_POINTWISE_MUL, rowsum, g.scalar(kOne), delta);
  // P = exp(scale * Q K^T - lse), masked above the diagonal
  cudnnBackendDescriptor_t s = g.virt(l.s, l.s_stride), scaled = g.virt(l.s, l.s_stride);
  g.matmul(q, kt, s);
  g.pointwise(CUDNN_POINTWISE_MUL, s, scale, scaled);
  cudnnBackendDescriptor_t shifted = g.virt(l.s, l.s_stride);
  g.pointwise(CUDNN_POINTWISE_SUB, scaled, stats, shifted);
  cudnnBackendDescriptor_t p = g.virt(l.s, l.s_stride);
  g.pointwise(CUDNN_POINTWISE_EXP, causal_mask(g, l, shifted), nullptr, p);
  // dV = P^T dO
  cudnnBackendDescriptor_t pt = g.virt(l.st, l.st_stride, CUDNN_DATA_BFLOAT16);
  g.reshape(p, pt);
  kv_gradient(pt, dout, dv);
  // dS = P (dO V^T - delta) scale
  cudnnBackendDescriptor_t dp = g.virt(l.s, l.s_stride);
  g.matmul(dout, vt, dp);
  cudnnBackendDescriptor_t centred = g.virt(l.s, l.s_stride), dsu = g.virt(l.s, l.s_stride);
  g.pointwise(CUDNN_POINTWISE_SUB, dp, delta, centred);
  g.pointwise(CUDNN_POINTWISE_MUL, centred, p, dsu);
  cudnnBackendDescriptor_t ds = g.virt(l.s, l.s_stride);
  g.pointwise(CUDNN_POINTWISE_MUL, dsu, scale, ds);
  // dK = dS^T Q
  cudnnBackendDescriptor_t dst = g.virt(l.st, l.st_stride, CUDNN_DATA_BFLOAT16);
  g.reshape(ds, dst);
  kv_gradient(dst, q, dk);
  // dQ = dS K
  cudnnBackendDescriptor_t k = g.virt(l.kv, l.kv_stride, CUDNN_DATA_BFLOAT16);
  g.reshape(kt, k);
  if (dq_accumulate) {
    cudnnBackendDescriptor_t acc = g.tensor(kdQAccum, full, full_stride, CUDNN_DATA_FLOAT);
    g.matmul(ds, k, acc);
    g.pointwise(CUDNN_POINTWISE_IDENTITY, acc, nullptr, dq);
  } else {
    g.matmul(ds, k, dq);
  }
}

// ---- plans ------------------------------------------------------------------------------------------------
struct Plan {
  Graph graph;
  Desc opgraph, plan;
  PlanInfo info;
  int64_t accumulator_offset = -1;  // the dQ accumulator's place in the workspace (-1: none)
};

int64_t round_up(int64_t n, int64_t to) {
  return (n + to - 1) / to * to;
}

// The plan's workspace, then (the accumulating backward) the fp32 dQ accumulator, which cuDNN >= 9.6
// initialises itself (cudnn-frontend zeroes it only for older versions; these graphs need 9.8).
void set_workspace(Plan& p, Direction dir, const SdpaShape& sh, bool require_deterministic,
                   int64_t plan_bytes) {
  p.info.workspace_bytes = plan_bytes;
  if (dir == Direction::kBackward && !require_deterministic) {
    p.accumulator_offset = round_up(plan_bytes, 256);
    p.info.workspace_bytes = p.accumulator_offset + int64_t{sh.B} * sh.NH * sh.T * sh.HS * 4;
  }
}

const char* name(Direction d) {
  return d == Direction::kForward ? "forward" : "backward";
}

std::string shape_text(const SdpaShape& s) {
  return cat("B=", s.B, " T=", s.T, " NH=", s.NH, " KVH=", s.KVH, " HS=", s.HS);
}

// make_plan false (deviceless checks): the first acceptable configuration is reported without a plan, since a
// plan's finalisation compiles and loads its kernels, which needs a driver.
std::unique_ptr<Plan> build_plan(Direction dir, const SdpaShape& sh, cudnnBackendDescriptor_t device,
                                 bool require_deterministic, bool make_plan) {
  STRATA_CHECK(sh.B > 0 && sh.T > 0 && sh.KVH > 0 && sh.NH % sh.KVH == 0 && sh.HS > 0,
               "cudnn sdpa: bad shape ", shape_text(sh));
  const std::string what = cat("cuDNN SDPA ", name(dir), " graph (", shape_text(sh), ")");
  auto p = std::make_unique<Plan>();
  try {
    if (dir == Direction::kForward)
      build_forward(p->graph, sh);
    else
      build_backward(p->graph, sh, !require_deterministic);
    p->opgraph = Desc(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    p->opgraph
        .set(CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
             static_cast<int64_t>(p->graph.ops.size()), p->graph.ops.data())
        .finalize("operation graph");
    Desc heur(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    heur.desc(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, p->opgraph.get())
        .set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode)
        .desc(CUDNN_ATTR_ENGINEHEUR_DEVICEPROP, device)
        .finalize("engine heuristics");
    int64_t n = 0;
    ok(api().GetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &n,
                          nullptr),
       "heuristic result count");
    std::vector<Desc> cfgs;
    std::vector<cudnnBackendDescriptor_t> raw;
    for (int64_t i = 0; i < n; ++i) {
      cfgs.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
      raw.push_back(cfgs.back().get());
    }
    int64_t got = 0;
    if (n > 0)
      ok(api().GetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n, &got,
                            raw.data()),
         "heuristic results");
    p->info.candidates = static_cast<int>(got);
    std::string last;
    for (int64_t i = 0; i < got; ++i) {
      Desc engine(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
      cudnnBackendDescriptor_t e = engine.get();
      int64_t one = 0;
      ok(api().GetAttribute(raw[i], CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &one, &e),
         "engine of a configuration");
      int64_t index = -1;
      ok(api().GetAttribute(e, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &one, &index),
         "engine index");
      std::array<cudnnBackendNumericalNote_t, CUDNN_NUMERICAL_NOTE_TYPE_COUNT> notes{};
      int64_t nnotes = 0;
      ok(api().GetAttribute(e, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                            static_cast<int64_t>(notes.size()), &nnotes, notes.data()),
         "engine numerical notes");
      // The accumulating backward adds dQ's partial sums with atomics whatever the engine's notes say.
      bool deterministic = dir == Direction::kForward || require_deterministic;
      for (int64_t j = 0; j < nnotes; ++j)
        if (notes[j] == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC) deterministic = false;
      if (require_deterministic && !deterministic) {
        ++p->info.rejected;
        last = cat("engine ", index, " is nondeterministic");
        continue;
      }
      int64_t ws = 0;
      if (make_plan) {
        Desc plan(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
        plan.desc(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, raw[i])
            .desc(CUDNN_ATTR_EXECUTION_PLAN_DEVICEPROP, device);
        if (cudnnStatus_t st = api().Finalize(plan.get()); st != CUDNN_STATUS_SUCCESS) {
          ++p->info.rejected;
          last = cat("engine ", index, ": ", last_error(st));
          continue;
        }
        ok(api().GetAttribute(plan.get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &one,
                              &ws),
           "plan workspace size");
        p->plan = std::move(plan);
      } else {
        ok(api().GetAttribute(raw[i], CUDNN_ATTR_ENGINECFG_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &one, &ws),
           "configuration workspace size");
      }
      p->info.engine = index;
      set_workspace(*p, dir, sh, require_deterministic, ws);
      p->info.deterministic = deterministic;
      return p;
    }
    throw Error(cat(what, ": no engine (", got, " offered", last.empty() ? "" : cat("; last: ", last), ")"));
  } catch (const Failure& f) {
    throw Error(cat(what, ": ", f.what));
  }
}

Desc device_from_json(const std::string& json) {
  try {
    Desc d(CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR);
    d.set(CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION, CUDNN_TYPE_CHAR, static_cast<int64_t>(json.size()),
          json.data())
        .finalize("device properties");
    return d;
  } catch (const Failure& f) {
    throw Error(cat("cuDNN device description: ", f.what));
  }
}

// The current thread's handle, device description and plans (cuDNN handles are per thread and device).
struct Context {
  cudnnHandle_t handle = nullptr;
  Desc device;
  std::map<std::tuple<int, int, int, int, int, int, bool>, std::unique_ptr<Plan>> plans;
};

Context& context() {
  thread_local Context c;
  if (!c.handle) {
    try {
      ok(api().Create(&c.handle), "cudnnCreate");
      c.device = Desc(CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR);
      c.device.set(CUDNN_ATTR_DEVICEPROP_HANDLE, CUDNN_TYPE_HANDLE, 1, &c.handle)
          .finalize("device properties");
    } catch (const Failure& f) {
      throw Error(cat("attention through cuDNN: ", f.what));
    }
  }
  return c;
}

Plan& cached(Direction dir, const SdpaShape& sh, bool require_deterministic) {
  Context& c = context();
  // The forward has one graph, deterministic either way.
  require_deterministic = require_deterministic || dir == Direction::kForward;
  auto key = std::make_tuple(static_cast<int>(dir), sh.B, sh.T, sh.NH, sh.KVH, sh.HS, require_deterministic);
  auto it = c.plans.find(key);
  if (it == c.plans.end())
    it = c.plans.emplace(key, build_plan(dir, sh, c.device.get(), require_deterministic, true)).first;
  return *it->second;
}

void execute(Plan& p, void* stream, const std::vector<int64_t>& uids, const std::vector<void*>& ptrs,
             void* workspace, int64_t workspace_bytes, const char* what) {
  STRATA_CHECK(workspace_bytes >= p.info.workspace_bytes, what, ": workspace of ", workspace_bytes,
               " bytes, the plan needs ", p.info.workspace_bytes);
  Context& c = context();
  try {
    ok(api().SetStream(c.handle, static_cast<cudaStream_t>(stream)), "cudnnSetStream");
    Desc pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
    pack.set(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, static_cast<int64_t>(uids.size()),
             uids.data())
        .set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, static_cast<int64_t>(ptrs.size()),
             ptrs.data())
        .set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace)
        .finalize("variant pack");
    ok(api().Execute(c.handle, p.plan.get(), pack.get()), "cudnnBackendExecute");
  } catch (const Failure& f) {
    STRATA_CHECK(false, what, ": ", f.what);
  }
}

// The query, key and value parts of a (B,T,(NH+2*KVH)*HS) bf16 tensor (qkv or dqkv).
std::array<void*, 3> qkv_parts(const void* base, const SdpaShape& sh) {
  char* b = const_cast<char*>(static_cast<const char*>(base));
  return {b, b + int64_t{sh.NH} * sh.HS * 2, b + int64_t{sh.NH + sh.KVH} * sh.HS * 2};
}

// The by-value scalars of both graphs; their addresses go into the variant pack.
struct Scalars {
  float scale, mask = -std::numeric_limits<float>::infinity(), one = 1.0f;
  explicit Scalars(const SdpaShape& sh) : scale(1.0f / std::sqrt(static_cast<float>(sh.HS))) {}
};

}  // namespace

const Library& library() {
  return loaded().lib;
}

PlanInfo plan_deviceless(Direction dir, const SdpaShape& sh, const std::string& device_json,
                         bool require_deterministic) {
  Desc device = device_from_json(device_json);
  return build_plan(dir, sh, device.get(), require_deterministic, false)->info;
}

PlanInfo plan(Direction dir, const SdpaShape& sh, bool require_deterministic) {
  return cached(dir, sh, require_deterministic).info;
}

void forward(void* stream, void* out, float* lse, const void* qkv, const SdpaShape& sh,
             bool require_deterministic, void* workspace, int64_t workspace_bytes) {
  Plan& p = cached(Direction::kForward, sh, require_deterministic);
  Scalars c(sh);
  const auto in = qkv_parts(qkv, sh);
  execute(p, stream, {kQ, kK, kV, kO, kStats, kScale, kMaskValue},
          {in[0], in[1], in[2], out, lse, &c.scale, &c.mask}, workspace, workspace_bytes,
          "cudnn sdpa forward");
}

void backward(void* stream, void* dqkv, float* delta, const void* dout, const void* out, const void* qkv,
              const float* lse, const SdpaShape& sh, bool require_deterministic, void* workspace,
              int64_t workspace_bytes) {
  Plan& p = cached(Direction::kBackward, sh, require_deterministic);
  Scalars c(sh);
  const auto in = qkv_parts(qkv, sh), grad = qkv_parts(dqkv, sh);
  std::vector<int64_t> uids = {kQ, kK, kV, kO, kdO, kStats, kdQ, kdK, kdV, kSum, kScale, kMaskValue, kOne};
  std::vector<void*> ptrs = {in[0],
                             in[1],
                             in[2],
                             const_cast<void*>(out),
                             const_cast<void*>(dout),
                             const_cast<float*>(lse),
                             grad[0],
                             grad[1],
                             grad[2],
                             delta,
                             &c.scale,
                             &c.mask,
                             &c.one};
  if (p.accumulator_offset >= 0) {
    uids.push_back(kdQAccum);
    ptrs.push_back(static_cast<char*>(workspace) + p.accumulator_offset);
  }
  execute(p, stream, uids, ptrs, workspace, workspace_bytes, "cudnn sdpa backward");
}

}  // namespace strata::cuda::cudnn
