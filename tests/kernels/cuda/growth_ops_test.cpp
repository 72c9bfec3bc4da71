// tests/kernels/cuda/growth_ops_test.cpp: G_random's mask and G_learn's depth mixing on device buffers
// (kernels/cuda/growth_ops.cu) against host references written here from growth/apply.cpp's definitions
// (GrowthMask::begin/end, LearnedDepth::materialise/dots):
//
//   - the mask over regions of every shape (whole rows, column ranges, both, 1-D tensors, ranges reaching the
//     tensor's edge) scales exactly the masked bf16 weights by c and nothing else, end() restores every
//     weight bit for bit and scales exactly the masked gradients (or none, without gradients); c = 0 and c =
//     0.375;
//   - W' = D W into fp32 master and bf16 weights, bit for bit the host's (same order, no FMA), with zero D
//     entries skipped, and nothing outside the kinds' layers written;
//   - dD = <g_l, W_j> against a double reference, over more small layers than one pass takes (8), and bitwise
//     equal over two calls;
//   - entries that address a sub-range of each layer (a src row stride other than n, grown layers spaced by a
//     stride with gaps, a range of grown layers: ZeRO-1's compact pieces), with master or weights left null:
//     materialise bit for bit the host's on exactly the addressed elements, dots against a double reference
//     and 0 for the layers an entry does not cover; a layer split into pieces sums to the whole layer's dots;
//   - a plan's gather of one target layer (growth_gather) through row and column maps with new (-1) indices,
//     repeated (split) sources and factors, with and without fresh values, as weights (products in the host's
//     order) and as moments (no factors, new elements 0), 2-D and 1-D, odd sizes, into poisoned outputs:
//     bit for bit a host loop written here from growth/apply.cpp's gather; the noise (fp64, no FMA) and the
//     bf16 rounding bit for bit the host's.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cuda/growth_ops.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/tolerances.h"

namespace strata::test {
namespace {

uint16_t bits(bf16 x) {
  uint16_t b;
  std::memcpy(&b, &x, 2);
  return b;
}
uint32_t bits(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}

// Whether element (r, c) of region g is masked: growth/apply.cpp's for_each_masked predicate.
bool masked(const cuda::MaskRegion& g, int64_t r, int64_t c) {
  return (r >= g.row_begin && r < g.row_end) || (c >= g.col_begin && c < g.col_end);
}

// Regions over a flat buffer with gaps between them (elements no region covers).
std::vector<cuda::MaskRegion> test_regions(int64_t* total, int64_t* numel) {
  std::vector<cuda::MaskRegion> out;
  int64_t base = 5;
  *total = 0;
  auto add = [&](int64_t rows, int64_t cols, int64_t rb, int64_t re, int64_t cb, int64_t ce) {
    cuda::MaskRegion g;
    g.base = base, g.rows = rows, g.cols = cols;
    g.row_begin = rb, g.row_end = re, g.col_begin = cb, g.col_end = ce;
    g.first = *total;
    *total += cuda::mask_region_numel(g);
    out.push_back(g);
    base += rows * cols + 7;
  };
  add(24, 40, 0, 24, 0, 0);     // every row: a new layer's output projection
  add(33, 17, 20, 33, 0, 0);    // trailing rows
  add(19, 29, 0, 0, 21, 29);    // trailing columns (an embedding)
  add(37, 45, 30, 37, 40, 45);  // new rows and new columns of the rest
  add(51, 1, 48, 51, 0, 0);     // a 1-D tensor (a bias), its new tail
  add(9, 300, 3, 4, 299, 300);  // one row in the middle, the last column
  *numel = base;
  return out;
}

void check_mask(float c) {
  int64_t total = 0, numel = 0;
  const std::vector<cuda::MaskRegion> regions = test_regions(&total, &numel);
  std::vector<bool> is_masked(static_cast<size_t>(numel), false);
  int64_t count = 0;
  for (const cuda::MaskRegion& g : regions)
    for (int64_t r = 0; r < g.rows; ++r)
      for (int64_t col = 0; col < g.cols; ++col)
        if (masked(g, r, col)) is_masked[static_cast<size_t>(g.base + r * g.cols + col)] = true, ++count;
  ASSERT_EQ(count, total) << "mask_region_numel disagrees with the predicate";
  ASSERT_GT(total, 0);

  const std::vector<bf16> w0 = to_bf16(random_bf16_values(static_cast<size_t>(numel), 1));
  const std::vector<bf16> g0 = to_bf16(random_bf16_values(static_cast<size_t>(numel), 2, -3.0f, 3.0f));
  DeviceBuffer<bf16> w(w0), g(g0), saved(static_cast<size_t>(total));
  DeviceBuffer<cuda::MaskRegion> table(regions.size());
  CUDA_CHECK(cudaMemcpy(table.get(), regions.data(), regions.size() * sizeof(cuda::MaskRegion),
                        cudaMemcpyHostToDevice));

  // begin: c * w on the masked elements (one fp32 product, one rounding: exact), the rest untouched.
  cuda::growth_mask_begin(w.get(), saved.get(), table.get(), static_cast<int>(regions.size()), total, c,
                          nullptr);
  std::vector<bf16> got = w.download();
  int64_t wrong = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const bf16 want = is_masked[i] ? float_to_bf16(c * bf16_to_float(w0[i])) : w0[i];
    if (bits(got[i]) != bits(want) && ++wrong <= 5)
      ADD_FAILURE() << "c=" << c << ": weight " << i << (is_masked[i] ? " (masked)" : "") << " is "
                    << bf16_to_float(got[i]) << ", expected " << bf16_to_float(want);
  }
  EXPECT_EQ(wrong, 0);

