#include "data/loader.h"

#include <algorithm>
#include <climits>
#include <numeric>
#include <optional>
#include <random>
#include <utility>

#include "engine/check.h"
#include "engine/parallel.h"

namespace strata::data {
namespace {

// splitmix64 (Vigna): turns structured keys (seed, epoch, shard) into well-spread 64-bit seeds for
// mt19937_64.
uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
uint64_t mix(uint64_t a, uint64_t b) {
  return splitmix64(a ^ splitmix64(b));
}

// Domains keep the shard-order draw and the per-shard sample draws independent.
constexpr uint64_t kShardOrderDomain = 1;
constexpr uint64_t kSampleOrderDomain = 2;

// Uniform in [0, bound) by rejection: the accepted range [2^64 mod bound, 2^64) holds a whole number of
// copies of [0, bound), so there is no modulo bias. Fixed arithmetic, unlike std::uniform_int_distribution,
// whose algorithm differs between standard libraries.
uint64_t uniform_below(std::mt19937_64& rng, uint64_t bound) {
  const uint64_t threshold = (0 - bound) % bound;
  for (;;) {
    const uint64_t r = rng();
    if (r >= threshold) return r % bound;
  }
}

// Fisher-Yates over the identity permutation of size n.
template <typename Index>
void shuffled_identity(std::vector<Index>& p, size_t n, uint64_t key) {
  p.resize(n);
  std::iota(p.begin(), p.end(), Index{0});
  std::mt19937_64 rng(key);
  for (size_t i = n; i > 1; --i) std::swap(p[i - 1], p[uniform_below(rng, i)]);
}

constexpr const char* kWhat = "data loader: ";
constexpr const char* kState = "loader state: ";

uint64_t json_u64(const nlohmann::json& j, const char* key) {
  const auto it = j.find(key);
  STRATA_REQUIRE(it != j.end(), kState, "missing field '", key, "'");
  STRATA_REQUIRE(it->is_number_unsigned(), kState, "field '", key, "' must be a non-negative integer (got ",
                 it->dump().substr(0, 40), ")");
  return it->get<uint64_t>();
}

int json_int(const nlohmann::json& j, const char* key) {
  const auto it = j.find(key);
  STRATA_REQUIRE(it != j.end(), kState, "missing field '", key, "'");
  const bool ok = it->is_number_unsigned() ? it->get<uint64_t>() <= static_cast<uint64_t>(INT_MAX)
                                           : it->is_number_integer() && it->get<int64_t>() >= INT_MIN &&
                                                 it->get<int64_t>() <= INT_MAX;
  STRATA_REQUIRE(ok, kState, "field '", key, "' must be an integer that fits in int (got ",
                 it->dump().substr(0, 40), ")");
  return static_cast<int>(it->get<int64_t>());
}

}  // namespace

nlohmann::json LoaderState::to_json() const {
  return nlohmann::json{{"epoch", epoch},
                        {"next_sample", next_sample},
                        {"seed", seed},
                        {"batch_size", batch_size},
                        {"seq_len", seq_len},
                        {"world", world},
                        {"total_tokens", total_tokens},
                        {"num_shards", num_shards},
                        {"shard_layout", shard_layout}};
}

LoaderState LoaderState::from_json(const nlohmann::json& j) {
  STRATA_REQUIRE(j.is_object(), kState, "expected a JSON object (got ", j.type_name(), ")");
  LoaderState s;
  s.epoch = json_u64(j, "epoch");
  s.next_sample = json_u64(j, "next_sample");
  s.seed = json_u64(j, "seed");
  s.batch_size = json_int(j, "batch_size");
  s.seq_len = json_int(j, "seq_len");
  s.world = json_int(j, "world");
  s.total_tokens = json_u64(j, "total_tokens");
  s.num_shards = json_u64(j, "num_shards");
  s.shard_layout = json_u64(j, "shard_layout");
  return s;
}

struct DataLoader::Impl {
  LoaderOptions opts;
  std::vector<Shard> shards;
  std::vector<uint64_t> shard_samples;  // usable samples per shard, constructor order
  uint64_t total_tokens = 0;
  uint64_t shard_layout = 14695981039346656037ull;  // FNV-1a offset basis, folded with each shard's size
  uint64_t samples = 0;                             // S
  uint64_t global_batch = 0;                        // B * R
  uint64_t batches = 0;                             // floor(S / (B*R))

