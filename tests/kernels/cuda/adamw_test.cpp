// tests/kernels/cuda/adamw_test.cpp: adamw_update and grad_norm_squared for ops::Cuda, bf16
// (kernels/cuda/adamw.cu) against the CPU twin (kernels/cpu/adamw.cpp) and exact or statistical properties.
//
//   - several tensors of odd sizes in one call (one of them misaligned, so both the 16-byte vector path and
//   the
//     element path run): fp32 master weights and moments vs the fp32 twin; every bf16 parameter is its master
//     value rounded down or up (never further than one bf16 ulp), and both directions occur;
//   - weight decay touches exactly the tensors with weight_decay != 0 (a zero gradient isolates the decay);
//   - stochastic rounding is unbiased: the mean of many roundings of one value is that value within a stated
//     number of binomial standard deviations (round-to-nearest would miss by far more);
//   - the same seed gives the same bits, another seed other bits;
//   - more tensors than one launch takes (kernels/cuda/adamw.cu's table holds 64);
//   - the grad norm vs a double sum, bitwise equal over two calls.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cuda/workspace.h"
#include "kernels/ops.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/tolerances.h"

namespace strata::test {
namespace {

const ops::Cuda kDev{};
constexpr ops::Cpu kCpu;

// The state of one tensor on the host: fp32 master, bf16 gradient (kept as the floats it holds), moments.
struct HostTensor {
  std::vector<float> master, grad, m, v;
  float weight_decay = 0;
};

HostTensor random_tensor(size_t n, uint64_t seed, float weight_decay) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  HostTensor t;
  t.master.resize(n);
  for (auto& x : t.master) x = uni(rng);  // full fp32 values: most lie between two bf16 values
  t.grad = random_bf16_values(n, seed + 1, -2.0f, 2.0f);
  t.m.resize(n);
  t.v.resize(n);
  for (size_t i = 0; i < n; ++i) {
    t.m[i] = 0.1f * uni(rng);
    t.v[i] = 0.01f * std::abs(uni(rng)) + 1e-4f;
  }
  t.weight_decay = weight_decay;
  return t;
}

// The same tensor on the device. offset > 0 places every array `offset` elements past an allocation (which
// is 256-byte aligned), so the kernel cannot use 16-byte vectors on it.
struct DeviceTensor {
  DeviceBuffer<bf16> param, grad;
  DeviceBuffer<float> master, m, v;
  size_t n = 0, offset = 0;
  float weight_decay = 0;