  // end with gradients: the raw weights back, c * g on the masked gradients.
  cuda::growth_mask_end(w.get(), g.get(), saved.get(), table.get(), static_cast<int>(regions.size()), total,
                        c, nullptr);
  got = w.download();
  const std::vector<bf16> gg = g.download();
  wrong = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const bf16 want_g = is_masked[i] ? float_to_bf16(c * bf16_to_float(g0[i])) : g0[i];
    if ((bits(got[i]) != bits(w0[i]) || bits(gg[i]) != bits(want_g)) && ++wrong <= 5)
      ADD_FAILURE() << "c=" << c << ": element " << i << (is_masked[i] ? " (masked)" : "") << ": weight "
                    << bf16_to_float(got[i]) << " (raw " << bf16_to_float(w0[i]) << "), gradient "
                    << bf16_to_float(gg[i]) << " (expected " << bf16_to_float(want_g) << ")";
  }
  EXPECT_EQ(wrong, 0);

  // An evaluation: begin and end without gradients leave both buffers as they were.
  cuda::growth_mask_begin(w.get(), saved.get(), table.get(), static_cast<int>(regions.size()), total, c,
                          nullptr);
  cuda::growth_mask_end(w.get(), nullptr, saved.get(), table.get(), static_cast<int>(regions.size()), total,
                        c, nullptr);
  got = w.download();
  const std::vector<bf16> g2 = g.download();
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(bits(got[i]), bits(w0[i])) << "weight " << i << " after begin/end without gradients";
    ASSERT_EQ(bits(g2[i]), bits(gg[i])) << "gradient " << i << " changed without gradients";
  }
}


// depth_mix_dots over `kinds` into `dots` (a workspace of the size it asks for), downloaded.
std::vector<double> run_dots(const std::vector<cuda::DepthMixKind>& kinds, int L2, int L,
                             DeviceBuffer<double>& dots) {
  const int count = static_cast<int>(kinds.size());
  const size_t ws = cuda::depth_mix_dots_workspace_bytes(count, L2, L);
  DeviceBuffer<float> workspace(ws / sizeof(float));
  cuda::depth_mix_dots(kinds.data(), count, L2, L, workspace.get(), ws, dots.get(), nullptr);
  return dots.download();
}

TEST(GrowthMask, ScalesExactlyTheMaskedElementsAndRestoresThem) {
  STRATA_SKIP_WITHOUT_GPU();
  check_mask(0.375f);
  check_mask(0.0f);  // the first masked step
}

