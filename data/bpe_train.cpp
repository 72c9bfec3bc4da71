// data/bpe_train.cpp: byte-level BPE training (see bpe_train.h for the vocabulary layout and the algorithm).
#include "data/bpe_train.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <limits>
#include <span>
#include <unordered_map>

#include "data/pretokenizer.h"
#include "engine/check.h"
#include "engine/parallel.h"

namespace strata::data {
namespace {

using Clock = std::chrono::steady_clock;
using PairKey = uint64_t;  // (left << 32) | right: ordering keys orders pairs by (left, right)

constexpr uint32_t kNone = std::numeric_limits<uint32_t>::max();
constexpr uint32_t kFirstMerge = 256;
// Work items of pre-tokenizing: documents, with large ones cut (at safe cuts) into pieces of about this size.
constexpr size_t kChunkBytes = size_t{1} << 20;

inline PairKey pair_key(uint32_t left, uint32_t right) { return (uint64_t{left} << 32) | right; }
inline uint32_t pair_left(PairKey k) { return static_cast<uint32_t>(k >> 32); }
inline uint32_t pair_right(PairKey k) { return static_cast<uint32_t>(k & 0xFFFFFFFFu); }
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// ---- 1. unique pieces with their frequencies ----------------------------------------------------------------

struct TextRange {
  size_t doc, begin, end;
};

struct PieceCounts {
  std::vector<std::pair<std::string_view, uint64_t>> unique;  // sorted by bytes
  uint64_t pieces = 0;
};

PieceCounts count_pieces(const std::vector<std::string_view>& documents, int threads) {
  std::vector<TextRange> ranges;
  for (size_t d = 0; d < documents.size(); ++d) {
    const std::string_view text = documents[d];
    size_t begin = 0;
    while (begin < text.size()) {
      const size_t end = text.size() - begin > 2 * kChunkBytes ? find_safe_cut(text, begin + kChunkBytes)
                                                               : text.size();
      ranges.push_back({d, begin, end});
      begin = end;
    }
  }

  // One map per worker; sums are order-independent, so the merged counts do not depend on the thread count.
  using Map = std::unordered_map<std::string_view, uint64_t>;
  const size_t workers = std::max<size_t>(1, std::min(ranges.size(), static_cast<size_t>(resolve_threads(threads))));
  std::vector<Map> maps(workers);
  std::vector<uint64_t> pieces(workers, 0);
  std::atomic<size_t> next{0};
  const PreTokenizer pretokenizer;
  parallel_for(workers, static_cast<int>(workers), [&](size_t w) {
    Map& map = maps[w];
    for (;;) {
      const size_t i = next.fetch_add(1);
      if (i >= ranges.size()) break;
      const TextRange& r = ranges[i];
      pretokenizer.split(documents[r.doc].substr(r.begin, r.end - r.begin), [&](std::string_view piece) {
        ++map[piece];
        ++pieces[w];
      });
    }
  });

  size_t largest = 0;
  for (size_t w = 1; w < workers; ++w)
    if (maps[w].size() > maps[largest].size()) largest = w;
  Map& all = maps[largest];
  for (size_t w = 0; w < workers; ++w) {
    if (w == largest) continue;
    for (const auto& [piece, n] : maps[w]) all[piece] += n;
    Map().swap(maps[w]);
  }
  PieceCounts out;
  for (const uint64_t n : pieces) out.pieces += n;
  out.unique.assign(all.begin(), all.end());
  Map().swap(all);
  std::sort(out.unique.begin(), out.unique.end());
  return out;
}

// ---- 2./3. the merge loop -----------------------------------------------------------------------------------

// Appends the pairs of `s`, (s[i], s[i+1]) runs of equal symbols counted non-overlapping from the left.
void collect_pairs(std::span<const uint32_t> s, std::vector<PairKey>& out) {
  bool took_equal = false;  // the previous pair was (x, x) and was counted
  for (size_t i = 0; i + 1 < s.size(); ++i) {
    if (s[i] == s[i + 1]) {
      if (took_equal) {
        took_equal = false;
        continue;
      }
      took_equal = true;
    } else {
      took_equal = false;
    }
    out.push_back(pair_key(s[i], s[i + 1]));
  }
}

struct HeapEntry {
  uint64_t count;
  PairKey pair;
};
// std::push_heap keeps the "largest" on top: the highest count, then the smallest (left, right).
inline bool heap_less(const HeapEntry& a, const HeapEntry& b) {
  return a.count != b.count ? a.count < b.count : a.pair > b.pair;
}

class Trainer {
 public:
  Trainer(const PieceCounts& pc, const BpeTrainOptions& options) : options_(options) {
    tokens_.reserve(std::min<size_t>(options.vocab_size, size_t{1} << 20));  // a huge vocab_size fails later, cleanly
    for (int b = 0; b < 256; ++b) add_token(std::string(1, static_cast<char>(b)));
    // Words: the unique pieces, as bytes, in one flat array.
    size_t total = 0;
    for (const auto& [piece, n] : pc.unique) total += piece.size();
    symbols_.reserve(total);
    for (const auto& [piece, n] : pc.unique) {
      starts_.push_back(symbols_.size());
      lengths_.push_back(static_cast<uint32_t>(piece.size()));
      freqs_.push_back(n);
      for (const char c : piece) symbols_.push_back(static_cast<unsigned char>(c));
    }
    std::vector<PairKey> pairs;
    for (uint32_t w = 0; w < freqs_.size(); ++w) {
      pairs.clear();
      collect_pairs(word(w), pairs);
      for (const PairKey p : pairs) {
        counts_[p] += static_cast<int64_t>(freqs_[w]);
        std::vector<uint32_t>& idx = index_[p];
        if (idx.empty() || idx.back() != w) idx.push_back(w);
      }
    }
    heap_.reserve(counts_.size());
    for (const auto& [p, n] : counts_) heap_.push_back({static_cast<uint64_t>(n), p});
    std::make_heap(heap_.begin(), heap_.end(), heap_less);
  }

