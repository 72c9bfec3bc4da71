#define PCRE2_CODE_UNIT_WIDTH 8
#include "data/pretokenizer.h"

#include <pcre2.h>

#include <string>

#include "engine/check.h"

namespace strata::data {
namespace {

constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Length of the valid UTF-8 character starting at s[0], or 0 if the bytes there do not form one (RFC 3629).
inline size_t utf8_char_len(const unsigned char* s, size_t n) {
  const unsigned c = s[0];
  if (c < 0x80) return 1;
  if (c < 0xC2) return 0;  // continuation byte, or overlong 2-byte lead
  if (c < 0xE0) return (n >= 2 && (s[1] & 0xC0) == 0x80) ? 2 : 0;
  if (c < 0xF0) {
    if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
    if (c == 0xE0 && s[1] < 0xA0) return 0;   // overlong
    if (c == 0xED && s[1] >= 0xA0) return 0;  // UTF-16 surrogate
    return 3;
  }
  if (c < 0xF5) {
    if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80) return 0;
    if (c == 0xF0 && s[1] < 0x90) return 0;   // overlong
    if (c == 0xF4 && s[1] >= 0x90) return 0;  // above U+10FFFF
    return 4;
  }
  return 0;
}

}  // namespace

size_t valid_utf8_prefix(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    // Fast path: 8 ASCII bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      __builtin_memcpy(&w, p + i, 8);
      if (w & 0x8080808080808080ULL) break;
      i += 8;
    }
    if (i >= n) break;
    const size_t len = utf8_char_len(p + i, n - i);
    if (len == 0) return i;
    i += len;
  }
  return n;
}

namespace {

// A letter followed by a valid character that is not a letter; the cut goes between them. Compiled with
// MATCH_INVALID_UTF so it can search raw text: invalid bytes match nothing (no cut next to them).
struct CutPattern {
  pcre2_code* code = nullptr;
  CutPattern() {
    int err = 0;
    PCRE2_SIZE off = 0;
    code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(R"(\p{L}(?=[^\p{L}]))"), PCRE2_ZERO_TERMINATED,
                         PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &off, nullptr);
    STRATA_CHECK(code, "cannot compile the cut pattern (PCRE2 error ", err, ")");
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT is unavailable
  }
  ~CutPattern() { pcre2_code_free(code); }
};

}  // namespace

size_t find_safe_cut(std::string_view text, size_t from) {
  static const CutPattern pattern;
  if (from == 0) from = 1;
  if (from >= text.size()) return text.size();
  thread_local pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
  // The letter may start one byte before `from` so that a cut exactly at `from` is found.
  const int rc = pcre2_match(pattern.code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), from - 1,
                             0, md, nullptr);
  if (rc <= 0) return text.size();
  return pcre2_get_ovector_pointer(md)[1];
}

struct PreTokenizer::Impl {
  pcre2_code* code = nullptr;
  bool jit = false;
};

namespace {

// Per-thread match data and JIT stack: PCRE2 code is shareable across threads, match state is not.
struct ThreadMatchState {
  pcre2_match_data* md = nullptr;
  pcre2_match_context* mctx = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;
  ThreadMatchState() {
    md = pcre2_match_data_create(1, nullptr);
    mctx = pcre2_match_context_create(nullptr);
    // Long whitespace runs make \s+(?!\S) backtrack deeply; give the JIT a stack that grows to 16 MiB.
    jit_stack = pcre2_jit_stack_create(32 * 1024, 16 * 1024 * 1024, nullptr);
    STRATA_CHECK(md && mctx && jit_stack, "PCRE2 allocation failed");
    pcre2_jit_stack_assign(mctx, nullptr, jit_stack);
  }
  ~ThreadMatchState() {
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_context_free(mctx);
    pcre2_match_data_free(md);
  }
};

ThreadMatchState& thread_state() {
  thread_local ThreadMatchState st;
  return st;
}

}  // namespace

PreTokenizer::PreTokenizer() : impl_(std::make_unique<Impl>()) {
  int err = 0;
  PCRE2_SIZE err_off = 0;
  impl_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kGpt2Pattern), PCRE2_ZERO_TERMINATED,
                              PCRE2_UTF | PCRE2_UCP, &err, &err_off, nullptr);
  if (!impl_->code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof(msg));
    STRATA_CHECK(false, "cannot compile the GPT-2 pattern: ", reinterpret_cast<char*>(msg));
  }
  impl_->jit = pcre2_jit_compile(impl_->code, PCRE2_JIT_COMPLETE) == 0;
}

PreTokenizer::~PreTokenizer() {
  if (impl_ && impl_->code) pcre2_code_free(impl_->code);
}
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;

const char* PreTokenizer::pattern() {
  return kGpt2Pattern;
}

void PreTokenizer::split(std::string_view text, const std::function<void(std::string_view)>& fn) const {
  ThreadMatchState& st = thread_state();
  const auto* base = reinterpret_cast<const unsigned char*>(text.data());
  size_t pos = 0;
  while (pos < text.size()) {
    // Maximal valid segment [pos, seg_end).
    const size_t seg_end = pos + valid_utf8_prefix(text.substr(pos));
    const auto subject = reinterpret_cast<PCRE2_SPTR>(base + pos);
    const size_t seg_len = seg_end - pos;
    size_t off = 0;
    while (off < seg_len) {
      // The segment is validated above, so PCRE2's own UTF check is skipped. Matching stops at seg_len, which
      // makes the segment end behave as the end of a text for (?!\S).
      int rc = impl_->jit
                   ? pcre2_jit_match(impl_->code, subject, seg_len, off, PCRE2_NO_UTF_CHECK, st.md, st.mctx)
                   : PCRE2_ERROR_JIT_BADOPTION;
      if (rc == PCRE2_ERROR_JIT_STACKLIMIT || rc == PCRE2_ERROR_JIT_BADOPTION)
        rc = pcre2_match(impl_->code, subject, seg_len, off, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, st.md,
                         nullptr);
      STRATA_CHECK(rc > 0, "GPT-2 pattern failed to match valid UTF-8 (PCRE2 code ", rc, ")");
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.md);
      // The pattern matches every valid character (\s+ or [^\s\p{L}\p{N}]+ or a letter/number class), so
      // matches are contiguous and never empty.
      STRATA_CHECK(ov[0] == off && ov[1] > off, "GPT-2 pattern left a gap at byte ", pos + off);
      fn(text.substr(pos + off, ov[1] - off));
      off = ov[1];
    }
    pos = seg_end;
    if (pos == text.size()) break;
    // Maximal run of invalid bytes: bytes that do not start a valid character.
    size_t bad_end = pos;
    while (bad_end < text.size() && utf8_char_len(base + bad_end, text.size() - bad_end) == 0) ++bad_end;
    fn(text.substr(pos, bad_end - pos));
    pos = bad_end;
  }
}

}  // namespace strata::data
