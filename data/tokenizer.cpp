// data/tokenizer.cpp: GPT-2 byte-level BPE (see tokenizer.h for the encoding rule).
//
// Where the speed comes from (SOTU, one thread: the pre-tokenizer's PCRE2 matching is now the largest cost):
//  - Whole-piece lookup first: 88% of the pre-token pieces of English text are tokens themselves (" the",
//    " State"), 9% are single bytes, under 3% need merges. The bytes -> rank table is open addressing whose
//    16-byte slots hold the token length and first 8 bytes, so a lookup is one cache line and no string
//    compare for tokens up to 8 bytes.
//  - Merges by integer pairs: during BPE every part is a token, so "the concatenation of parts a and b is a
//    token" is exactly "(rank a, rank b) is in the pair table", built once from every split of every token
//    into two tokens (108k pairs for r50k). No string building or hashing of bytes in the merge loop.
//  - Short pieces merge with a linear scan over small arrays on the stack, and their results are kept in a
//    per-thread cache; long pieces (digit runs, whitespace runs, invalid bytes: a piece has no length limit)
//    use a heap with lazy deletion, O(n log n). Both pick the lowest-rank pair, leftmost on ties, as tiktoken
//    does.
//  - encode_parallel cuts at safe points into ~8 chunks per thread, encodes each into a thread-private vector
//    (no false sharing) and concatenates in parallel.
#include "data/tokenizer.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <cstring>
#include <queue>
#include <unordered_map>

#include "data/pretokenizer.h"
#include "engine/check.h"
#include "engine/fileio.h"
#include "engine/parallel.h"