// ---- depth mixing
// ---------------------------------------------------------------------------------------------

// Kinds of n elements per layer laid out one after another in a flat grown buffer, with gaps.
struct MixCase {
  int L = 0, L2 = 0;
  std::vector<int64_t> n, offset;  // per kind: elements per layer, offset of layer 0 in the flat buffer
  int64_t numel = 0;
  std::vector<std::vector<float>> src;  // per kind (L, n)
  std::vector<float> D;                 // (kinds, L', L)
};

MixCase make_case(int L, int L2, std::vector<int64_t> n, uint64_t seed) {
  MixCase m;
  m.L = L, m.L2 = L2, m.n = std::move(n);
  int64_t at = 3;
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  for (size_t k = 0; k < m.n.size(); ++k) {
    m.offset.push_back(at);
    at += L2 * m.n[k] + 11;
    m.src.push_back(random_bf16_values(static_cast<size_t>(L * m.n[k]), seed + 10 + k));
    for (float& x : m.src.back()) x += 1e-3f * uni(rng);  // full fp32 values
  }
  m.numel = at;
  m.D.resize(m.n.size() * static_cast<size_t>(L2) * L);
  for (float& d : m.D) d = uni(rng) < -0.3f ? 0.0f : uni(rng);  // about a third zeros: skipped terms
  for (int j = 0; j < L; ++j) m.D[static_cast<size_t>(j)] = j == 0 ? 1.0f : 0.0f;  // a G_stack row
  return m;
}

std::vector<cuda::DepthMixKind> device_kinds(const MixCase& m, std::vector<DeviceBuffer<float>>& src,
                                             float* master, bf16* weights, const bf16* grads) {
  std::vector<cuda::DepthMixKind> kinds;
  for (size_t k = 0; k < m.n.size(); ++k) {
    if (src.size() < m.n.size()) src.emplace_back(m.src[k]);
    cuda::DepthMixKind t;
    t.src = src[k].get();
    t.master = master ? master + m.offset[k] : nullptr;
    t.weights = weights ? weights + m.offset[k] : nullptr;
    t.grads = grads ? grads + m.offset[k] : nullptr;
    t.n = m.n[k];
    kinds.push_back(t);
  }
  return kinds;
}

void check_materialise(const MixCase& m) {
  // The host's LearnedDepth::materialise, into a buffer whose other elements keep a marker value.
  constexpr float kMarker = 12345.0f;
  std::vector<float> ref(static_cast<size_t>(m.numel), kMarker);
  for (size_t k = 0; k < m.n.size(); ++k)
    for (int l = 0; l < m.L2; ++l) {
      float* o = ref.data() + m.offset[k] + l * m.n[k];
      std::fill(o, o + m.n[k], 0.0f);
      for (int j = 0; j < m.L; ++j) {
        const float d = m.D[(k * m.L2 + static_cast<size_t>(l)) * m.L + static_cast<size_t>(j)];
        if (d == 0.0f) continue;
        const float* w = m.src[k].data() + j * m.n[k];
        for (int64_t i = 0; i < m.n[k]; ++i) o[i] += d * w[i];
      }
    }
  DeviceBuffer<float> master(std::vector<float>(static_cast<size_t>(m.numel), kMarker)), D(m.D);
  DeviceBuffer<bf16> weights(std::vector<bf16>(static_cast<size_t>(m.numel), float_to_bf16(kMarker)));
  std::vector<DeviceBuffer<float>> src;
  const auto kinds = device_kinds(m, src, master.get(), weights.get(), nullptr);
  cuda::depth_mix_materialise(kinds.data(), static_cast<int>(kinds.size()), D.get(), m.L2, m.L, nullptr);
  const std::vector<float> got = master.download();
  const std::vector<bf16> got_w = weights.download();
  double max_ref = 0.0;
  int64_t wrong = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (ref[i] != kMarker) max_ref = std::max(max_ref, std::abs(static_cast<double>(ref[i])));
    // Bit for bit: each term is one rounded product and one rounded sum, in the same order, on both sides.
    if ((bits(got[i]) != bits(ref[i]) || bits(got_w[i]) != bits(float_to_bf16(ref[i]))) && ++wrong <= 5)
      ADD_FAILURE() << "L=" << m.L << " L'=" << m.L2 << ": element " << i << ": master " << got[i] << " bf16 "
                    << bf16_to_float(got_w[i]) << ", expected " << ref[i];
  }
  EXPECT_EQ(wrong, 0);
  EXPECT_GT(max_ref, 0.0) << "vacuous: every mixed weight is zero";
}