  DeviceTensor(const HostTensor& h, size_t off)
      : param(h.master.size() + off),
        grad(h.master.size() + off),
        master(h.master.size() + off),
        m(h.master.size() + off),
        v(h.master.size() + off),
        n(h.master.size()),
        offset(off),
        weight_decay(h.weight_decay) {
    put(master, h.master);
    put(m, h.m);
    put(v, h.v);
    put(grad, to_bf16(h.grad));
    put(param, to_bf16(h.master));
  }
  template <class T>
  void put(DeviceBuffer<T>& b, const std::vector<T>& host) {
    CUDA_CHECK(cudaMemcpy(b.get() + offset, host.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  template <class T>
  std::vector<T> get(const DeviceBuffer<T>& b) const {
    std::vector<T> all = b.download();
    return std::vector<T>(all.begin() + static_cast<std::ptrdiff_t>(offset), all.end());
  }
  ops::AdamWTensor<bf16> desc() const {
    return {param.get() + offset, master.get() + offset,   grad.get() + offset, m.get() + offset,
            v.get() + offset,     static_cast<int64_t>(n), weight_decay};
  }
};

ops::AdamWStep test_step(uint32_t seed) {
  ops::AdamWStep s;
  s.lr = 1e-2f;
  s.beta1 = 0.9f;
  s.beta2 = 0.95f;
  s.eps = 1e-8f;
  s.bias_correction1 = 1.0f - std::pow(0.9f, 3.0f);  // step 3
  s.bias_correction2 = 1.0f - std::pow(0.95f, 3.0f);
  s.grad_scale = 0.8f;
  s.seed = seed;
  return s;
}

// The twin's update of copies of the host tensors (param = master, fp32).
std::vector<HostTensor> twin_update(std::vector<HostTensor> ts, const ops::AdamWStep& step) {
  std::vector<ops::AdamWTensor<float>> descs;
  for (auto& t : ts)
    descs.push_back({t.master.data(), nullptr, t.grad.data(), t.m.data(), t.v.data(),
                     static_cast<int64_t>(t.master.size()), t.weight_decay});
  ops::adamw_update(kCpu, descs.data(), static_cast<int>(descs.size()), step);
  return ts;
}

void run_device(const std::vector<DeviceTensor>& ds, const ops::AdamWStep& step) {
  std::vector<ops::AdamWTensor<bf16>> descs;
  for (const auto& d : ds) descs.push_back(d.desc());
  ops::adamw_update(kDev, descs.data(), static_cast<int>(descs.size()), step);
  CUDA_CHECK(cudaDeviceSynchronize());
}

uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
uint16_t bits_of(bf16 x) {
  uint16_t u;
  std::memcpy(&u, &x, 2);
  return u;
}

// Checks every bf16 parameter against its master value: the upper 16 bits of the fp32 pattern (rounded toward
// zero) or one more (away from zero), exact when the master is a bf16 value. Returns the count rounded away.
size_t expect_rounded_either_way(const std::vector<bf16>& param, const std::vector<float>& master,
                                 const char* what) {
  size_t up = 0, bad = 0;
  for (size_t i = 0; i < param.size(); ++i) {
    const uint32_t m = bits_of(master[i]);
    const uint16_t down = static_cast<uint16_t>(m >> 16), p = bits_of(param[i]);
    const bool exact = (m & 0xffffu) == 0;
    const bool ok = p == down || (!exact && p == static_cast<uint16_t>(down + 1));
    if (!ok && bad++ < 5)
      ADD_FAILURE() << what << "[" << i << "]: master " << master[i] << " gave bf16 "
                    << bf16_to_float(param[i]);
    if (ok && p != down) ++up;
    // Within one bf16 ulp of the master (the spacing at its exponent, 2^(e-7)).
    if (master[i] == 0.0f) continue;
    const double ulp = std::ldexp(1.0, std::ilogb(master[i]) - 7);
    EXPECT_LT(std::abs(static_cast<double>(bf16_to_float(param[i])) - master[i]), ulp)
        << what << "[" << i << "]";
  }
  EXPECT_EQ(bad, 0u) << what;
  return up;
}

// Sizes that hit every case: a single element, less than one 8-element chunk, whole chunks, a partial last
// chunk; the last tensor is misaligned (element path throughout).
const size_t kSizes[] = {1, 7, 1000, 4099, 515};
const size_t kOffsets[] = {0, 0, 0, 0, 1};
const float kDecays[] = {0.0f, 0.1f, 0.0f, 0.1f, 0.1f};

std::vector<HostTensor> make_host_tensors(uint64_t seed) {
  std::vector<HostTensor> hs;
  for (size_t k = 0; k < std::size(kSizes); ++k)
    hs.push_back(random_tensor(kSizes[k], seed + 10 * k, kDecays[k]));
  return hs;
}
std::vector<DeviceTensor> make_device_tensors(const std::vector<HostTensor>& hs) {
  std::vector<DeviceTensor> ds;
  for (size_t k = 0; k < hs.size(); ++k) ds.emplace_back(hs[k], kOffsets[k % std::size(kOffsets)]);
  return ds;
}

TEST(CudaAdamW, MasterMatchesTwinAndParamsRoundEitherWay) {
  STRATA_SKIP_WITHOUT_GPU();
  const auto hs = make_host_tensors(1);
  const auto ds = make_device_tensors(hs);
  const ops::AdamWStep step = test_step(1234);
  run_device(ds, step);
  const auto ref = twin_update(hs, step);
  size_t up = 0, total = 0;
  for (size_t k = 0; k < ds.size(); ++k) {
    const std::string what = "tensor " + std::to_string(k) + " (n=" + std::to_string(ds[k].n) + ")";
    const auto master = ds[k].get(ds[k].master);
    STRATA_EXPECT_CLOSE(master, ref[k].master, kTolAdamMaster, what + " master");
    STRATA_EXPECT_CLOSE(ds[k].get(ds[k].m), ref[k].m, kTolAdamMaster, what + " m");
    STRATA_EXPECT_CLOSE(ds[k].get(ds[k].v), ref[k].v, kTolAdamMaster, what + " v");
    up += expect_rounded_either_way(ds[k].get(ds[k].param), master, what.c_str());
    total += ds[k].n;
  }
  // Random fp32 masters sit uniformly between their two bf16 neighbours, so about half round away from zero.
  const double frac_up = static_cast<double>(up) / static_cast<double>(total);
  EXPECT_GT(frac_up, 0.5 - kStochasticRoundingSigmas * 0.5 / std::sqrt(static_cast<double>(total)));
  EXPECT_LT(frac_up, 0.5 + kStochasticRoundingSigmas * 0.5 / std::sqrt(static_cast<double>(total)));
}

TEST(CudaAdamW, WeightDecayOnlyWhereNonZero) {
  STRATA_SKIP_WITHOUT_GPU();
  // Zero gradients and moments: the Adam term is exactly 0, so master_new = master * (1 - lr wd) in fp32.
  auto hs = make_host_tensors(2);
  for (auto& h : hs) {
    std::fill(h.grad.begin(), h.grad.end(), 0.0f);
    std::fill(h.m.begin(), h.m.end(), 0.0f);
    std::fill(h.v.begin(), h.v.end(), 0.0f);
  }
  const auto ds = make_device_tensors(hs);
  const ops::AdamWStep step = test_step(7);
  run_device(ds, step);
  for (size_t k = 0; k < ds.size(); ++k) {
    const auto master = ds[k].get(ds[k].master);
    const float decay =
        hs[k].weight_decay != 0 ? static_cast<float>(1.0 - double{step.lr} * hs[k].weight_decay) : 1.0f;
    ASSERT_EQ(hs[k].weight_decay != 0, decay != 1.0f);
    size_t bad = 0;
    for (size_t i = 0; i < master.size(); ++i) bad += master[i] != hs[k].master[i] * decay;
    EXPECT_EQ(bad, 0u) << "tensor " << k << " (weight_decay " << hs[k].weight_decay << ")";
  }
}

TEST(CudaAdamW, StochasticRoundingIsUnbiased) {
  STRATA_SKIP_WITHOUT_GPU();
  // lr = 0 leaves every master value at x; each of the n parameters is then an independent rounding of x (its
  // own hash index). With x a fraction f of the way from bf16 value lo to lo + u, the count rounded up is
  // binomial(n, f): the mean is x within k * u * sqrt(f (1 - f) / n), k = kStochasticRoundingSigmas, while
  // round-to-nearest would be off by min(f, 1 - f) * u, 10x to 100x that bound here.
  constexpr size_t n = 1 << 16;
  const float u = 1.0f / 128;  // the bf16 spacing in [1, 2)
  for (const float f : {0.1f, 0.3f, 0.5f, 0.9f}) {
    for (const float sign : {1.0f, -1.0f}) {
      const float x = sign * (1.0f + f * u);
      HostTensor h;
      h.master.assign(n, x);
      h.grad.assign(n, 0.0f);
      h.m.assign(n, 0.0f);
      h.v.assign(n, 0.0f);
      std::vector<DeviceTensor> ds;
      ds.emplace_back(h, 0);
      ops::AdamWStep step = test_step(99);
      step.lr = 0.0f;
      run_device(ds, step);
      const auto param = ds[0].get(ds[0].param);
      double sum = 0;
      for (bf16 p : param) sum += bf16_to_float(p);
      const double mean = sum / n;
      const double bound = kStochasticRoundingSigmas * u * std::sqrt(f * (1.0 - f) / n);
      EXPECT_NEAR(mean, x, bound) << "x = " << x;
      expect_rounded_either_way(param, ds[0].get(ds[0].master), "constant tensor");
    }
  }
}

TEST(CudaAdamW, SameSeedSameBits) {
  STRATA_SKIP_WITHOUT_GPU();
  const auto hs = make_host_tensors(3);
  const auto a = make_device_tensors(hs), b = make_device_tensors(hs), c = make_device_tensors(hs);
  run_device(a, test_step(5));
  run_device(b, test_step(5));
  run_device(c, test_step(6));
  size_t differs_with_other_seed = 0;
  for (size_t k = 0; k < a.size(); ++k) {
    const auto pa = a[k].get(a[k].param), pb = b[k].get(b[k].param), pc = c[k].get(c[k].param);
    EXPECT_EQ(0, std::memcmp(pa.data(), pb.data(), pa.size() * sizeof(bf16))) << "tensor " << k;
    const auto ma = a[k].get(a[k].master), mb = b[k].get(b[k].master);
    EXPECT_EQ(0, std::memcmp(ma.data(), mb.data(), ma.size() * sizeof(float))) << "tensor " << k;
    for (size_t i = 0; i < pa.size(); ++i) differs_with_other_seed += bits_of(pa[i]) != bits_of(pc[i]);
  }
  EXPECT_GT(differs_with_other_seed, 0u);
}

TEST(CudaAdamW, ManyTensorsTakeSeveralLaunches) {
  STRATA_SKIP_WITHOUT_GPU();
  std::vector<HostTensor> hs;
  for (size_t k = 0; k < 150; ++k)
    hs.push_back(random_tensor(1 + (k * 37) % 61, 500 + k, k % 2 ? 0.1f : 0.0f));
  hs[70].master.clear();  // an empty tensor in the middle
  hs[70].grad.clear(), hs[70].m.clear(), hs[70].v.clear();
  const auto ds = make_device_tensors(hs);
  const ops::AdamWStep step = test_step(21);
  run_device(ds, step);
  const auto ref = twin_update(hs, step);
  for (size_t k = 0; k < ds.size(); ++k) {
    if (ds[k].n == 0) continue;
    const std::string what = "tensor " + std::to_string(k);
    const auto master = ds[k].get(ds[k].master);
    STRATA_EXPECT_CLOSE(master, ref[k].master, kTolAdamMaster, what + " master");
    expect_rounded_either_way(ds[k].get(ds[k].param), master, what.c_str());
  }
}

// ---- grad norm -------------------------------------------------------------------------------------------
struct NormCase {
  std::vector<DeviceBuffer<bf16>> bufs;
  std::vector<ops::ConstSpan<bf16>> spans;
  double ref = 0;  // double sum of squares of the bf16 values
};

NormCase norm_case(const std::vector<size_t>& sizes, uint64_t seed) {
  NormCase c;
  for (size_t k = 0; k < sizes.size(); ++k) {
    const size_t off = kOffsets[k % std::size(kOffsets)];
    const auto x = random_bf16_values(sizes[k], seed + k, -3.0f, 3.0f);
    for (float v : x) c.ref += static_cast<double>(v) * v;
    c.bufs.emplace_back(sizes[k] + off);
    CUDA_CHECK(cudaMemcpy(c.bufs.back().get() + off, to_bf16(x).data(), sizes[k] * sizeof(bf16),
                          cudaMemcpyHostToDevice));
    c.spans.push_back({c.bufs.back().get() + off, static_cast<int64_t>(sizes[k])});
  }
  return c;
}

float device_norm(const NormCase& c) {
  DeviceBuffer<float> out(1);
  DeviceBuffer<unsigned char> ws(cuda::grad_norm_workspace_bytes());
  ops::Cuda dev;
  dev.workspace = ws.get();
  dev.workspace_bytes = ws.size();
  ops::grad_norm_squared(dev, out.get(), c.spans.data(), static_cast<int>(c.spans.size()));
  return out.download()[0];
}

TEST(CudaGradNorm, MatchesDoubleSumAndRepeatsBitwise) {
  STRATA_SKIP_WITHOUT_GPU();
  for (const auto& sizes : {std::vector<size_t>(std::begin(kSizes), std::end(kSizes)),
                            std::vector<size_t>(100, 333)}) {  // 100 tensors: two launches of partials
    const NormCase c = norm_case(sizes, 42);
    ASSERT_GT(c.ref, 0.0);
    const float a = device_norm(c), b = device_norm(c);
    EXPECT_NEAR(a, c.ref, kTolFp32Stat * c.ref) << sizes.size() << " tensors";
    EXPECT_EQ(bits_of(a), bits_of(b)) << "two calls differ";
  }
}

TEST(CudaGradNorm, NoTensorsGiveZero) {
  STRATA_SKIP_WITHOUT_GPU();
  const NormCase c = norm_case({}, 1);
  EXPECT_EQ(device_norm(c), 0.0f);  // the poisoned (NaN) output and workspace are overwritten
}

}  // namespace
}  // namespace strata::test
