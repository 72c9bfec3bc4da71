// data/pretokenizer.h: the GPT-2 pre-tokenizer (text -> pieces that BPE encodes independently).
//
// Pattern (GPT-2 / r50k_base, exactly):
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// compiled with PCRE2 (UTF + Unicode properties, JIT when available).
//
// Invalid UTF-8 (defined by RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF; a byte that does not
// start a complete valid character is invalid on its own and scanning resumes at the next byte): the text is cut
// into maximal valid segments and maximal runs of invalid bytes. Each valid segment is split by the pattern as if
// it were a whole text; each invalid run is one piece. Because the pattern has no look-behind and its only
// look-ahead, (?!\S), behaves at a segment end as at an invalid byte, this is the natural extension of GPT-2's
// pre-tokenizer to arbitrary bytes. The pieces always concatenate to the input.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string_view>

namespace strata::data {

// Length of the maximal prefix of `s` that is valid UTF-8.
size_t valid_utf8_prefix(std::string_view s);

class PreTokenizer {
 public:
  PreTokenizer();
  ~PreTokenizer();
  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;

  // Calls fn(piece) for every piece of `text`, in order. Thread-safe (per-thread match state).
  void split(std::string_view text, const std::function<void(std::string_view)>& fn) const;

  // The pattern text, for documentation and tests.
  static const char* pattern();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A position p in `text` (from <= p < size, p > 0) where cutting the text and splitting both halves separately
// gives the same pieces as splitting the whole text; text.size() if there is none. The cut goes after a letter
// (\p{L}) that is followed by a valid character that is not a letter. Why that is safe: the piece holding the
// letter is a letter run (` ?\p{L}+`) or a contraction ('s ...), and either ends exactly at p in the whole text
// and in the left half alike; the only look-ahead, (?!\S), follows a whitespace run, which cannot end at a
// letter; and matching restarts at p with no look-behind, so the right half sees what the whole text sees.
// Used to encode large inputs in parallel; works for any script with letters (Latin, CJK, ...).
size_t find_safe_cut(std::string_view text, size_t from);

}  // namespace strata::data