void check_dots(const MixCase& m) {
  const std::vector<bf16> g = to_bf16(random_bf16_values(static_cast<size_t>(m.numel), 99, -2.0f, 2.0f));
  std::vector<double> ref;
  for (size_t k = 0; k < m.n.size(); ++k)
    for (int l = 0; l < m.L2; ++l)
      for (int j = 0; j < m.L; ++j) {
        double s = 0.0;
        for (int64_t i = 0; i < m.n[k]; ++i)
          s += static_cast<double>(bf16_to_float(g[static_cast<size_t>(m.offset[k] + l * m.n[k] + i)])) *
               static_cast<double>(m.src[k][static_cast<size_t>(j * m.n[k] + i)]);
        ref.push_back(s);
      }
  DeviceBuffer<bf16> grads(g);
  std::vector<DeviceBuffer<float>> src;
  const auto kinds = device_kinds(m, src, nullptr, nullptr, grads.get());
  DeviceBuffer<double> dots(ref.size());
  const std::vector<double> got = run_dots(kinds, m.L2, m.L, dots);
  // fp32 sums of up to ~1000 products against a double sum (tests/tolerances.h's float-vs-double rule).
  STRATA_EXPECT_CLOSE(got, ref, kTolFloatVsDouble, "mixing gradients L=" << m.L << " L'=" << m.L2);
  dots.poison();
  const std::vector<double> again = run_dots(kinds, m.L2, m.L, dots);
  EXPECT_EQ(0, std::memcmp(got.data(), again.data(), got.size() * sizeof(double))) << "not deterministic";
}

TEST(DepthMix, MaterialiseIsTheHostsBitForBit) {
  STRATA_SKIP_WITHOUT_GPU();
  check_materialise(make_case(3, 5, {1000, 37, 129}, 1));
  check_materialise(make_case(10, 2, {513, 1}, 2));  // more small layers than one dots pass takes
}

TEST(DepthMix, DotsMatchADoubleReferenceAndRepeat) {
  STRATA_SKIP_WITHOUT_GPU();
  check_dots(make_case(3, 5, {1000, 37, 129}, 3));
  check_dots(make_case(10, 2, {513, 1}, 4));
}

// ---- entries addressing sub-ranges of layers (ZeRO-1's pieces)
// ----------------------------------------------------------

// One entry of a sub-range case: elements [a, a + n) of every layer in [lb, le) of kind `kind`, held at
// base + (l - lb) * stride of a flat buffer (stride 0: n); master / weights: whether the entry writes them.
struct SubEntry {
  int kind = 0;
  int64_t a = 0, n = 0, stride = 0;
  int lb = 0, le = -1;
  bool master = true, weights = true;
  int64_t base = 0;  // set by make_sub_case
};

struct SubCase {
  int L = 0, L2 = 0;
  std::vector<int64_t> per;             // per kind: elements per layer
  std::vector<std::vector<float>> src;  // per kind (L, per)
  std::vector<SubEntry> entries;
  std::vector<float> D;  // (entries, L', L)
  int64_t numel = 0;
  int64_t stride(const SubEntry& e) const { return e.stride == 0 ? e.n : e.stride; }
  int layer_end(const SubEntry& e) const { return e.le == -1 ? L2 : e.le; }
};