  // Position.
  uint64_t epoch = 0;
  uint64_t next_sample = 0;

  // The epoch's shard order and the cumulative samples along it (cum[j] = samples of order[0..j)).
  std::optional<uint64_t> order_epoch;
  std::vector<uint32_t> order;
  std::vector<uint64_t> cum;
  // One shard's sample permutation (shuffle only), for (sample_epoch, sample_shard).
  std::optional<std::pair<uint64_t, size_t>> sample_key;
  std::vector<uint32_t> sample_perm;

  void ensure_order() {
    if (order_epoch == epoch) return;
    const size_t k = shards.size();
    if (opts.shuffle) {
      shuffled_identity(order, k, mix(mix(opts.seed, epoch), kShardOrderDomain));
    } else {
      order.resize(k);
      std::iota(order.begin(), order.end(), 0u);
    }
    cum.assign(k + 1, 0);
    for (size_t j = 0; j < k; ++j) cum[j + 1] = cum[j] + shard_samples[order[j]];
    STRATA_CHECK(cum[k] == samples);
    order_epoch = epoch;
  }

  // Global sample g of the current epoch -> (shard, first token of its window).
  std::pair<size_t, size_t> locate(uint64_t g) {
    STRATA_CHECK(g < samples, "sample ", g, " of ", samples);
    ensure_order();
    // The last j with cum[j] <= g; cum[j+1] > g, so that shard is non-empty.
    const size_t j = static_cast<size_t>(std::upper_bound(cum.begin(), cum.end(), g) - cum.begin()) - 1;
    const size_t shard = order[j];
    uint64_t local = g - cum[j];
    if (opts.shuffle) {
      const std::pair<uint64_t, size_t> key{epoch, shard};
      if (sample_key != key) {
        shuffled_identity(sample_perm, static_cast<size_t>(shard_samples[shard]),
                          mix(mix(mix(opts.seed, epoch), kSampleOrderDomain), shard));
        sample_key = key;
      }
      local = sample_perm[local];
    }
    return {shard, static_cast<size_t>(local) * static_cast<size_t>(opts.seq_len)};
  }
};

DataLoader::DataLoader(std::vector<std::string> shard_paths, const LoaderOptions& opts)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.opts = opts;
  STRATA_REQUIRE(!shard_paths.empty(), kWhat, "no shards given");
  STRATA_REQUIRE(opts.batch_size >= 1, kWhat, "batch_size must be at least 1 (got ", opts.batch_size, ")");
  STRATA_REQUIRE(opts.seq_len >= 1, kWhat, "seq_len must be at least 1 (got ", opts.seq_len, ")");
  STRATA_REQUIRE(opts.world >= 1, kWhat, "world must be at least 1 (got ", opts.world, ")");
  STRATA_REQUIRE(opts.rank >= 0 && opts.rank < opts.world, kWhat, "rank ", opts.rank,
                 " is outside [0, world ", opts.world, ")");
  STRATA_REQUIRE(shard_paths.size() <= UINT32_MAX, kWhat, "too many shards (", shard_paths.size(), ")");

  // Validation scans every token when vocab_size > 0: open the shards in parallel.
  std::vector<std::optional<Shard>> opened(shard_paths.size());
  parallel_for(shard_paths.size(), 0,
               [&](size_t i) { opened[i] = Shard::open(shard_paths[i], opts.vocab_size); });
  const auto t = static_cast<uint64_t>(opts.seq_len);
  for (auto& s : opened) {
    const uint64_t n = s->size();
    m.total_tokens += n;
    for (int byte = 0; byte < 8; ++byte)
      m.shard_layout = (m.shard_layout ^ ((n >> (8 * byte)) & 0xFF)) * 1099511628211ull;
    m.shard_samples.push_back(n >= 1 ? (n - 1) / t : 0);
    m.samples += m.shard_samples.back();
    m.shards.push_back(std::move(*s));
  }
  m.global_batch = static_cast<uint64_t>(opts.batch_size) * static_cast<uint64_t>(opts.world);
  STRATA_REQUIRE(m.samples >= m.global_batch, kWhat, "the dataset (", m.shards.size(), " shards, ",
                 m.total_tokens, " tokens) has ", m.samples, " samples of T+1 = ", t + 1,
                 " tokens, fewer than one global batch of B x R = ", opts.batch_size, " x ", opts.world);
  m.batches = m.samples / m.global_batch;
}

