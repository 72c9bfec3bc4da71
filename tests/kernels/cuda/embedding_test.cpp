// tests/kernels/cuda/embedding_test.cpp: the CUDA embedding ops (kernels/cuda/embedding.cu) against the fp32
// CPU twin on the same bf16-rounded inputs.
//
// Shapes sweep C over the vector path (8, 64, 768) and the scalar one (17, 100), with and without the
// position table, tokens drawn from a small vocabulary (many repeats: the backward's run sums) and a larger
// one, and one case on pointers offset by one element (the scalar fallback for an aligned C). Outputs start
// poisoned (NaN). The backward accumulates into random starting gradients, is called twice, and a second run
// from the same start is bitwise identical.
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/workspace.h"
#include "kernels/ops.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/tolerances.h"

namespace strata::test {
namespace {

const ops::Cpu kCpu{};

bool bitwise_equal(const std::vector<bf16>& a, const std::vector<bf16>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(bf16)) == 0;
}

std::vector<int32_t> random_tokens(size_t n, int V, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, V - 1);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = dist(rng);
  return t;
}

struct Case {
  int B, T, C, V;
  bool wpe, misalign;
  std::string name() const {
    return "B=" + std::to_string(B) + " T=" + std::to_string(T) + " C=" + std::to_string(C) +
           " V=" + std::to_string(V) + (wpe ? " wpe" : " no wpe") + (misalign ? " misaligned" : "");
  }
};
const Case kCases[] = {{1, 1, 8, 3, true, false},   {2, 5, 17, 4, true, false},
                       {4, 16, 64, 7, true, false}, {3, 7, 100, 50, false, false},
                       {2, 9, 768, 5, true, false}, {4, 8, 64, 50, true, true}};

TEST(CudaEmbedding, ForwardMatchesCpu) {
  STRATA_SKIP_WITHOUT_GPU();
  for (const Case& k : kCases) {
    SCOPED_TRACE(k.name());
    const int N = k.B * k.T;
    const size_t n = size_t(N) * k.C;
    const int Tmax = k.T + 3;  // a longer position table than the sequence
    const auto tokens = random_tokens(size_t(N), k.V, 1);
    const auto wte = random_bf16_values(size_t(k.V) * k.C, 2),
               wpe = random_bf16_values(size_t(Tmax) * k.C, 3);
    std::vector<float> ref(n);
    ops::embedding_forward(kCpu, ref.data(), tokens.data(), wte.data(), k.wpe ? wpe.data() : nullptr, k.B,
                           k.T, k.C);

    DeviceBuffer<int32_t> dtok(tokens);
    OffsetBuffer<bf16> dwte(to_bf16(wte), k.misalign), dwpe(to_bf16(wpe), k.misalign), dout(n, k.misalign);
    ops::embedding_forward(ops::Cuda{}, dout.get(), dtok.get(), dwte.get(), k.wpe ? dwpe.get() : nullptr, k.B,
                           k.T, k.C);
    STRATA_EXPECT_CLOSE(to_float(dout.download()), ref, kTolBf16Elementwise, "embedding out");
  }
}