SubCase make_sub_case(int L, int L2, std::vector<int64_t> per, std::vector<SubEntry> entries, uint64_t seed) {
  SubCase m;
  m.L = L, m.L2 = L2, m.per = std::move(per), m.entries = std::move(entries);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  for (size_t k = 0; k < m.per.size(); ++k) {
    m.src.push_back(random_bf16_values(static_cast<size_t>(L * m.per[k]), seed + 10 + k));
    for (float& x : m.src.back()) x += 1e-3f * uni(rng);
  }
  int64_t at = 2;  // each entry's own region of the flat buffer, gaps between (never written)
  for (SubEntry& e : m.entries) {
    e.base = at;
    at += (m.layer_end(e) - e.lb) * m.stride(e) + 5;
  }
  m.numel = at;
  m.D.resize(m.entries.size() * static_cast<size_t>(L2) * L);
  for (float& d : m.D) d = uni(rng) < -0.3f ? 0.0f : uni(rng);
  return m;
}

std::vector<cuda::DepthMixKind> sub_kinds(const SubCase& m, std::vector<DeviceBuffer<float>>& src,
                                          float* master, bf16* weights, const bf16* grads) {
  for (size_t k = src.size(); k < m.per.size(); ++k) src.emplace_back(m.src[k]);
  std::vector<cuda::DepthMixKind> out;
  for (const SubEntry& e : m.entries) {
    cuda::DepthMixKind t;
    const size_t k = static_cast<size_t>(e.kind);
    t.src = src[k].get() + e.a;
    t.src_stride = m.per[k];
    t.n = e.n;
    t.stride = e.stride;
    t.layer_begin = e.lb;
    t.layer_end = e.le;
    t.master = master && e.master ? master + e.base : nullptr;
    t.weights = weights && e.weights ? weights + e.base : nullptr;
    t.grads = grads ? grads + e.base : nullptr;
    out.push_back(t);
  }
  return out;
}

// Entries of two kinds: kind 0 (1000 per layer) split as ZeRO-1 splits it over 3 ranks (chunks of 328, a tail
// of 16 for the last rank, the last rank's body and tail interleaved in its compact buffer), a whole-layer
// entry writing only bf16 weights, a partial range of grown layers writing only master weights; kind 1 (37
// per layer) with the defaults (the original whole-kind semantics).
std::vector<SubEntry> zero1_like_entries() {
  std::vector<SubEntry> out;
  const int64_t c = 328, tail = 16;
  for (int r = 0; r < 3; ++r) out.push_back({0, r * c, c, r == 2 ? c + tail : c, 0, -1, true, true});
  out.push_back({0, 3 * c, tail, c + tail, 0, -1, true, true});  // the tail, after the last rank's body
  out.push_back({0, 0, 1000, 0, 0, -1, false, true});            // every bf16 weight, no master
  out.push_back({0, 5, 100, 120, 1, 4, true, false});            // grown layers 1-3 only, master only
  out.push_back({1, 0, 37, 0, 0, -1, true, true});
  out.push_back({1, 30, 7, 0, 4, 5, true, true});  // one grown layer's last elements
  return out;
}