DataLoader::~DataLoader() = default;
DataLoader::DataLoader(DataLoader&&) noexcept = default;
DataLoader& DataLoader::operator=(DataLoader&&) noexcept = default;

void DataLoader::next(int32_t* inputs, int32_t* targets) {
  Impl& m = *impl_;
  const auto b = static_cast<size_t>(m.opts.batch_size);
  const auto t = static_cast<size_t>(m.opts.seq_len);
  const uint64_t first = m.next_sample + static_cast<uint64_t>(m.opts.rank) * b;
  for (size_t i = 0; i < b; ++i) {
    const auto [shard, offset] = m.locate(first + i);
    m.shards[shard].read(offset, t, inputs + i * t);
    m.shards[shard].read(offset + 1, t, targets + i * t);
  }
  m.next_sample += m.global_batch;
  if (m.next_sample >= m.batches * m.global_batch) {  // the rest of the epoch is the skipped tail
    ++m.epoch;
    m.next_sample = 0;
  }
}

LoaderState DataLoader::state() const {
  const Impl& m = *impl_;
  LoaderState s;
  s.epoch = m.epoch;
  s.next_sample = m.next_sample;
  s.seed = m.opts.seed;
  s.batch_size = m.opts.batch_size;
  s.seq_len = m.opts.seq_len;
  s.world = m.opts.world;
  s.total_tokens = m.total_tokens;
  s.num_shards = m.shards.size();
  s.shard_layout = m.shard_layout;
  return s;
}

void DataLoader::restore(const LoaderState& s) {
  Impl& m = *impl_;
  const LoaderOptions& o = m.opts;
  auto same = [](const char* field, auto theirs, auto ours, const char* why) {
    STRATA_REQUIRE(theirs == ours, kState, field, " ", theirs, " differs from this loader's ", ours, " (",
                   why, ")");
  };
  same("num_shards", s.num_shards, static_cast<uint64_t>(m.shards.size()), "a different dataset");
  same("total_tokens", s.total_tokens, m.total_tokens, "a different dataset");
  same("shard_layout", s.shard_layout, m.shard_layout, "shards reordered or replaced");
  same("seed", s.seed, o.seed, "a different data order");
  same("batch_size", s.batch_size, o.batch_size, "a different batch layout");
  same("seq_len", s.seq_len, o.seq_len, "a different sample length");
  same("world", s.world, o.world, "a different number of ranks");
  STRATA_REQUIRE(s.next_sample % m.global_batch == 0, kState, "next_sample ", s.next_sample,
                 " is not a multiple of the global batch B x R = ", m.global_batch);
  STRATA_REQUIRE(s.next_sample < m.batches * m.global_batch, kState, "next_sample ", s.next_sample,
                 " is past the last global batch of the epoch (", m.batches, " batches of ", m.global_batch,
                 " samples)");
  m.epoch = s.epoch;
  m.next_sample = s.next_sample;
}

void DataLoader::reset() {
  impl_->epoch = 0;
  impl_->next_sample = 0;
}

uint64_t DataLoader::samples_per_epoch() const {
  return impl_->samples;
}
uint64_t DataLoader::batches_per_epoch() const {
  return impl_->batches;
}
uint64_t DataLoader::epoch() const {
  return impl_->epoch;
}
const LoaderOptions& DataLoader::options() const {
  return impl_->opts;
}
size_t DataLoader::num_shards() const {
  return impl_->shards.size();
}
uint64_t DataLoader::total_tokens() const {
  return impl_->total_tokens;
}

}  // namespace strata::data
