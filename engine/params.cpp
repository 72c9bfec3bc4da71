#include "engine/params.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numbers>

#include "engine/check.h"

namespace strata {

std::vector<int64_t> ParamEntry::stored_shape() const {
  std::vector<int64_t> s;
  if (spec.per_layer) s.push_back(layers);
  s.insert(s.end(), spec.shape.begin(), spec.shape.end());
  return s;
}

ParamLayout::ParamLayout(const models::ModelConfig& cfg) : cfg_(cfg) {
  for (const models::TensorSpec& s : models::tensor_table(cfg)) {
    ParamEntry e;
    e.spec = s;
    e.layers = s.per_layer ? cfg.n_layer : 1;
    e.offset = numel_;
    // Each tensor starts on a 16-float (64-byte) boundary so vector loads of any tensor are aligned.
    numel_ += (e.numel() + 15) / 16 * 16;
    entries_.push_back(std::move(e));
  }
}

const ParamEntry* ParamLayout::find(const std::string& name) const {
  for (const ParamEntry& e : entries_)
    if (e.spec.name == name) return &e;
  return nullptr;
}

ZeroedFloats::ZeroedFloats(size_t n) : n_(n) {
  if (n == 0) return;
  p_ = static_cast<float*>(std::calloc(n, sizeof(float)));
  STRATA_REQUIRE(p_ != nullptr, "out of memory allocating ", n * sizeof(float) / (1024 * 1024), " MiB");
}

ZeroedFloats::ZeroedFloats(const ZeroedFloats& o) : ZeroedFloats(o.n_) {
  if (n_) std::memcpy(p_, o.p_, n_ * sizeof(float));
}

ZeroedFloats::~ZeroedFloats() {
  std::free(p_);
}

ParamBuffer::ParamBuffer(const ParamLayout& layout)
    : layout_(layout), data_(static_cast<size_t>(layout.numel())) {}

float* ParamBuffer::tensor(const std::string& name) {
  const ParamEntry* e = layout_.find(name);
  return e ? data_.data() + e->offset : nullptr;
}

const float* ParamBuffer::tensor(const std::string& name) const {
  const ParamEntry* e = layout_.find(name);
  return e ? data_.data() + e->offset : nullptr;
}

float* ParamBuffer::layer(const std::string& name, int l) {
  const ParamEntry* e = layout_.find(name);
  STRATA_CHECK(e != nullptr && e->spec.per_layer && l >= 0 && l < e->layers, "no layer ", l, " of tensor '",
               name, "'");
  return data_.data() + e->offset + l * e->spec.numel_per_layer();
}

void ParamBuffer::zero() {
  std::fill(data_.data(), data_.data() + data_.size(), 0.0f);
}

namespace {

uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

// Uniform in (0, 1) from the top 53 bits; never 0, so log() is finite.
double uniform_open(std::mt19937_64& rng) {
  return (static_cast<double>(rng() >> 11) + 0.5) * 0x1.0p-53;
}

}  // namespace

void fill_init(const models::InitRule& rule, float* p, int64_t n, uint64_t stream_seed) {
  switch (rule.kind) {
    case models::InitKind::kOnes:
      std::fill(p, p + n, 1.0f);
      break;
    case models::InitKind::kZeros:
      std::fill(p, p + n, 0.0f);
      break;
    case models::InitKind::kNormal: {
      uint64_t s = stream_seed;
      std::mt19937_64 rng(splitmix64(s));
      const double sd = rule.std;
      for (int64_t i = 0; i < n; i += 2) {  // Box-Muller: two normals per pair of uniforms
        const double r = std::sqrt(-2.0 * std::log(uniform_open(rng)));
        const double a = 2.0 * std::numbers::pi * uniform_open(rng);
        p[i] = static_cast<float>(sd * r * std::cos(a));
        if (i + 1 < n) p[i + 1] = static_cast<float>(sd * r * std::sin(a));
      }
      break;
    }
  }
}

uint64_t init_stream_seed(uint64_t seed, const std::string& name, int64_t index) {
  uint64_t s = seed ^ fnv1a(name);
  if (index >= 0) {
    uint64_t x = static_cast<uint64_t>(index) + 0x632BE59BD9B4E019ull;
    s ^= splitmix64(x);
  }
  return s;
}

void init_params(ParamBuffer& params, uint64_t seed) {
  for (const ParamEntry& e : params.layout().entries())
    fill_init(e.spec.init, params.data() + e.offset, e.numel(), init_stream_seed(seed, e.spec.name));
}

}  // namespace strata
