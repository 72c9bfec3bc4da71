#include "data/shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <utility>
#include <vector>

#include "engine/check.h"
#include "engine/fileio.h"

namespace strata::data {
static_assert(sizeof(size_t) == 8, "shard sizes (up to 1024 + 4 * INT32_MAX bytes) need a 64-bit size_t");
namespace {

// Tokens are read through memcpy: in-memory bytes (the fuzzer's) need not be aligned, and it keeps the access
// free of aliasing questions. Compilers turn these into plain loads.
template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

uint32_t load_token(const uint8_t* tokens, TokenWidth w, size_t i) {
  return w == TokenWidth::kU16 ? load<uint16_t>(tokens + 2 * i) : load<uint32_t>(tokens + 4 * i);
}

// Index of the first token >= vocab_size, or count when there is none. Scans in blocks: a vectorisable max
// per block, and an element search only inside the block that fails.
template <typename T>
size_t first_token_outside(const uint8_t* tokens, size_t count, uint32_t vocab_size) {
  constexpr size_t kBlock = 4096;
  T buf[kBlock];
  for (size_t begin = 0; begin < count; begin += kBlock) {
    const size_t n = std::min(kBlock, count - begin);
    std::memcpy(buf, tokens + begin * sizeof(T), n * sizeof(T));
    T mx = 0;
    for (size_t i = 0; i < n; ++i) mx = std::max(mx, buf[i]);
    if (static_cast<uint32_t>(mx) < vocab_size) continue;
    for (size_t i = 0; i < n; ++i)
      if (static_cast<uint32_t>(buf[i]) >= vocab_size) return begin + i;
  }
  return count;
}

// The file name for messages: "shard 'x.bin': ".
std::string where(std::string_view name) {
  return cat("shard '", name, "': ");
}

}  // namespace

const char* token_width_name(TokenWidth w) {
  return w == TokenWidth::kU16 ? "uint16" : "uint32";
}

TokenWidth token_width_for_vocab(uint32_t vocab_size) {
  return vocab_size > 65536u ? TokenWidth::kU32 : TokenWidth::kU16;
}

void write_shard(const std::string& path, std::span<const uint32_t> tokens, uint32_t vocab_size) {
  STRATA_REQUIRE(vocab_size > 0, where(path), "cannot write with a vocabulary of size 0");
  STRATA_REQUIRE(tokens.size() <= static_cast<size_t>(INT32_MAX), where(path), "too many tokens (",
                 tokens.size(), "; a shard holds at most ", INT32_MAX, ")");
  const TokenWidth w = token_width_for_vocab(vocab_size);
  const bool u16 = w == TokenWidth::kU16;

  int32_t header[kShardHeaderInts] = {};
  header[0] = u16 ? kShardMagicU16 : kShardMagicU32;
  header[1] = u16 ? kShardVersionU16 : kShardVersionU32;
  header[2] = static_cast<int32_t>(tokens.size());

  AtomicFile f(path);  // removes its temporary unless committed, so a throw below leaves nothing behind
  f.write(header, sizeof(header));
  constexpr size_t kChunk = size_t{1} << 16;
  std::vector<uint8_t> buf(kChunk * token_bytes(w));
  for (size_t begin = 0; begin < tokens.size(); begin += kChunk) {
    const size_t n = std::min(kChunk, tokens.size() - begin);
    for (size_t i = 0; i < n; ++i) {
      const uint32_t t = tokens[begin + i];
      STRATA_REQUIRE(t < vocab_size, where(path), "token ", t, " at index ", begin + i,
                     " is outside the vocabulary (size ", vocab_size, ")");
      if (u16) {
        const auto v = static_cast<uint16_t>(t);
        std::memcpy(buf.data() + 2 * i, &v, 2);
      } else {
        std::memcpy(buf.data() + 4 * i, &t, 4);
      }
    }
    f.write(buf.data(), n * token_bytes(w));
  }
  f.commit();
}

ShardInfo validate_shard_bytes(std::string_view name, const uint8_t* data, size_t size, uint32_t vocab_size) {
  STRATA_REQUIRE(size >= kShardHeaderBytes, where(name), "truncated: the file has ", size,
                 " bytes, fewer than the ", kShardHeaderBytes, "-byte header");
  const int32_t magic = load<int32_t>(data);
  const int32_t version = load<int32_t>(data + 4);
  const int32_t count = load<int32_t>(data + 8);

  ShardInfo info;
  int32_t expected_version = 0;
  if (magic == kShardMagicU16) {
    info.width = TokenWidth::kU16;
    expected_version = kShardVersionU16;
  } else if (magic == kShardMagicU32) {
    info.width = TokenWidth::kU32;
    expected_version = kShardVersionU32;
  } else {
    STRATA_FAIL(where(name), "wrong magic ", magic, " (expected ", kShardMagicU16, " for uint16 or ",
                kShardMagicU32, " for uint32 tokens)");
  }
  STRATA_REQUIRE(version == expected_version, where(name), "wrong version ", version, " for magic ", magic,
                 " (expected ", expected_version, " for ", token_width_name(info.width), " tokens)");
  STRATA_REQUIRE(count >= 0, where(name), "negative token count ", count, " in the header");

  info.count = static_cast<size_t>(count);
  const size_t expected = kShardHeaderBytes + info.count * token_bytes(info.width);  // < 2^34: no overflow
  STRATA_REQUIRE(size >= expected, where(name), "truncated: header says ", info.count, " ",
                 token_width_name(info.width), " tokens (", expected, " bytes) but the file has ", size,
                 " bytes");
  STRATA_REQUIRE(size == expected, where(name), "size mismatch: header says ", info.count, " ",
                 token_width_name(info.width), " tokens (", expected, " bytes) but the file has ", size,
                 " bytes (", size - expected, " extra)");

  // A uint16 token is always < a vocabulary of 65536 or more: skip the scan.
  const bool scan = vocab_size > 0 && (info.width == TokenWidth::kU32 || vocab_size < 65536u);
  if (scan) {
    const uint8_t* tokens = data + kShardHeaderBytes;
    const size_t bad = info.width == TokenWidth::kU16
                           ? first_token_outside<uint16_t>(tokens, info.count, vocab_size)
                           : first_token_outside<uint32_t>(tokens, info.count, vocab_size);
    STRATA_REQUIRE(bad == info.count, where(name), "token ", load_token(tokens, info.width, bad),
                   " at index ", bad, " is outside the vocabulary (size ", vocab_size, ")");
  }
  return info;
}

Shard Shard::open(const std::string& path, uint32_t vocab_size) {
  Shard s;
  s.path_ = path;
  s.file_ = MappedFile(path, where(path));  // an empty file has no mapping: the validator reports truncation
  const ShardInfo info = validate_shard_bytes(path, s.file_.data(), s.file_.size(), vocab_size);
  s.tokens_ = s.file_.data() + kShardHeaderBytes;
  s.count_ = info.count;
  s.width_ = info.width;
  return s;
}

Shard Shard::view(std::string name, const uint8_t* data, size_t size, uint32_t vocab_size) {
  const ShardInfo info = validate_shard_bytes(name, data, size, vocab_size);
  Shard s;
  s.path_ = std::move(name);
  s.tokens_ = data + kShardHeaderBytes;
  s.count_ = info.count;
  s.width_ = info.width;
  return s;
}

Shard::Shard(Shard&& other) noexcept
    : path_(std::move(other.path_)),
      file_(std::move(other.file_)),
      tokens_(std::exchange(other.tokens_, nullptr)),
      count_(std::exchange(other.count_, 0)),
      width_(other.width_) {}

Shard& Shard::operator=(Shard&& other) noexcept {
  if (this != &other) {
    path_ = std::move(other.path_);
    file_ = std::move(other.file_);
    tokens_ = std::exchange(other.tokens_, nullptr);
    count_ = std::exchange(other.count_, 0);
    width_ = other.width_;
  }
  return *this;
}

Shard::~Shard() = default;

uint32_t Shard::operator[](size_t i) const {
  STRATA_CHECK(i < count_, "token index ", i, " outside shard '", path_, "' of ", count_, " tokens");
  return load_token(tokens_, width_, i);
}

void Shard::read(size_t begin, size_t count, int32_t* out) const {
  STRATA_CHECK(begin <= count_ && count <= count_ - begin, "read of tokens [", begin, ", ", begin, " + ",
               count, ") outside shard '", path_, "' of ", count_, " tokens");
  // An id above INT32_MAX has no int32 value; it wraps. Only a shard opened without a vocabulary (vocab_size
  // 0) can hold one, since vocabularies that large do not exist in practice.
  if (width_ == TokenWidth::kU16) {
    for (size_t i = 0; i < count; ++i)
      out[i] = static_cast<int32_t>(load<uint16_t>(tokens_ + 2 * (begin + i)));
  } else {
    for (size_t i = 0; i < count; ++i)
      out[i] = static_cast<int32_t>(load<uint32_t>(tokens_ + 4 * (begin + i)));
  }
}

}  // namespace strata::data
