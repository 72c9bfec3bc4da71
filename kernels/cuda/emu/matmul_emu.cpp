// kernels/cuda/emu/matmul_emu.cpp: the CPU emulation's stand-in for kernels/cuda/matmul.cu, whose cuBLASLt
// calls cannot run without a GPU. It gives the emulated CUDA backend the same four ops with cuBLASLt's
// numerics as matmul.cu configures them: bf16 operands read exactly, fp32 accumulation (the CPU twin,
// OpenBLAS sgemm), the bias, GELU and GELU-derivative epilogues in fp32, one rounding to bf16 of each output;
// `+=` outputs (dweight, dbias) add the previous bf16 value in fp32 before that rounding (cuBLASLt's beta =
// 1). So the model runner built on the emulation (engine/cuda_model.*) runs end to end here. It is not a test
// of matmul.cu: that is tests/kernels/cuda/matmul_test.cpp, on a GPU.
#include "kernels/cuda/emu/emu.h"

#include <cuda_bf16.h>

#include <vector>

#include "engine/check.h"
#include "kernels/cuda/nvtx.h"
#include "kernels/ops.h"

namespace strata::ops {
namespace {

using bf16 = __nv_bfloat16;
const Cpu kCpu{};

std::vector<float> widen(const bf16* p, size_t n) {
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = __bfloat162float(p[i]);
  return out;
}
void narrow(bf16* p, const std::vector<float>& v) {
  for (size_t i = 0; i < v.size(); ++i) p[i] = __float2bfloat16_rn(v[i]);
}
void check_sizes(const char* op, int N, int IC, int OC) {
  STRATA_CHECK(N > 0 && IC > 0 && OC > 0, op, ": N=", N, " IC=", IC, " OC=", OC);
}

}  // namespace

template <>
void matmul_forward<Cuda, bf16>(const Cuda& dev, bf16* out, const bf16* inp, const bf16* weight, const bf16* bias,
                                int N, int IC, int OC) {
  check_sizes("matmul_forward", N, IC, OC);
  cuda::NvtxRange range("matmul fwd", dev.stream);  // the names matmul.cu's scopes have (the op timer's rows)
  emu::on_stream(static_cast<cudaStream_t>(dev.stream), [=] {
    const size_t n = size_t(N), ic = size_t(IC), oc = size_t(OC);
    std::vector<float> o(n * oc);
    const std::vector<float> x = widen(inp, n * ic), w = widen(weight, oc * ic);
    const std::vector<float> b = bias ? widen(bias, oc) : std::vector<float>();
    ops::matmul_forward(kCpu, o.data(), x.data(), w.data(), bias ? b.data() : nullptr, N, IC, OC);
    narrow(out, o);
  });
}

template <>
void matmul_gelu_forward<Cuda, bf16>(const Cuda& dev, bf16* out, bf16* pre, const bf16* inp, const bf16* weight,
                                     const bf16* bias, int N, int IC, int OC) {
  check_sizes("matmul_gelu_forward", N, IC, OC);
  cuda::NvtxRange range("matmul gelu fwd", dev.stream);
  emu::on_stream(static_cast<cudaStream_t>(dev.stream), [=] {
    const size_t n = size_t(N), ic = size_t(IC), oc = size_t(OC);
    std::vector<float> o(n * oc), p(n * oc);
    const std::vector<float> x = widen(inp, n * ic), w = widen(weight, oc * ic);
    const std::vector<float> b = bias ? widen(bias, oc) : std::vector<float>();
    ops::matmul_gelu_forward(kCpu, o.data(), p.data(), x.data(), w.data(), bias ? b.data() : nullptr, N, IC,
                             OC);
    narrow(out, o);
    narrow(pre, p);
  });
}

namespace {

// matmul_backward, and matmul_backward_dgelu when pre is non-null (dinp is then dpre, never null): the CPU
// twin on widened copies, each output rounded once.
void backward(const Cuda& dev, bf16* dinp, bf16* dweight, bf16* dbias, const bf16* dout, const bf16* inp,
              const bf16* weight, const bf16* pre, int N, int IC, int OC) {
  emu::on_stream(static_cast<cudaStream_t>(dev.stream), [=] {
    const size_t n = size_t(N), ic = size_t(IC), oc = size_t(OC);
    const std::vector<float> dy = widen(dout, n * oc), x = widen(inp, n * ic), w = widen(weight, oc * ic);
    std::vector<float> dx(dinp ? n * ic : 0), dw = widen(dweight, oc * ic);
    std::vector<float> db = dbias ? widen(dbias, oc) : std::vector<float>();
    if (pre)
      ops::matmul_backward_dgelu(kCpu, dx.data(), dw.data(), dbias ? db.data() : nullptr, dy.data(), x.data(),
                                 w.data(), widen(pre, n * ic).data(), N, IC, OC);
    else
      ops::matmul_backward(kCpu, dinp ? dx.data() : nullptr, dw.data(), dbias ? db.data() : nullptr,
                           dy.data(), x.data(), w.data(), N, IC, OC);
    if (dinp) narrow(dinp, dx);
    narrow(dweight, dw);
    if (dbias) narrow(dbias, db);
  });
}

}  // namespace

template <>
void matmul_backward<Cuda, bf16>(const Cuda& dev, bf16* dinp, bf16* dweight, bf16* dbias, const bf16* dout,
                                 const bf16* inp, const bf16* weight, int N, int IC, int OC) {
  check_sizes("matmul_backward", N, IC, OC);
  STRATA_CHECK(dweight != nullptr, "matmul_backward: dweight is required");
  cuda::NvtxRange range("matmul bwd", dev.stream);
  backward(dev, dinp, dweight, dbias, dout, inp, weight, nullptr, N, IC, OC);
}

template <>
void matmul_backward_dgelu<Cuda, bf16>(const Cuda& dev, bf16* dpre, bf16* dweight, bf16* dbias,
                                       const bf16* dout, const bf16* inp, const bf16* weight, const bf16* pre,
                                       int N, int IC, int OC) {
  check_sizes("matmul_backward_dgelu", N, IC, OC);
  STRATA_CHECK(dpre && dweight && pre, "matmul_backward_dgelu: null pointer");
  cuda::NvtxRange range("matmul bwd dgelu", dev.stream);
  backward(dev, dpre, dweight, dbias, dout, inp, weight, pre, N, IC, OC);
}

}  // namespace strata::ops
