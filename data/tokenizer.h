// data/tokenizer.h: the GPT-2 byte-level BPE tokenizer (tiktoken rank files, e.g. r50k_base).
//
// Vocabulary: n token byte strings with ranks 0..n-1 (every single byte among them) plus the special token
// "<|endoftext|>" = n, so vocab_size() = n + 1 (50257 for GPT-2).
//
// Encoding (the tiktoken rule): the text is cut into pieces by the GPT-2 pre-tokenizer (data/pretokenizer.h,
// which also defines how invalid UTF-8 is handled). For each piece: if the whole piece is a token, emit it;
// otherwise start from its single bytes and repeatedly merge the adjacent pair whose concatenation has the lowest
// rank (the leftmost such pair on ties) until no adjacent concatenation is a token. With allow_special, each
// literal "<|endoftext|>" becomes eot() and the text between them is encoded as separate texts; without it,
// "<|endoftext|>" is ordinary text.
//
// Decoding concatenates token bytes, so decode(encode(x)) == x for every byte string x, valid UTF-8 or not.
//
// All member functions are const and thread-safe after construction.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace strata::data {

using TokenId = uint32_t;
inline constexpr std::string_view kEndOfText = "<|endoftext|>";

class Tokenizer {
 public:
  // Reads a tiktoken rank file ("base64(token bytes) rank" per line; ".xz" decompressed). Validates: base64,
  // ranks exactly 0..n-1 each once, no duplicate token bytes, all 256 single bytes present. A problem is a
  // strata::Error naming the file, the line and what is wrong.
  static Tokenizer load(const std::string& path);
  // Token byte strings in rank order; the same validation as load().
  static Tokenizer from_tokens(std::vector<std::string> tokens);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Writes the tiktoken rank file ("base64 rank\n" per line, the special token not written) atomically.
  void save(const std::string& path) const;

  uint32_t vocab_size() const;  // n + 1
  TokenId eot() const;          // n

  std::vector<TokenId> encode(std::string_view text, bool allow_special = false) const;
  void encode_append(std::string_view text, bool allow_special, std::vector<TokenId>& out) const;
  // Same result as encode(); large texts are cut at safe points and the chunks encoded on `threads` threads
  // (0 = all cores).
  std::vector<TokenId> encode_parallel(std::string_view text, bool allow_special, int threads) const;
  // One encode() per document, documents spread over `threads` threads (0 = all cores).
  std::vector<std::vector<TokenId>> encode_batch(const std::vector<std::string_view>& docs, bool allow_special,
                                                 int threads) const;

  // Concatenated token bytes. strata::Error if an id is outside the vocabulary.
  std::string decode(std::span<const TokenId> ids) const;
  // The bytes of one token (kEndOfText for eot()). strata::Error if the id is outside the vocabulary.
  const std::string& token_bytes(TokenId id) const;

 private:
  struct Impl;
  Tokenizer();
  std::unique_ptr<Impl> impl_;
};

}  // namespace strata::data
