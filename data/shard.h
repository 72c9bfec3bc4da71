// data/shard.h: the token-shard file format (llm.c's, so shards are interchangeable with llm.c) and its
// reader.
//
// Layout of a shard file (all integers little-endian):
//
//   | bytes              | content                                                              |
//   |--------------------|----------------------------------------------------------------------|
//   | [0, 4)             | int32 magic: 20240520 (uint16 tokens) or 20240801 (uint32 tokens)    |
//   | [4, 8)             | int32 version: 1 for magic 20240520, 7 for magic 20240801            |
//   | [8, 12)            | int32 token count N, 0 <= N <= INT32_MAX                             |
//   | [12, 1024)         | 253 x int32, zero (written as zero; not checked on read, like llm.c) |
//   | [1024, 1024 + N*w) | N tokens, w = 2 (uint16) or 4 (uint32) bytes each                    |
//
// The file size is exactly 1024 + N * w: a shorter file is truncated, a longer one is corrupt; both are
// errors. The writer picks uint32 only when the vocabulary needs ids above 65535 (vocab_size > 65536), else
// uint16.
//
// Every validation failure is a strata::Error whose message is one line naming the file and the problem, e.g.
//   shard 'x.bin': wrong magic 12345 (expected 20240520 for uint16 or 20240801 for uint32 tokens)
// Reading is through a read-only mmap; the same validation code (validate_shard_bytes) runs for files and for
// in-memory bytes (Shard::view, used by the fuzzer).
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "engine/fileio.h"

namespace strata::data {

static_assert(std::endian::native == std::endian::little,
              "the shard reader and writer assume a little-endian host");

enum class TokenWidth : uint8_t { kU16, kU32 };

inline constexpr int32_t kShardMagicU16 = 20240520;
inline constexpr int32_t kShardVersionU16 = 1;
inline constexpr int32_t kShardMagicU32 = 20240801;
inline constexpr int32_t kShardVersionU32 = 7;
inline constexpr size_t kShardHeaderInts = 256;
inline constexpr size_t kShardHeaderBytes = kShardHeaderInts * sizeof(int32_t);
static_assert(kShardHeaderBytes == 1024);

// Bytes per token: 2 or 4.
constexpr size_t token_bytes(TokenWidth w) {
  return w == TokenWidth::kU16 ? 2 : 4;
}
// "uint16" or "uint32".
const char* token_width_name(TokenWidth w);
// uint32 when some id of the vocabulary exceeds 65535 (vocab_size > 65536), else uint16.
TokenWidth token_width_for_vocab(uint32_t vocab_size);

// Writes `tokens` as a shard at `path`, atomically (AtomicFile: nothing is left under `path`, nor a
// temporary, on failure). Errors: vocab_size 0, a token >= vocab_size (names index and value), more than
// INT32_MAX tokens.
void write_shard(const std::string& path, std::span<const uint32_t> tokens, uint32_t vocab_size);

// What a valid shard's header says.
struct ShardInfo {
  TokenWidth width = TokenWidth::kU16;
  size_t count = 0;  // tokens
};

// The one validation routine (open() and view() call it): header, exact size, and, when vocab_size > 0, every
// token < vocab_size (the first bad index and value are reported). `name` is the file name used in messages.
ShardInfo validate_shard_bytes(std::string_view name, const uint8_t* data, size_t size, uint32_t vocab_size);

// A validated, read-only shard. Movable, not copyable.
class Shard {
 public:
  // Maps and validates the file (see validate_shard_bytes).
  static Shard open(const std::string& path, uint32_t vocab_size = 0);
  // Validates and wraps bytes the caller keeps alive for the Shard's lifetime (no copy); `name` is for
  // messages.
  static Shard view(std::string name, const uint8_t* data, size_t size, uint32_t vocab_size = 0);

  Shard(Shard&& other) noexcept;
  Shard& operator=(Shard&& other) noexcept;
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;
  ~Shard();

  size_t size() const { return count_; }  // tokens
  TokenWidth width() const { return width_; }
  // Token i; i < size() is checked (an internal invariant: aborts).
  uint32_t operator[](size_t i) const;
  // Copies tokens [begin, begin + count) into out, widened to int32; the range is checked (aborts when
  // outside).
  void read(size_t begin, size_t count, int32_t* out) const;
  const std::string& path() const { return path_; }

 private:
  Shard() = default;

  std::string path_;
  MappedFile file_;  // the mapping of the whole file; empty for a view
  const uint8_t* tokens_ = nullptr;
  size_t count_ = 0;
  TokenWidth width_ = TokenWidth::kU16;
};

}  // namespace strata::data