TEST(DepthMix, SubRangeEntriesMaterialiseTheHostsBitsOnTheirElementsOnly) {
  STRATA_SKIP_WITHOUT_GPU();
  const SubCase m = make_sub_case(10, 5, {1000, 37}, zero1_like_entries(), 5);
  constexpr float kMarker = 12345.0f;
  std::vector<float> ref(static_cast<size_t>(m.numel), kMarker);
  std::vector<bool> has_master(ref.size(), false), has_weights(ref.size(), false);
  for (size_t e = 0; e < m.entries.size(); ++e) {
    const SubEntry& s = m.entries[e];
    const std::vector<float>& src = m.src[static_cast<size_t>(s.kind)];
    const int64_t per = m.per[static_cast<size_t>(s.kind)];
    for (int l = s.lb; l < m.layer_end(s); ++l)
      for (int64_t i = 0; i < s.n; ++i) {
        float o = 0.0f;  // LearnedDepth::materialise's order: j ascending, zero D terms skipped
        for (int j = 0; j < m.L; ++j) {
          const float d =
              m.D[(e * static_cast<size_t>(m.L2) + static_cast<size_t>(l)) * m.L + static_cast<size_t>(j)];
          if (d != 0.0f) o += d * src[static_cast<size_t>(j * per + s.a + i)];
        }
        const size_t at = static_cast<size_t>(s.base + (l - s.lb) * m.stride(s) + i);
        ref[at] = o;
        has_master[at] = s.master;
        has_weights[at] = s.weights;
      }
  }
  DeviceBuffer<float> master(std::vector<float>(ref.size(), kMarker)), D(m.D);
  DeviceBuffer<bf16> weights(std::vector<bf16>(ref.size(), float_to_bf16(kMarker)));
  std::vector<DeviceBuffer<float>> src;
  const auto kinds = sub_kinds(m, src, master.get(), weights.get(), nullptr);
  cuda::depth_mix_materialise(kinds.data(), static_cast<int>(kinds.size()), D.get(), m.L2, m.L, nullptr);
  const std::vector<float> got = master.download();
  const std::vector<bf16> got_w = weights.download();
  int64_t wrong = 0, mixed = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const float want = has_master[i] ? ref[i] : kMarker;
    const bf16 want_w = float_to_bf16(has_weights[i] ? ref[i] : kMarker);
    mixed += has_master[i] || has_weights[i];
    if ((bits(got[i]) != bits(want) || bits(got_w[i]) != bits(want_w)) && ++wrong <= 5)
      ADD_FAILURE() << "element " << i << ": master " << got[i] << " (expected " << want << "), bf16 "
                    << bf16_to_float(got_w[i]) << " (expected " << bf16_to_float(want_w) << ")";
  }
  EXPECT_EQ(wrong, 0);
  EXPECT_GT(mixed, 5000) << "vacuous: the entries address almost nothing";
}

TEST(DepthMix, SubRangeEntriesDotsMatchADoubleReferenceAndSumToTheWholeLayers) {
  STRATA_SKIP_WITHOUT_GPU();
  const SubCase m = make_sub_case(10, 5, {1000, 37}, zero1_like_entries(), 6);
  const std::vector<bf16> g = to_bf16(random_bf16_values(static_cast<size_t>(m.numel), 98, -2.0f, 2.0f));
  const size_t pairs = static_cast<size_t>(m.L2) * m.L;
  std::vector<double> ref(m.entries.size() * pairs, 0.0);  // 0 for the layers an entry does not cover
  for (size_t e = 0; e < m.entries.size(); ++e) {
    const SubEntry& s = m.entries[e];
    const std::vector<float>& src = m.src[static_cast<size_t>(s.kind)];
    const int64_t per = m.per[static_cast<size_t>(s.kind)];
    for (int l = s.lb; l < m.layer_end(s); ++l)
      for (int j = 0; j < m.L; ++j) {
        double sum = 0.0;
        for (int64_t i = 0; i < s.n; ++i)
          sum += static_cast<double>(
                     bf16_to_float(g[static_cast<size_t>(s.base + (l - s.lb) * m.stride(s) + i)])) *
                 static_cast<double>(src[static_cast<size_t>(j * per + s.a + i)]);
        ref[e * pairs + static_cast<size_t>(l) * m.L + static_cast<size_t>(j)] = sum;
      }
  }
  DeviceBuffer<bf16> grads(g);
  std::vector<DeviceBuffer<float>> src;
  const auto kinds = sub_kinds(m, src, nullptr, nullptr, grads.get());
  DeviceBuffer<double> dots(ref.size());
  const std::vector<double> got = run_dots(kinds, m.L2, m.L, dots);
  STRATA_EXPECT_CLOSE(got, ref, kTolFloatVsDouble, "sub-range mixing gradients");
  for (size_t e = 0; e < m.entries.size(); ++e) {
    const SubEntry& s = m.entries[e];
    for (int l = 0; l < m.L2; ++l) {
      if (l >= s.lb && l < m.layer_end(s)) continue;
      for (int j = 0; j < m.L; ++j) {
        EXPECT_EQ(got[e * pairs + static_cast<size_t>(l) * m.L + static_cast<size_t>(j)], 0.0)
            << "entry " << e << " does not cover grown layer " << l;
      }
    }
  }

  // The first four entries split kind 0's layers as the ranks' pieces do; with the gradient of each piece
  // copied into one whole-layer buffer, the whole-layer dots are the pieces' sums (within fp32 summation).
  std::vector<bf16> whole(static_cast<size_t>(m.L2 * m.per[0]));
  for (size_t e = 0; e < 4; ++e) {
    const SubEntry& s = m.entries[e];
    for (int l = 0; l < m.L2; ++l)
      for (int64_t i = 0; i < s.n; ++i)
        whole[static_cast<size_t>(l * m.per[0] + s.a + i)] =
            g[static_cast<size_t>(s.base + l * m.stride(s) + i)];
  }
  DeviceBuffer<bf16> whole_g(whole);
  cuda::DepthMixKind t;
  t.src = src[0].get();
  t.grads = whole_g.get();
  t.n = m.per[0];
  DeviceBuffer<double> whole_dots(pairs);
  const std::vector<double> whole_got = run_dots({t}, m.L2, m.L, whole_dots);
  std::vector<double> summed(pairs, 0.0);
  for (size_t e = 0; e < 4; ++e)
    for (size_t p = 0; p < pairs; ++p) summed[p] += got[e * pairs + p];
  STRATA_EXPECT_CLOSE(whole_got, summed, kTolFloatVsDouble, "whole layers vs the pieces' sums");
}