TEST(CudaEmbedding, BackwardMatchesCpuAccumulatesAndIsDeterministic) {
  STRATA_SKIP_WITHOUT_GPU();
  for (const Case& k : kCases) {
    SCOPED_TRACE(k.name());
    const int N = k.B * k.T, Tmax = k.T + 3;
    const size_t n = size_t(N) * k.C;
    const auto tokens = random_tokens(size_t(N), k.V, 4);
    const auto dy = random_bf16_values(n, 5);
    const auto dwte0 = random_bf16_values(size_t(k.V) * k.C, 6),
               dwpe0 = random_bf16_values(size_t(Tmax) * k.C, 7);
    auto ref_dwte = dwte0, ref_dwpe = dwpe0;
    for (int call = 0; call < 2; ++call)
      ops::embedding_backward(kCpu, ref_dwte.data(), k.wpe ? ref_dwpe.data() : nullptr, dy.data(),
                              tokens.data(), k.B, k.T, k.C);

    DeviceBuffer<int32_t> dtok(tokens);
    OffsetBuffer<bf16> ddy(to_bf16(dy), k.misalign);
    DeviceBuffer<unsigned char> ws(cuda::embedding_backward_workspace_bytes(k.B, k.T));
    ops::Cuda dev;
    dev.workspace = ws.get(), dev.workspace_bytes = ws.size();
    auto run = [&](std::vector<bf16>* dwte, std::vector<bf16>* dwpe) {
      OffsetBuffer<bf16> gwte(to_bf16(dwte0), k.misalign), gwpe(to_bf16(dwpe0), k.misalign);
      for (int call = 0; call < 2; ++call) {
        ws.poison();
        ops::embedding_backward(dev, gwte.get(), k.wpe ? gwpe.get() : nullptr, ddy.get(), dtok.get(), k.B,
                                k.T, k.C);
      }
      *dwte = gwte.download(), *dwpe = gwpe.download();
    };
    std::vector<bf16> dwte, dwpe, dwte2, dwpe2;
    run(&dwte, &dwpe);
    STRATA_EXPECT_CLOSE(to_float(dwte), ref_dwte, kTolBf16Reduction, "dwte (two calls)");
    STRATA_EXPECT_CLOSE(to_float(dwpe), ref_dwpe, kTolBf16Reduction, "dwpe (two calls)");
    run(&dwte2, &dwpe2);
    EXPECT_TRUE(bitwise_equal(dwte, dwte2)) << "dwte differs between two runs";
    EXPECT_TRUE(bitwise_equal(dwpe, dwpe2)) << "dwpe differs between two runs";
  }
}

// The hot-token case: every position holds the same token, so one run covers the whole batch.
TEST(CudaEmbedding, BackwardOfOneRepeatedToken) {
  STRATA_SKIP_WITHOUT_GPU();
  const int B = 3, T = 11, C = 24, V = 4;
  const std::vector<int32_t> tokens(size_t(B * T), 2);
  const auto dy = random_bf16_values(size_t(B * T * C), 8);
  const auto dwte0 = random_bf16_values(size_t(V * C), 9);
  auto ref = dwte0;
  ops::embedding_backward(kCpu, ref.data(), static_cast<float*>(nullptr), dy.data(), tokens.data(), B, T, C);
  DeviceBuffer<int32_t> dtok(tokens);
  DeviceBuffer<bf16> ddy(to_bf16(dy)), dwte(to_bf16(dwte0));
  DeviceBuffer<unsigned char> ws(cuda::embedding_backward_workspace_bytes(B, T));
  ops::Cuda dev;
  dev.workspace = ws.get(), dev.workspace_bytes = ws.size();
  ops::embedding_backward(dev, dwte.get(), static_cast<bf16*>(nullptr), ddy.get(), dtok.get(), B, T, C);
  const auto got = dwte.download();
  STRATA_EXPECT_CLOSE(to_float(got), ref, kTolBf16Reduction, "dwte");
  for (int v : {0, 1, 3})  // untouched rows stay bitwise what they were
    for (int c = 0; c < C; ++c)
      EXPECT_EQ(bf16_to_float(got[size_t(v * C + c)]), dwte0[size_t(v * C + c)])
          << "row " << v << " col " << c;
}

TEST(CudaEmbeddingDeathTest, BackwardChecksItsWorkspace) {
  STRATA_SKIP_WITHOUT_GPU();
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const int B = 2, T = 3, C = 8;
  DeviceBuffer<int32_t> tok(std::vector<int32_t>(size_t(B * T), 0));
  DeviceBuffer<bf16> g(static_cast<size_t>(B * T * C));
  DeviceBuffer<unsigned char> ws(cuda::embedding_backward_workspace_bytes(B, T) - 1);
  ops::Cuda dev;
  dev.workspace = ws.get(), dev.workspace_bytes = ws.size();
  EXPECT_DEATH(ops::embedding_backward(dev, g.get(), g.get(), g.get(), tok.get(), B, T, C),
               "embedding_backward_workspace_bytes");
}

}  // namespace
}  // namespace strata::test
