// tests/kernels/cudnn_sdpa_plan_test.cpp: kernels/cuda/cudnn_sdpa.cpp's graphs checked by cuDNN itself,
// without a GPU. cuDNN (>= 9.8) plans for a described device: its heuristic returns only the engine
// configurations whose support checks accept the graph, so an offered configuration says that a
// fused-attention engine recognised the graph (shapes, layouts, data types, the causal mask, the softmax
// statistics, GQA's head reduction) for that architecture. What this cannot show, the numerics and the speed,
// the gpu test (cudnn_sdpa_test.cpp) and bench/kernel_bench.cu measure on a card.
//
// The devices are tests/data/cudnn/*.json: the members cuDNN 9.19's device-description parser asks for (each
// missing one is named in its error log), filled with the published properties of an H100 SXM (sm_90, 132
// SMs, 227 KB of shared memory per block, 50 MB L2) and an A100 SXM (sm_80, 108 SMs, 163 KB, 40 MB). cuDNN's
// heuristic loads libcuda.so.1; on a machine without a driver the CUDA toolkit's stub library stands in (it
// is enough for the support checks, which compile nothing), and without either the test skips.
#include <dlfcn.h>

#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "engine/check.h"
#include "kernels/cuda/cudnn_sdpa.h"

namespace strata::test {
namespace {

using cuda::cudnn::Direction;
using cuda::cudnn::SdpaShape;

std::string read(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Why these tests cannot run here, or "" when they can.
std::string unavailable() {
  if (!cuda::cudnn::library().ok) return cuda::cudnn::library().error;
  // cuDNN loads NVRTC for its heuristic and unloads it again, after which the memory NVRTC still holds
  // (reachable from its globals while it is loaded) shows as 2.9 MB of leaks from an unknown module under
  // LeakSanitizer. Kept loaded for the process, it is not a leak.
  for (const char* nvrtc : {"libnvrtc.so.13", "libnvrtc.so.12"})
    if (dlopen(nvrtc, RTLD_NOW | RTLD_NODELETE)) break;
  if (dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL)) return "";
#if defined(STRATA_CUDA_STUB_DIR)
  // The stub's soname is libcuda.so.1, so cuDNN's own dlopen("libcuda.so.1") then finds it loaded.
  if (dlopen(STRATA_CUDA_STUB_DIR "/libcuda.so", RTLD_NOW | RTLD_GLOBAL)) return "";
#endif
  return "no libcuda.so.1 (driver or the toolkit's stub) for cuDNN's heuristic";
}

#define SKIP_WITHOUT_CUDNN()                                                 \
  do {                                                                       \
    const std::string why = unavailable();                                   \
    if (!why.empty()) GTEST_SKIP() << "cuDNN planning unavailable: " << why; \
  } while (0)

struct Case {
  const char* device;  // tests/data/cudnn/<device>.json
  SdpaShape shape;
};

// gpt2-124m and llama-1.1b attention (T = 1024 / 2048, HS 64, GQA 32:4), HS 128, and short odd lengths with
// GQA (T not a multiple of any tile).
const SdpaShape kShapes[] = {
    {16, 1024, 12, 12, 64}, {4, 2048, 32, 4, 64}, {8, 1024, 16, 16, 128},
    {2, 100, 4, 2, 64},     {3, 77, 6, 3, 128},
};

std::string name(const SdpaShape& s) {
  return cat("B=", s.B, " T=", s.T, " NH=", s.NH, " KVH=", s.KVH, " HS=", s.HS);
}

class CudnnSdpaPlan : public ::testing::TestWithParam<const char*> {};

TEST_P(CudnnSdpaPlan, EveryGraphHasAnEngine) {
  SKIP_WITHOUT_CUDNN();
  const std::string json = read(cat(STRATA_TEST_DATA_DIR, "/cudnn/", GetParam(), ".json"));
  ASSERT_FALSE(json.empty());
  for (const SdpaShape& s : kShapes) {
    SCOPED_TRACE(name(s));
    const auto fwd = cuda::cudnn::plan_deviceless(Direction::kForward, s, json, true);
    EXPECT_GE(fwd.engine, 0);
    EXPECT_GE(fwd.candidates, 1);
    EXPECT_TRUE(fwd.deterministic);
    // The accumulating backward: its fp32 dQ accumulator follows the plan's own workspace.
    const auto acc = cuda::cudnn::plan_deviceless(Direction::kBackward, s, json, false);
    EXPECT_GE(acc.engine, 0);
    EXPECT_FALSE(acc.deterministic);
    EXPECT_GE(acc.workspace_bytes, int64_t{s.B} * s.NH * s.T * s.HS * 4);
    // The deterministic backward keeps dP (bf16, B x NH x T x T) in the plan's workspace.
    const auto det = cuda::cudnn::plan_deviceless(Direction::kBackward, s, json, true);
    EXPECT_GE(det.engine, 0);
    EXPECT_TRUE(det.deterministic);
    EXPECT_GE(det.workspace_bytes, int64_t{s.B} * s.NH * s.T * s.T * 2);
  }
}

INSTANTIATE_TEST_SUITE_P(Devices, CudnnSdpaPlan, ::testing::Values("h100_sxm", "a100_sxm"));

// A Volta (sm_70) has no fused flash-attention engine: the error names the graph and says so.
TEST(CudnnSdpaPlanErrors, NoEngineIsAnErrorNamingTheGraph) {
  SKIP_WITHOUT_CUDNN();
  std::string json = read(cat(STRATA_TEST_DATA_DIR, "/cudnn/h100_sxm.json"));
  const auto at = json.find("\"deviceVer\": 900");
  ASSERT_NE(at, std::string::npos);
  json.replace(at, 16, "\"deviceVer\": 700");
  try {
    cuda::cudnn::plan_deviceless(Direction::kForward, {2, 128, 4, 4, 64}, json, true);
    FAIL() << "planned for sm_70";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuDNN SDPA forward graph (B=2 T=128 NH=4 KVH=4 HS=64): no engine"),
              std::string::npos)
        << e.what();
  }
}

TEST(CudnnSdpaPlanErrors, BadDeviceDescriptionIsAnError) {
  SKIP_WITHOUT_CUDNN();
  try {
    cuda::cudnn::plan_deviceless(Direction::kForward, {2, 128, 4, 4, 64}, "{\"maxGridSize\": 1}", true);
    FAIL() << "accepted a device description without its members";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuDNN device description"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace strata::test