// ---- a plan's rules --------------------------------------------------------------------------------------

// growth/apply.cpp's gather for one layer, written out: dst[r, c] from src through the maps.
std::vector<float> host_gather(const std::vector<float>& src, int64_t src_cols,
                               const std::vector<int32_t>& rs, const std::vector<float>& rf,
                               const std::vector<int32_t>& cs, const std::vector<float>& cf,
                               const std::vector<float>* fresh, bool moments) {
  const int64_t rows = int64_t(rs.size()), cols = cs.empty() ? 1 : int64_t(cs.size());
  std::vector<float> out(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const int32_t sr = rs[size_t(r)], sc = cs.empty() ? 0 : cs[size_t(c)];
      float& o = out[size_t(r * cols + c)];
      if (sr < 0 || sc < 0) {
        o = (moments || fresh == nullptr) ? 0.0f : (*fresh)[size_t(r * cols + c)];
      } else {
        const float a = moments || rf.empty() ? 1.0f : rf[size_t(r)];
        const float b = moments || cf.empty() || cs.empty() ? 1.0f : cf[size_t(c)];
        o = src[size_t(sr * src_cols + sc)] * a * b;
      }
    }
  return out;
}

// A map onto n target indices from m source ones: the identity on the first m, then n - m entries that are
// either new (-1) or a repeat of a seeded source index, with factors (split neurons: 0.6 / 0.4) when scaled.
void make_map(int64_t m, int64_t n, uint64_t seed, bool scaled, std::vector<int32_t>* src,
              std::vector<float>* f) {
  std::mt19937_64 rng(seed);
  src->clear();
  f->clear();
  for (int64_t i = 0; i < n; ++i)
    src->push_back(i < m ? int32_t(i) : (rng() % 3 == 0 ? -1 : int32_t(rng() % m)));
  if (!scaled) return;
  for (int64_t i = 0; i < n; ++i) f->push_back(i < m ? 0.6f : 0.4f + 0.01f * float(i % 7));
}

std::vector<uint32_t> float_bits(const std::vector<float>& v) {
  std::vector<uint32_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = bits(v[i]);
  return out;
}