  // Runs merges until `merges` are done; returns false (stopping early) when the best count < min_frequency.
  bool run(uint32_t merges, BpeTrainResult& result) {
    const auto t0 = Clock::now();
    auto last_report = t0;
    for (uint32_t m = 0; m < merges; ++m) {
      const HeapEntry best = pop_best();
      if (best.count == 0 || best.count < options_.min_frequency) return false;
      merge(best.pair);
      result.merges.emplace_back(pair_left(best.pair), pair_right(best.pair));
      result.merge_counts.push_back(best.count);
      if (options_.progress && (since(last_report) >= 1.0 || m + 1 == merges)) {
        last_report = Clock::now();
        std::fprintf(stderr, "bpe: merge %u/%u, pair count %llu, %.1f s\n", m + 1, merges,
                     static_cast<unsigned long long>(best.count), since(t0));
      }
    }
    return true;
  }

  std::vector<std::string> take_tokens() { return std::move(tokens_); }

  uint64_t tokens_out() const {
    uint64_t n = 0;
    for (size_t w = 0; w < freqs_.size(); ++w) n += lengths_[w] * freqs_[w];
    return n;
  }

 private:
  std::span<uint32_t> word(uint32_t w) { return {symbols_.data() + starts_[w], lengths_[w]}; }

  void add_token(std::string bytes) {
    const auto id = static_cast<uint32_t>(tokens_.size());
    const bool inserted = ids_.emplace(bytes, id).second;
    STRATA_CHECK(inserted, "BPE token ", id, " duplicates token ", ids_.at(bytes));
    tokens_.push_back(std::move(bytes));
  }

  // The token whose bytes are bytes(a) + bytes(b), or kNone. Cached per pair; a cached kNone stays valid because
  // a later token T registers every split of T (both halves already tokens) when it is added, and a split with a
  // half added after T involves that newer token, so it was never looked up before T existed.
  uint32_t concat_token(uint32_t a, uint32_t b) {
    const auto [it, inserted] = concat_.try_emplace(pair_key(a, b), kNone);
    if (inserted) {
      buf_.assign(tokens_[a]).append(tokens_[b]);
      const auto found = ids_.find(buf_);
      if (found != ids_.end()) it->second = found->second;
    }
    return it->second;
  }