namespace strata::data {
namespace {

constexpr uint32_t kNone = UINT32_MAX;

// ---- base64 (standard alphabet, '=' padding), as in tiktoken files
// ---------------------------------------------

constexpr char kB64Chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

constexpr std::array<int8_t, 256> make_b64_table() {
  std::array<int8_t, 256> t{};
  for (auto& v : t) v = -1;
  for (int i = 0; i < 64; ++i) t[static_cast<unsigned char>(kB64Chars[i])] = static_cast<int8_t>(i);
  return t;
}
constexpr std::array<int8_t, 256> kB64Table = make_b64_table();

// Decodes `in` into `out`; false if it is not canonical padded base64.
bool base64_decode(std::string_view in, std::string& out) {
  out.clear();
  if (in.empty() || in.size() % 4 != 0) return false;
  size_t pad = 0;
  if (in.back() == '=') pad = (in[in.size() - 2] == '=') ? 2 : 1;
  const size_t body = in.size() - pad;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < body; ++i) {
    const int v = kB64Table[static_cast<unsigned char>(in[i])];
    if (v < 0) return false;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  // Leftover bits must be zero for canonical base64.
  return (acc & ((1u << bits) - 1)) == 0;
}

std::string base64_encode(std::string_view in) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= in.size(); i += 3) {
    const uint32_t v = (static_cast<uint8_t>(in[i]) << 16) | (static_cast<uint8_t>(in[i + 1]) << 8) |
                       static_cast<uint8_t>(in[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out.push_back(kB64Chars[(v >> s) & 63]);
  }
  const size_t rest = in.size() - i;
  if (rest > 0) {
    uint32_t v = static_cast<uint32_t>(static_cast<uint8_t>(in[i])) << 16;
    if (rest == 2) v |= static_cast<uint32_t>(static_cast<uint8_t>(in[i + 1])) << 8;
    out.push_back(kB64Chars[(v >> 18) & 63]);
    out.push_back(kB64Chars[(v >> 12) & 63]);
    out.push_back(rest == 2 ? kB64Chars[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

// ---- hashing
// --------------------------------------------------------------------------------------------------

inline uint64_t mix(uint64_t x) {
  x ^= x >> 32;
  x *= 0xD6E8FEB86659FD93ULL;
  x ^= x >> 32;
  return x;
}

inline uint64_t load64(const char* p) {
  uint64_t w;
  std::memcpy(&w, p, 8);
  return w;
}
inline uint64_t load32(const char* p) {
  uint32_t w;
  std::memcpy(&w, p, 4);
  return w;
}

// The last 1..8 bytes of p[0, n) as one word, with fixed-size loads only (no memcpy call for a variable
// size).
inline uint64_t load_tail(const char* p, size_t n) {
  if (n >= 8) return load64(p + n - 8);
  if (n >= 4) return (load32(p) << 32) | load32(p + n - 4);
  if (n == 0) return 0;
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return (uint64_t{u[0]} << 16) | (uint64_t{u[n >> 1]} << 8) | u[n - 1];
}

inline uint64_t hash_bytes(const char* p, size_t n) {
  uint64_t h = 0x9E3779B97F4A7C15ULL ^ (n * 0xFF51AFD7ED558CCDULL);
  size_t i = 0;
  for (; i + 8 < n; i += 8) {
    h = (h ^ load64(p + i)) * 0xC4CEB9FE1A85EC53ULL;
    h ^= h >> 29;
  }
  return mix((h ^ load_tail(p + i, n - i)) * 0xC4CEB9FE1A85EC53ULL);
}

// memcmp(a, b, n) == 0 for the short strings of BPE, inline.
inline bool bytes_equal(const char* a, const char* b, size_t n) {
  if (n <= 8) return load_tail(a, n) == load_tail(b, n);
  for (size_t i = 0; i + 8 < n; i += 8)
    if (load64(a + i) != load64(b + i)) return false;
  return load64(a + n - 8) == load64(b + n - 8);
}

inline size_t table_capacity(size_t n) {
  size_t cap = 16;
  while (cap < 2 * n) cap <<= 1;
  return cap;
}

}  // namespace

struct Tokenizer::Impl {
  std::vector<std::string> tokens;  // by rank; tokens[n] = kEndOfText
  uint32_t n = 0;                   // ordinary tokens; eot = n
  std::array<uint32_t, 256> byte_rank{};

  // bytes -> rank, open addressing. A slot holds the token's length and its first 8 bytes (the whole token
  // for the usual short ones), so a lookup touches one cache line; only longer tokens read the rest from
  // `tokens`.
  struct BytesSlot {
    uint64_t head;  // load_tail(bytes, len) if len <= 8, else the first 8 bytes
    uint32_t rank;
    uint32_t len;  // 0 = empty
  };
  std::vector<BytesSlot> bytes_slots;
  uint64_t bytes_mask = 0;

  static uint64_t head_of(const char* p, size_t len) { return len <= 8 ? load_tail(p, len) : load64(p); }

  // (left rank, right rank) -> merged rank.
  struct PairSlot {
    uint64_t key;
    uint32_t rank;
  };
  std::vector<PairSlot> pair_slots;
  uint64_t pair_mask = 0;
  static constexpr uint64_t kEmptyKey = UINT64_MAX;

  PreTokenizer pretok;
  uint64_t instance = 0;  // unique per tokenizer, so per-thread caches never mix two vocabularies

  uint32_t find_bytes(std::string_view s) const { return find_bytes(s, hash_bytes(s.data(), s.size())); }
  uint32_t find_bytes(std::string_view s, uint64_t hash) const {
    const uint64_t head = head_of(s.data(), s.size());
    for (uint64_t i = hash & bytes_mask;; i = (i + 1) & bytes_mask) {
      const BytesSlot& slot = bytes_slots[i];
      if (slot.len == s.size() && slot.head == head &&
          (s.size() <= 8 || bytes_equal(tokens[slot.rank].data() + 8, s.data() + 8, s.size() - 8)))
        return slot.rank;
      if (slot.len == 0) return kNone;
    }
  }

  uint32_t find_pair(uint32_t a, uint32_t b) const {
    const uint64_t key = (static_cast<uint64_t>(a) << 32) | b;
    for (uint64_t i = mix(key) & pair_mask;; i = (i + 1) & pair_mask) {
      const PairSlot& s = pair_slots[i];
      if (s.key == key) return s.rank;
      if (s.key == kEmptyKey) return kNone;
    }
  }

  void init(std::vector<std::string> by_rank);
  void encode_piece(std::string_view piece, std::vector<TokenId>& out) const;
  void merge_short(std::string_view piece, std::vector<TokenId>& out) const;
  void merge_long(std::string_view piece, std::vector<TokenId>& out) const;
  void encode_ordinary(std::string_view text, std::vector<TokenId>& out) const;
};

void Tokenizer::Impl::init(std::vector<std::string> by_rank) {
  static std::atomic<uint64_t> next_instance{1};
  instance = next_instance.fetch_add(1);
  tokens = std::move(by_rank);
  n = static_cast<uint32_t>(tokens.size());
  tokens.emplace_back(kEndOfText);
  const size_t cap = table_capacity(n);
  bytes_slots.assign(cap, BytesSlot{0, kNone, 0});
  bytes_mask = cap - 1;
  for (uint32_t r = 0; r < n; ++r) {
    const std::string& t = tokens[r];
    uint64_t i = hash_bytes(t.data(), t.size()) & bytes_mask;
    while (bytes_slots[i].len != 0) i = (i + 1) & bytes_mask;
    bytes_slots[i] = BytesSlot{head_of(t.data(), t.size()), r, static_cast<uint32_t>(t.size())};
  }
  for (int b = 0; b < 256; ++b) {
    const char c = static_cast<char>(b);
    byte_rank[b] = find_bytes(std::string_view(&c, 1));
  }

  // Every split of every token into two tokens. A token with several such splits gets several pairs, all
  // mapping to it, exactly as "the concatenation is a token" would.
  std::vector<std::pair<uint64_t, uint32_t>> pairs;
  pairs.reserve(static_cast<size_t>(n) * 4);
  for (uint32_t r = 0; r < n; ++r) {
    const std::string_view t = tokens[r];
    for (size_t k = 1; k < t.size(); ++k) {
      const uint32_t a = find_bytes(t.substr(0, k));
      if (a == kNone) continue;
      const uint32_t b = find_bytes(t.substr(k));
      if (b == kNone) continue;
      pairs.emplace_back((static_cast<uint64_t>(a) << 32) | b, r);
    }
  }
  const size_t pcap = table_capacity(pairs.size());
  pair_slots.assign(pcap, PairSlot{kEmptyKey, kNone});
  pair_mask = pcap - 1;
  for (const auto& [key, r] : pairs) {
    uint64_t i = mix(key) & pair_mask;
    while (pair_slots[i].key != kEmptyKey) i = (i + 1) & pair_mask;
    pair_slots[i] = PairSlot{key, r};
  }
}

// Pieces up to this many bytes merge by linear scans over stack arrays; longer ones use the heap.
constexpr size_t kShortPiece = 128;

void Tokenizer::Impl::merge_short(std::string_view piece, std::vector<TokenId>& out) const {
  uint32_t part[kShortPiece];  // rank of each part
  uint32_t pair[kShortPiece];  // merged rank of (part i, part i+1), kNone if not a token
  size_t m = piece.size();
  for (size_t i = 0; i < m; ++i) part[i] = byte_rank[static_cast<unsigned char>(piece[i])];
  for (size_t i = 0; i + 1 < m; ++i) pair[i] = find_pair(part[i], part[i + 1]);
  pair[m - 1] = kNone;  // never a real pair; keeps the shifts below reading initialized values
  while (m > 1) {
    uint32_t best = kNone;
    size_t at = 0;
    for (size_t i = 0; i + 1 < m; ++i)
      if (pair[i] < best) {
        best = pair[i];
        at = i;
      }
    if (best == kNone) break;
    part[at] = best;
    for (size_t i = at + 1; i + 1 < m; ++i) {
      part[i] = part[i + 1];
      pair[i] = pair[i + 1];
    }
    --m;
    if (at > 0) pair[at - 1] = find_pair(part[at - 1], part[at]);
    if (at + 1 < m) pair[at] = find_pair(part[at], part[at + 1]);
  }
  out.insert(out.end(), part, part + m);
}

void Tokenizer::Impl::merge_long(std::string_view piece, std::vector<TokenId>& out) const {
  // Parts are identified by their start byte; a merged-away part is dead. A heap entry names a pair by the
  // starts of its two parts and the end of the right one, so it is stale exactly when any of those changed.
  const size_t len = piece.size();
  STRATA_REQUIRE(len < kNone, "cannot encode a single pre-token piece of ", len,
                 " bytes (the limit is 4 GiB)");
  std::vector<uint32_t> rank(len), next(len), prev(len);
  std::vector<bool> dead(len, false);
  for (size_t i = 0; i < len; ++i) {
    rank[i] = byte_rank[static_cast<unsigned char>(piece[i])];
    next[i] = static_cast<uint32_t>(i + 1);
    prev[i] = static_cast<uint32_t>(i) - 1;  // kNone for i = 0
  }
  struct Entry {
    uint32_t rank, left, right, right_end;
    bool operator>(const Entry& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap;
  auto push = [&](uint32_t left) {
    const uint32_t right = next[left];
    if (right >= len) return;
    const uint32_t merged = find_pair(rank[left], rank[right]);
    if (merged != kNone) heap.push(Entry{merged, left, right, next[right]});
  };
  for (uint32_t i = 0; i + 1 < len; ++i) push(i);
  while (!heap.empty()) {
    const Entry e = heap.top();
    heap.pop();
    if (dead[e.left] || next[e.left] != e.right || next[e.right] != e.right_end) continue;
    rank[e.left] = e.rank;
    dead[e.right] = true;
    next[e.left] = e.right_end;
    if (e.right_end < len) prev[e.right_end] = e.left;
    if (prev[e.left] != kNone) push(prev[e.left]);
    push(e.left);
  }
  for (uint32_t i = 0; i < len; i = next[i]) out.push_back(rank[i]);
}

namespace {

// Per-thread cache of BPE results for pieces that are not tokens themselves (a few percent of pieces in
// English text, but each costs a whole merge loop). Direct-mapped by the piece hash; an entry is valid only
// for the tokenizer instance that wrote it. 4096 x 64 B = 256 KiB per thread.
struct MergeCache {
  static constexpr size_t kEntries = 4096;
  static constexpr size_t kMaxBytes = 24;
  static constexpr size_t kMaxIds = 7;
  struct alignas(64) Entry {
    uint64_t instance = 0;  // 0 = empty
    uint8_t len = 0;
    uint8_t n_ids = 0;
    char bytes[kMaxBytes];
    uint32_t ids[kMaxIds];
  };
  static_assert(sizeof(Entry) == 64, "one cache line per entry");
  std::vector<Entry> entries = std::vector<Entry>(kEntries);
};

MergeCache& merge_cache() {
  thread_local MergeCache cache;
  return cache;
}

}  // namespace

void Tokenizer::Impl::encode_piece(std::string_view piece, std::vector<TokenId>& out) const {
  if (piece.size() == 1) {
    out.push_back(byte_rank[static_cast<unsigned char>(piece[0])]);
    return;
  }
  const uint64_t hash = hash_bytes(piece.data(), piece.size());
  const uint32_t whole = find_bytes(piece, hash);
  if (whole != kNone) {
    out.push_back(whole);
    return;
  }
  if (piece.size() > MergeCache::kMaxBytes) {
    if (piece.size() <= kShortPiece)
      merge_short(piece, out);
    else
      merge_long(piece, out);
    return;
  }
  MergeCache::Entry& e = merge_cache().entries[(hash >> 20) & (MergeCache::kEntries - 1)];
  if (e.instance == instance && e.len == piece.size() &&
      std::memcmp(e.bytes, piece.data(), piece.size()) == 0) {
    out.insert(out.end(), e.ids, e.ids + e.n_ids);
    return;
  }
  const size_t before = out.size();
  merge_short(piece, out);
  const size_t n_ids = out.size() - before;
  if (n_ids <= MergeCache::kMaxIds) {
    e.instance = instance;
    e.len = static_cast<uint8_t>(piece.size());
    e.n_ids = static_cast<uint8_t>(n_ids);
    std::memcpy(e.bytes, piece.data(), piece.size());
    std::copy(out.begin() + static_cast<std::ptrdiff_t>(before), out.end(), e.ids);
  }
}

void Tokenizer::Impl::encode_ordinary(std::string_view text, std::vector<TokenId>& out) const {
  pretok.split(text, [&](std::string_view piece) { encode_piece(piece, out); });
}

// ---- construction and validation
// ------------------------------------------------------------------------------

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

namespace {

std::string byte_hex(int b) {
  static const char* hex = "0123456789abcdef";
  return std::string("0x") + hex[b >> 4] + hex[b & 15];
}

// Checks tokens (by rank) for duplicates and missing single bytes; `where(rank)` names a token's source.
template <typename Where>
void validate_tokens(const std::vector<std::string>& tokens, const std::string& source, Where&& where) {
  STRATA_REQUIRE(!tokens.empty(), source, ": no tokens");
  STRATA_REQUIRE(tokens.size() < (size_t{1} << 31), source, ": too many tokens (", tokens.size(), ")");
  std::unordered_map<std::string_view, uint32_t> seen;
  seen.reserve(tokens.size() * 2);
  for (uint32_t r = 0; r < tokens.size(); ++r) {
    STRATA_REQUIRE(!tokens[r].empty(), where(r), ": empty token (rank ", r, ")");
    const auto [it, inserted] = seen.emplace(tokens[r], r);
    STRATA_REQUIRE(inserted, where(r), ": token bytes of rank ", r, " duplicate those of rank ", it->second,
                   " (", where(it->second), ")");
  }
  for (int b = 0; b < 256; ++b) {
    const char c = static_cast<char>(b);
    STRATA_REQUIRE(seen.count(std::string_view(&c, 1)), source, ": the single byte ", byte_hex(b),
                   " is not a token (all 256 bytes must be, so that any input can be encoded)");
  }
}

}  // namespace

Tokenizer Tokenizer::load(const std::string& path) {
  const std::string data = read_file(path);
  std::vector<std::pair<uint32_t, std::string>> entries;  // (rank, bytes) in file order
  std::vector<size_t> line_of;                            // line number of each entry
  size_t line_no = 0;
  size_t pos = 0;
  std::string bytes;
  while (pos < data.size()) {
    size_t eol = data.find('\n', pos);
    if (eol == std::string::npos) eol = data.size();
    std::string_view line(data.data() + pos, eol - pos);
    pos = eol + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    const size_t sp = line.find(' ');
    STRATA_REQUIRE(sp != std::string_view::npos && sp > 0 && line.find(' ', sp + 1) == std::string_view::npos,
                   path, ":", line_no, ": expected 'base64 rank', got '", line.substr(0, 60), "'");
    const std::string_view b64 = line.substr(0, sp);
    const std::string_view rank_text = line.substr(sp + 1);
    uint32_t rank = 0;
    const auto [end, ec] = std::from_chars(rank_text.data(), rank_text.data() + rank_text.size(), rank);
    STRATA_REQUIRE(!rank_text.empty() && ec == std::errc() && end == rank_text.data() + rank_text.size(),
                   path, ":", line_no, ": rank '", rank_text.substr(0, 20),
                   "' is not a non-negative integer");
    STRATA_REQUIRE(base64_decode(b64, bytes), path, ":", line_no, ": '", b64.substr(0, 60),
                   "' is not valid base64");
    entries.emplace_back(rank, bytes);
    line_of.push_back(line_no);
  }
  const size_t n = entries.size();
  STRATA_REQUIRE(n > 0, path, ": no tokens");
  std::vector<std::string> by_rank(n);
  std::vector<size_t> rank_line(n, 0);
  for (size_t i = 0; i < n; ++i) {
    const uint32_t r = entries[i].first;
    STRATA_REQUIRE(r < n, path, ":", line_of[i], ": rank ", r, " is out of range: ", n,
                   " tokens need ranks exactly 0..", n - 1, " (a rank is missing or skipped)");
    STRATA_REQUIRE(rank_line[r] == 0, path, ":", line_of[i], ": rank ", r, " is given twice (also on line ",
                   rank_line[r], ")");
    rank_line[r] = line_of[i];
    by_rank[r] = std::move(entries[i].second);
  }
  validate_tokens(by_rank, path, [&](uint32_t r) { return cat(path, ":", rank_line[r]); });
  Tokenizer tok;
  tok.impl_->init(std::move(by_rank));
  return tok;
}

Tokenizer Tokenizer::from_tokens(std::vector<std::string> tokens) {
  validate_tokens(tokens, "token list", [](uint32_t r) { return cat("token list entry ", r); });
  Tokenizer tok;
  tok.impl_->init(std::move(tokens));
  return tok;
}

void Tokenizer::save(const std::string& path) const {
  std::string text;
  text.reserve(static_cast<size_t>(impl_->n) * 16);
  for (uint32_t r = 0; r < impl_->n; ++r) {
    text += base64_encode(impl_->tokens[r]);
    text += ' ';
    text += std::to_string(r);
    text += '\n';
  }
  write_file_atomic(path, text);  // compressed when the path ends in .xz, like the committed default
}

uint32_t Tokenizer::vocab_size() const {
  return impl_->n + 1;
}
TokenId Tokenizer::eot() const {
  return impl_->n;
}

// ---- encoding
// -------------------------------------------------------------------------------------------------

namespace {

// Calls fn(segment, eot_after) for the ordinary-text segments of `text`: split at each literal
// "<|endoftext|>" when allow_special (eot_after says one followed the segment), else the whole text as one
// segment.
template <typename Fn>
void for_each_segment(std::string_view text, bool allow_special, Fn&& fn) {
  if (allow_special) {
    for (size_t at; (at = text.find(kEndOfText)) != std::string_view::npos;) {
      fn(text.substr(0, at), true);
      text.remove_prefix(at + kEndOfText.size());
    }
  }
  fn(text, false);
}

}  // namespace

void Tokenizer::encode_append(std::string_view text, bool allow_special, std::vector<TokenId>& out) const {
  for_each_segment(text, allow_special, [&](std::string_view seg, bool eot_after) {
    impl_->encode_ordinary(seg, out);
    if (eot_after) out.push_back(impl_->n);
  });
}

std::vector<TokenId> Tokenizer::encode(std::string_view text, bool allow_special) const {
  std::vector<TokenId> out;
  out.reserve(text.size() / 4 + 8);
  encode_append(text, allow_special, out);
  return out;
}

namespace {

// Chunks for parallel encoding: about 8 per thread so that uneven chunks still balance, at most 1 MiB, and at
// least 64 KiB (about a millisecond of work, far above the per-chunk cost of a vector and a safe-cut scan).
constexpr size_t kMaxChunk = size_t{1} << 20;
constexpr size_t kMinChunk = size_t{64} << 10;
constexpr size_t kChunksPerThread = 8;

struct Chunk {
  std::string_view text;
  bool eot_after;  // an allowed "<|endoftext|>" follows this chunk
};

}  // namespace

std::vector<TokenId> Tokenizer::encode_parallel(std::string_view text, bool allow_special,
                                                int threads) const {
  const int nt = resolve_threads(threads);
  if (nt <= 1 || text.size() < 2 * kMinChunk) return encode(text, allow_special);
  const size_t chunk_bytes =
      std::clamp(text.size() / (kChunksPerThread * static_cast<size_t>(nt)), kMinChunk, kMaxChunk);

  // Cut at special tokens first (they separate texts anyway), then at safe points inside each segment.
  std::vector<Chunk> chunks;
  auto add_segment = [&](std::string_view seg, bool eot_after) {
    size_t start = 0;
    while (seg.size() - start > chunk_bytes + chunk_bytes / 2) {
      const size_t cut = find_safe_cut(seg, start + chunk_bytes);
      if (cut >= seg.size()) break;
      chunks.push_back(Chunk{seg.substr(start, cut - start), false});
      start = cut;
    }
    chunks.push_back(Chunk{seg.substr(start), eot_after});
  };
  for_each_segment(text, allow_special, add_segment);

  std::vector<std::vector<TokenId>> parts(chunks.size());
  parallel_for(chunks.size(), nt, [&](size_t i) {
    // Encode into a local vector: pushing into parts[i] directly would write its end pointer, which shares a
    // cache line with the neighbouring chunks' vectors, on every token (false sharing across threads).
    std::vector<TokenId> ids;
    ids.reserve(chunks[i].text.size() / 4 + 8);
    impl_->encode_ordinary(chunks[i].text, ids);
    if (chunks[i].eot_after) ids.push_back(impl_->n);
    parts[i] = std::move(ids);
  });
  // Concatenate in parallel too: with many threads a serial copy of every id would be a visible serial tail.
  std::vector<size_t> offset(parts.size() + 1, 0);
  for (size_t i = 0; i < parts.size(); ++i) offset[i + 1] = offset[i] + parts[i].size();
  std::vector<TokenId> out(offset.back());
  parallel_for(parts.size(), nt, [&](size_t i) {
    std::copy(parts[i].begin(), parts[i].end(), out.begin() + static_cast<std::ptrdiff_t>(offset[i]));
    std::vector<TokenId>().swap(parts[i]);
  });
  return out;
}

std::vector<std::vector<TokenId>> Tokenizer::encode_batch(const std::vector<std::string_view>& docs,
                                                          bool allow_special, int threads) const {
  std::vector<std::vector<TokenId>> out(docs.size());
  parallel_for(docs.size(), threads, [&](size_t i) { out[i] = encode(docs[i], allow_special); });
  return out;
}

// ---- decoding
// -------------------------------------------------------------------------------------------------

const std::string& Tokenizer::token_bytes(TokenId id) const {
  STRATA_REQUIRE(id <= impl_->n, "token id ", id, " is outside the vocabulary (size ", vocab_size(), ")");
  return impl_->tokens[id];
}

std::string Tokenizer::decode(std::span<const TokenId> ids) const {
  size_t total = 0;
  for (const TokenId id : ids) {
    STRATA_REQUIRE(id <= impl_->n, "token id ", id, " is outside the vocabulary (size ", vocab_size(), ")");
    total += impl_->tokens[id].size();
  }
  std::string out;
  out.reserve(total);
  for (const TokenId id : ids) out += impl_->tokens[id];
  return out;
}

}  // namespace strata::data