TEST(GrowthRules, GatherIsTheHostsBitForBit) {
  STRATA_SKIP_WITHOUT_GPU();
  struct Case {
    int64_t src_rows, src_cols, rows, cols;  // cols 0: a 1-D tensor
    bool row_scaled, col_scaled, fresh;
  };
  for (const Case k : {Case{37, 29, 61, 45, true, true, true}, Case{37, 29, 61, 45, false, true, false},
                       Case{64, 48, 64, 97, false, false, true}, Case{131, 0, 262, 0, true, false, true},
                       Case{19, 0, 19, 0, false, false, false}, Case{5, 300, 9, 300, true, false, false}}) {
    SCOPED_TRACE("src " + std::to_string(k.src_rows) + "x" + std::to_string(k.src_cols) + " -> " +
                 std::to_string(k.rows) + "x" + std::to_string(k.cols));
    const int64_t sc = k.src_cols ? k.src_cols : 1, cols = k.cols ? k.cols : 1;
    std::vector<int32_t> rs, cs;
    std::vector<float> rf, cf;
    make_map(k.src_rows, k.rows, 11, k.row_scaled, &rs, &rf);
    if (k.cols) make_map(k.src_cols, k.cols, 12, k.col_scaled, &cs, &cf);
    const std::vector<float> src = random_bf16_values(size_t(k.src_rows * sc), 13);
    std::vector<float> src_fp32(src);
    for (size_t i = 0; i < src_fp32.size(); ++i)
      src_fp32[i] += 1e-5f * float(i % 11);  // fp32 bits below bf16
    const std::vector<float> fresh = random_bf16_values(size_t(k.rows * cols), 14, -0.02f, 0.02f);
    DeviceBuffer<float> d_src(src_fp32), d_fresh(fresh), d_rf(rf.empty() ? std::vector<float>{0} : rf),
        d_cf(cf.empty() ? std::vector<float>{0} : cf);
    DeviceBuffer<int32_t> d_rs(rs), d_cs(cs.empty() ? std::vector<int32_t>{0} : cs);
    for (bool moments : {false, true}) {
      SCOPED_TRACE(moments ? "moments" : "weights");
      DeviceBuffer<float> out(size_t(k.rows * cols));  // poisoned
      cuda::GrowthGather g;
      g.dst = out.get(), g.src = d_src.get(), g.src_cols = sc, g.rows = k.rows, g.cols = cols;
      g.row_src = d_rs.get(), g.row_scale = rf.empty() ? nullptr : d_rf.get();
      g.col_src = k.cols ? d_cs.get() : nullptr, g.col_scale = cf.empty() ? nullptr : d_cf.get();
      g.fresh = k.fresh ? d_fresh.get() : nullptr, g.moments = moments;
      cuda::growth_gather(g, nullptr);
      const std::vector<float> want =
          host_gather(src_fp32, sc, rs, rf, cs, cf, k.fresh ? &fresh : nullptr, moments);
      EXPECT_EQ(float_bits(out.download()), float_bits(want));
    }
  }
}

TEST(GrowthRules, NoiseAndRoundingAreTheHostsBitForBit) {
  STRATA_SKIP_WITHOUT_GPU();
  for (const int64_t n : {int64_t{1}, int64_t{1000}, int64_t{4099}}) {
    SCOPED_TRACE("n " + std::to_string(n));
    std::vector<float> w = random_bf16_values(size_t(n), 21),
                       e = random_bf16_values(size_t(n), 22, -0.05f, 0.05f);
    for (size_t i = 0; i < w.size(); ++i) w[i] += 3e-6f * float(i % 13);  // not on the bf16 grid
    for (const double a : {0.1, 0.25, 0.7}) {
      DeviceBuffer<float> d_w(w), d_e(e);
      cuda::growth_noise(d_w.get(), d_e.get(), n, 1.0 - a, a, nullptr);
      std::vector<float> want(w.size());
      for (size_t i = 0; i < w.size(); ++i) want[i] = static_cast<float>((1.0 - a) * w[i] + a * e[i]);
      const std::vector<float> got = d_w.download();
      EXPECT_EQ(float_bits(got), float_bits(want)) << "a " << a;
      DeviceBuffer<bf16> d_b(size_t(n) + 1);  // poisoned, one element past the end
      cuda::round_to_bf16(d_b.get(), d_w.get(), n, nullptr);
      const std::vector<bf16> b = d_b.download();
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(bits(b[size_t(i)]), bits(float_to_bf16(got[size_t(i)]))) << i;
      EXPECT_EQ(bits(b[size_t(n)]), 0xFFFF) << "written past the end";
    }
  }
}

}  // namespace
}  // namespace strata::test