  // Pops heap entries until one holds the current count of its pair; {0, 0} when none is left.
  HeapEntry pop_best() {
    while (!heap_.empty()) {
      std::pop_heap(heap_.begin(), heap_.end(), heap_less);
      const HeapEntry e = heap_.back();
      heap_.pop_back();
      const auto it = counts_.find(e.pair);
      const uint64_t current = it == counts_.end() ? 0 : static_cast<uint64_t>(it->second);
      if (current == e.count) return e;
      // A count that grew was pushed again when it grew; one that shrank is re-queued with its current value.
      if (current < e.count && current > 0) {
        heap_.push_back({current, e.pair});
        std::push_heap(heap_.begin(), heap_.end(), heap_less);
      }
    }
    return {0, 0};
  }

  void merge(PairKey best) {
    const uint32_t left = pair_left(best), right = pair_right(best);
    const auto id = static_cast<uint32_t>(tokens_.size());
    add_token(tokens_[left] + tokens_[right]);
    const std::string& t = tokens_[id];

    // Every split of the new token into two existing tokens: the pairs that now merge into it. The words holding
    // any of them are the words this merge changes (every word is closed, so no other pair can merge).
    std::vector<PairKey> splits;
    std::vector<uint32_t> words;
    for (size_t i = 1; i < t.size(); ++i) {
      const auto a = ids_.find(t.substr(0, i));
      const auto b = ids_.find(t.substr(i));
      if (a == ids_.end() || b == ids_.end()) continue;
      const PairKey p = pair_key(a->second, b->second);
      concat_[p] = id;
      splits.push_back(p);
      if (const auto idx = index_.find(p); idx != index_.end())
        words.insert(words.end(), idx->second.begin(), idx->second.end());
    }
    STRATA_CHECK(std::find(splits.begin(), splits.end(), best) != splits.end(), "BPE merge pair is not a split");
    std::sort(words.begin(), words.end());
    words.erase(std::unique(words.begin(), words.end()), words.end());

    grown_.clear();
    for (const uint32_t w : words) update_word(w, t.size());
    for (const PairKey p : splits) {
      const auto it = counts_.find(p);
      STRATA_CHECK(it == counts_.end() || it->second == 0, "BPE pair (", pair_left(p), ", ", pair_right(p),
                   ") still has count ", it == counts_.end() ? 0 : it->second, " after its merge");
      if (it != counts_.end()) counts_.erase(it);
      index_.erase(p);
    }
    std::sort(grown_.begin(), grown_.end());
    grown_.erase(std::unique(grown_.begin(), grown_.end()), grown_.end());
    for (const PairKey p : grown_) {
      heap_.push_back({static_cast<uint64_t>(counts_.at(p)), p});
      std::push_heap(heap_.begin(), heap_.end(), heap_less);
    }
  }

  // Continues the tiktoken rule on word w after a token of `new_len` bytes was added, and updates the pair counts
  // and the index by the difference between its pairs before and after.
  void update_word(uint32_t w, size_t new_len) {
    std::span<uint32_t> s = word(w);
    old_pairs_.clear();
    collect_pairs(s, old_pairs_);

    // ranks_[i]: the token (s[i], s[i+1]) merge into, or kNone. The word was closed before the new token, so only
    // pairs whose lengths add up to the new token's can merge now; the rest need no lookup.
    ranks_.assign(s.size(), kNone);
    for (size_t i = 0; i + 1 < s.size(); ++i)
      if (tokens_[s[i]].size() + tokens_[s[i + 1]].size() == new_len) ranks_[i] = concat_token(s[i], s[i + 1]);
    size_t n = s.size();
    bool changed = false;
    for (;;) {
      size_t pos = 0;
      uint32_t lowest = kNone;
      for (size_t i = 0; i + 1 < n; ++i)
        if (ranks_[i] < lowest) {
          lowest = ranks_[i];
          pos = i;
        }
      if (lowest == kNone) break;
      changed = true;
      s[pos] = lowest;
      std::copy(s.begin() + static_cast<ptrdiff_t>(pos) + 2, s.begin() + static_cast<ptrdiff_t>(n),
                s.begin() + static_cast<ptrdiff_t>(pos) + 1);
      std::copy(ranks_.begin() + static_cast<ptrdiff_t>(pos) + 2, ranks_.begin() + static_cast<ptrdiff_t>(n),
                ranks_.begin() + static_cast<ptrdiff_t>(pos) + 1);
      --n;
      if (pos > 0) ranks_[pos - 1] = concat_token(s[pos - 1], s[pos]);
      ranks_[pos] = pos + 1 < n ? concat_token(s[pos], s[pos + 1]) : kNone;
    }
    if (!changed) return;  // a stale index entry
    lengths_[w] = static_cast<uint32_t>(n);

    new_pairs_.clear();
    collect_pairs(s.first(n), new_pairs_);
    std::sort(old_pairs_.begin(), old_pairs_.end());
    std::sort(new_pairs_.begin(), new_pairs_.end());
    const auto freq = static_cast<int64_t>(freqs_[w]);
    size_t i = 0, j = 0;
    while (i < old_pairs_.size() || j < new_pairs_.size()) {
      const PairKey p = j == new_pairs_.size() || (i < old_pairs_.size() && old_pairs_[i] < new_pairs_[j])
                            ? old_pairs_[i]
                            : new_pairs_[j];
      int64_t before = 0, after = 0;
      for (; i < old_pairs_.size() && old_pairs_[i] == p; ++i) ++before;
      for (; j < new_pairs_.size() && new_pairs_[j] == p; ++j) ++after;
      if (before == after) continue;
      int64_t& count = counts_[p];
      count += (after - before) * freq;
      STRATA_CHECK(count >= 0, "BPE pair count went negative");
      if (after > before) grown_.push_back(p);
      if (before == 0) index_[p].push_back(w);
    }
  }

