// tests/data/pretokenizer_test.cpp: data/pretokenizer.h: pieces checked by hand, invariants on random bytes,
// invalid UTF-8 handling, and the find_safe_cut property on the State of the Union corpus.
#include "data/pretokenizer.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <random>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "engine/fileio.h"

namespace strata::data {
namespace {

using Pieces = std::vector<std::string>;
constexpr uint64_t kSeed = 0x5EED'9E70'0002ULL;

Pieces pieces(std::string_view text) {
  static const PreTokenizer pre;
  Pieces out;
  pre.split(text, [&](std::string_view p) { out.emplace_back(p); });
  return out;
}

const Tokenizer& gpt2() {
  static const Tokenizer tok = Tokenizer::load(STRATA_SOURCE_DIR "/data/default/r50k_base.tiktoken.xz");
  return tok;
}

const std::string& sotu_text() {
  static const std::string text = [] {
    const std::string data = read_file(STRATA_SOURCE_DIR "/data/default/sotu.jsonl.xz");
    std::string out;
    size_t pos = 0;
    while (pos < data.size()) {
      size_t eol = data.find('\n', pos);
      if (eol == std::string::npos) eol = data.size();
      if (eol > pos) out += nlohmann::json::parse(data.substr(pos, eol - pos))["text"].get<std::string>() + "\n\n";
      pos = eol + 1;
    }
    return out;
  }();
  return text;
}

// Bytes that never start a valid UTF-8 character.
bool is_invalid_lead(unsigned char c) { return (c >= 0x80 && c <= 0xC1) || c >= 0xF5; }

TEST(PreTokenizer, PatternIsGpt2) {
  EXPECT_STREQ(PreTokenizer::pattern(), R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)");
}

TEST(PreTokenizer, HandCheckedPieces) {
  // Two spaces before a word: the last space joins the word, \s+(?!\S) takes the rest; likewise "\n\n x".
  EXPECT_EQ(pieces("Hello world's  123 !!\n\n x"),
            (Pieces{"Hello", " world", "'s", " ", " 123", " !!", "\n\n", " x"}));
  EXPECT_EQ(pieces("I'm   fine"), (Pieces{"I", "'m", "  ", " fine"}));
  EXPECT_EQ(pieces("don't we're they'll I'd I've"),
            (Pieces{"don", "'t", " we", "'re", " they", "'ll", " I", "'d", " I", "'ve"}));
  // Only lower-case contractions are special; "'T" is punctuation then a letter.
  EXPECT_EQ(pieces("DON'T"), (Pieces{"DON", "'", "T"}));
  EXPECT_EQ(pieces("it’s"), (Pieces{"it", "’", "s"}));
  EXPECT_EQ(pieces("12345 67"), (Pieces{"12345", " 67"}));  // no digit-group limit in GPT-2
  EXPECT_EQ(pieces("abc   "), (Pieces{"abc", "   "}));      // trailing whitespace is one piece
  EXPECT_EQ(pieces(" \t\n"), (Pieces{" \t\n"}));
  EXPECT_EQ(pieces("a\tb"), (Pieces{"a", "\t", "b"}));      // only ' ' joins the next word
  EXPECT_EQ(pieces("a\xc2\xa0" "b"), (Pieces{"a", "\xc2\xa0", "b"}));  // NBSP is whitespace, not ' '
  EXPECT_EQ(pieces("x2y"), (Pieces{"x", "2", "y"}));
  EXPECT_EQ(pieces("...hello"), (Pieces{"...", "hello"}));
  EXPECT_EQ(pieces(" ?!x"), (Pieces{" ?!", "x"}));
  EXPECT_EQ(pieces("na\xc3\xafve caf\xc3\xa9"), (Pieces{"na\xc3\xafve", " caf\xc3\xa9"}));
  EXPECT_EQ(pieces("\xe6\x97\xa5\xe6\x9c\xac 2024"), (Pieces{"\xe6\x97\xa5\xe6\x9c\xac", " 2024"}));  // 日本 2024
  EXPECT_EQ(pieces("\xf0\x9f\x99\x82\xf0\x9f\x99\x82 ok"), (Pieces{"\xf0\x9f\x99\x82\xf0\x9f\x99\x82", " ok"}));
  EXPECT_EQ(pieces("<|endoftext|>"), (Pieces{"<|", "endoftext", "|>"}));
  EXPECT_TRUE(pieces("").empty());
}

TEST(PreTokenizer, InvalidBytesFormOnePiecePerRun) {
  EXPECT_EQ(pieces("a\x80\x81" "b c"), (Pieces{"a", "\x80\x81", "b", " c"}));
  // A segment end behaves like a text end for (?!\S): the space before the invalid byte stands alone.
  EXPECT_EQ(pieces(" \xff "), (Pieces{" ", "\xff", " "}));
  EXPECT_EQ(pieces("  \xff"), (Pieces{"  ", "\xff"}));
  EXPECT_EQ(pieces("1\xfe\xfe" "2"), (Pieces{"1", "\xfe\xfe", "2"}));
  // Truncated sequences, overlongs and surrogates are invalid byte by byte and merge into one run.
  EXPECT_EQ(pieces("x\xe2\x82\xc0\xaf\xed\xa0\x80y"), (Pieces{"x", "\xe2\x82\xc0\xaf\xed\xa0\x80", "y"}));
  // A valid character right after invalid bytes starts a new segment.
  EXPECT_EQ(pieces("\x80\xc3\xa9t\xc3\xa9"), (Pieces{"\x80", "\xc3\xa9t\xc3\xa9"}));

  std::mt19937_64 rng(kSeed);
  for (int i = 0; i < 200; ++i) {
    std::string run(1 + rng() % 300, '\0');
    for (auto& c : run) {
      const uint64_t r = rng() % 77;  // 0x80..0xC1 (66 bytes) or 0xF5..0xFF (11 bytes)
      c = static_cast<char>(r < 66 ? 0x80 + r : 0xF5 + (r - 66));
    }
    EXPECT_EQ(pieces(run), (Pieces{run})) << "run " << i;
    EXPECT_EQ(pieces("ab " + run + " cd"), (Pieces{"ab", " ", run, " cd"})) << "run " << i;
  }
}

TEST(PreTokenizer, ValidUtf8Prefix) {
  EXPECT_EQ(valid_utf8_prefix(""), 0u);
  EXPECT_EQ(valid_utf8_prefix("hello"), 5u);
  EXPECT_EQ(valid_utf8_prefix("h\xc3\xa9llo"), 6u);
  EXPECT_EQ(valid_utf8_prefix("abcdefghij\x80"), 10u);
  EXPECT_EQ(valid_utf8_prefix("ab\xe2\x82"), 2u);                // truncated
  EXPECT_EQ(valid_utf8_prefix("\xc0\xaf"), 0u);                  // overlong
  EXPECT_EQ(valid_utf8_prefix("\xe0\x80\xaf"), 0u);              // overlong
  EXPECT_EQ(valid_utf8_prefix("\xed\x9f\xbf\xed\xa0\x80"), 3u);  // U+D7FF ok, then a surrogate
  EXPECT_EQ(valid_utf8_prefix("\xf4\x8f\xbf\xbf\xf4\x90\x80\x80"), 4u);  // U+10FFFF ok, then above it
  EXPECT_EQ(valid_utf8_prefix("\xf5"), 0u);
}

TEST(PreTokenizer, PiecesConcatenateToInputOnRandomBytes) {
  std::mt19937_64 rng(kSeed + 1);
  size_t total_pieces = 0;
  for (int i = 0; i < 1000; ++i) {
    std::string s(1 + rng() % 400, '\0');
    const bool ascii_heavy = i % 2;
    for (auto& c : s) {
      const uint64_t r = rng();
      c = static_cast<char>(ascii_heavy && r % 4 ? " a1!\n'\t."[r % 8] : static_cast<char>(r % 256));
    }
    std::string joined;
    for (const auto& p : pieces(s)) {
      ASSERT_FALSE(p.empty());
      // Each piece is wholly valid UTF-8 or wholly a run of bytes that do not start a character.
      const size_t valid = valid_utf8_prefix(p);
      if (valid != p.size()) {
        ASSERT_EQ(valid, 0u);
        for (char c : p) ASSERT_TRUE(is_invalid_lead(static_cast<unsigned char>(c)) ||
                                     valid_utf8_prefix(std::string_view(&c, 1)) == 0);
      }
      joined += p;
      ++total_pieces;
    }
    ASSERT_EQ(joined, s) << "random string " << i;
  }
  EXPECT_GT(total_pieces, 10000u);
}

// Cutting at find_safe_cut and handling both halves separately changes nothing: pieces and tokens.
TEST(PreTokenizer, SafeCutPropertyOnSotu) {
  const std::string& text = sotu_text();
  ASSERT_GT(text.size(), 10'000'000u);
  std::mt19937_64 rng(kSeed + 2);
  int checked = 0;
  for (int i = 0; i < 300; ++i) {
    const size_t start = rng() % (text.size() - 5000);
    const std::string_view window(text.data() + start, 1000 + rng() % 4000);
    const size_t cut = find_safe_cut(window, rng() % window.size());
    if (cut == window.size()) continue;
    ASSERT_GT(cut, 0u);
    ++checked;
    const std::string_view left = window.substr(0, cut), right = window.substr(cut);
    Pieces split = pieces(left);
    const Pieces rest = pieces(right);
    split.insert(split.end(), rest.begin(), rest.end());
    ASSERT_EQ(split, pieces(window)) << "window at " << start << ", cut " << cut;
    std::vector<TokenId> ids = gpt2().encode(left);
    const std::vector<TokenId> more = gpt2().encode(right);
    ids.insert(ids.end(), more.begin(), more.end());
    ASSERT_EQ(ids, gpt2().encode(window)) << "window at " << start << ", cut " << cut;
  }
  EXPECT_GT(checked, 250);
}

TEST(PreTokenizer, SafeCutOnRandomText) {
  std::mt19937_64 rng(kSeed + 3);
  for (int i = 0; i < 500; ++i) {
    std::string s(2 + rng() % 200, '\0');
    for (auto& c : s) c = "ab \n'1.\x80\xc3\xa9"[rng() % 11];
    const size_t from = rng() % s.size();
    const size_t cut = find_safe_cut(s, from);
    ASSERT_LE(cut, s.size());
    if (cut == s.size()) continue;
    ASSERT_GE(cut, std::max<size_t>(from, 1));
    Pieces split = pieces(s.substr(0, cut));
    const Pieces rest = pieces(s.substr(cut));
    split.insert(split.end(), rest.begin(), rest.end());
    ASSERT_EQ(split, pieces(s)) << "string " << i << " cut " << cut;
  }
  EXPECT_EQ(find_safe_cut("no-cut-here", 0), 2u);  // after the letter o, before '-'
  EXPECT_EQ(find_safe_cut("ab cd", 0), 2u);
  EXPECT_EQ(find_safe_cut("ab cd", 2), 2u);         // a cut exactly at `from`
  EXPECT_EQ(find_safe_cut("ab cd", 3), 5u);         // "cd" runs to the end: none
  EXPECT_EQ(find_safe_cut("12 34 !!", 0), 8u);      // no letters: none
  EXPECT_EQ(find_safe_cut("\xe4\xb8\xad\xe6\x96\x87\xe3\x80\x82", 0), 6u);  // 中文。 cut before 。
  EXPECT_EQ(find_safe_cut("ab\xff", 0), 3u);       // before an invalid byte: none
}

// The same property on text in scripts without ASCII spaces (CJK, Thai, Cyrillic), with digits, punctuation,
// whitespace, contractions and invalid bytes mixed in.
TEST(PreTokenizer, SafeCutOnNonLatinText) {
  static const std::vector<std::string> kAtoms = {"\xe4\xb8\xad", "\xe6\x96\x87", "\xe3\x80\x82", "\xef\xbc\x8c",
                                                  "\xe0\xb8\x81", "\xd0\xb4", " ", "\n", "7", "'s", "'", "a",
                                                  "\xf0\x9f\x99\x82", "\xff", "\xe4\xb8", "  "};
  std::mt19937_64 rng(kSeed + 4);
  int checked = 0;
  for (int i = 0; i < 1000; ++i) {
    std::string s;
    const size_t atoms = 1 + rng() % 120;
    for (size_t k = 0; k < atoms; ++k) s += kAtoms[rng() % kAtoms.size()];
    const size_t from = rng() % s.size();
    const size_t cut = find_safe_cut(s, from);
    ASSERT_LE(cut, s.size());
    if (cut == s.size()) continue;
    ASSERT_GE(cut, std::max<size_t>(from, 1));
    ++checked;
    Pieces split = pieces(s.substr(0, cut));
    const Pieces rest = pieces(s.substr(cut));
    split.insert(split.end(), rest.begin(), rest.end());
    ASSERT_EQ(split, pieces(s)) << "string " << i << " cut " << cut;
    std::vector<TokenId> ids = gpt2().encode(s.substr(0, cut));
    const std::vector<TokenId> more = gpt2().encode(s.substr(cut));
    ids.insert(ids.end(), more.begin(), more.end());
    ASSERT_EQ(ids, gpt2().encode(s)) << "string " << i << " cut " << cut;
  }
  EXPECT_GT(checked, 500);
}

// strata's \s is PCRE2's (Unicode 14 White_Space-like): this pins the code points where it differs from
// JavaScript's \s (and so from js-tiktoken), so a change to either is deliberate. See
// tests/data/golden/gen_tokenizer_golden.mjs.
TEST(PreTokenizer, WhitespaceClassIsPcre2s) {
  EXPECT_EQ(pieces("a\xc2\x85" "b"), (Pieces{"a", "\xc2\x85", "b"}));          // U+0085 NEL: whitespace here
  EXPECT_EQ(pieces("a\xe1\xa0\x8e" "b"), (Pieces{"a", "\xe1\xa0\x8e", "b"}));  // U+180E: whitespace here
  EXPECT_EQ(pieces("a \xef\xbb\xbf" "b"), (Pieces{"a", " \xef\xbb\xbf", "b"})); // U+FEFF: punctuation here
}

}  // namespace
}  // namespace strata::data