  const BpeTrainOptions& options_;
  std::vector<std::string> tokens_;                    // id -> bytes
  std::unordered_map<std::string, uint32_t> ids_;      // bytes -> id
  std::unordered_map<PairKey, uint32_t> concat_;       // (a, b) -> token of bytes(a) + bytes(b), or kNone
  std::vector<uint32_t> symbols_;                      // all words' symbols, word w at [starts_[w], +lengths_[w])
  std::vector<size_t> starts_;
  std::vector<uint32_t> lengths_;
  std::vector<uint64_t> freqs_;
  std::unordered_map<PairKey, int64_t> counts_;        // pair -> sum of freq x non-overlapping occurrences
  std::unordered_map<PairKey, std::vector<uint32_t>> index_;  // pair -> words that held it (may be stale)
  std::vector<HeapEntry> heap_;                        // lazy: entries may hold outdated counts
  // Scratch.
  std::string buf_;
  std::vector<PairKey> old_pairs_, new_pairs_, grown_;
  std::vector<uint32_t> ranks_;
};

}  // namespace

BpeTrainResult train_bpe_detailed(const std::vector<std::string_view>& documents, const BpeTrainOptions& options) {
  STRATA_REQUIRE(options.vocab_size >= 257, "BPE vocab size ", options.vocab_size,
                 " is too small: it must be at least 257 (256 bytes + <|endoftext|>)");
  STRATA_REQUIRE(options.min_frequency >= 1, "BPE min frequency must be at least 1");
  const uint32_t merges = options.vocab_size - 257;
  BpeTrainResult result;
  result.documents = documents.size();
  for (const std::string_view d : documents) result.bytes += d.size();

  const auto t0 = Clock::now();
  const PieceCounts pc = count_pieces(documents, options.threads);
  result.pieces = pc.pieces;
  result.unique_pieces = pc.unique.size();
  result.seconds_count = since(t0);
  if (options.progress)
    std::fprintf(stderr, "bpe: %llu pieces, %llu unique, counted in %.2f s\n",
                 static_cast<unsigned long long>(result.pieces), static_cast<unsigned long long>(result.unique_pieces),
                 result.seconds_count);

  const auto t1 = Clock::now();
  Trainer trainer(pc, options);
  if (!trainer.run(merges, result))
    STRATA_FAIL("BPE training: the corpus (", result.bytes, " bytes) supports only ", result.merges.size(),
                " merges with a pair count of at least ", options.min_frequency, ", so a vocab size of at most ",
                result.merges.size() + 257, " (asked for ", options.vocab_size,
                "); use more text, a smaller vocab size or a lower min frequency");
  result.tokens_out = trainer.tokens_out();
  result.tokens = trainer.take_tokens();
  result.seconds_merge = since(t1);
  STRATA_CHECK(result.tokens.size() == kFirstMerge + merges);
  return result;
}

std::vector<std::string> train_bpe(const std::vector<std::string_view>& documents, const BpeTrainOptions& options) {
  return train_bpe_detailed(documents, options).tokens;
}

}  // namespace strata::data
