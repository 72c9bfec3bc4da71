// tests/data/tokenizer_test.cpp: data/tokenizer.h against js-tiktoken golden ids, a naive in-test BPE, and its own
// invariants (round trip, parallel == serial, save/load, validation errors).
#include "data/tokenizer.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "data/pretokenizer.h"
#include "engine/check.h"
#include "engine/fileio.h"

namespace strata::data {
namespace {

namespace fs = std::filesystem;
using Ids = std::vector<TokenId>;

const std::string kR50k = STRATA_SOURCE_DIR "/data/default/r50k_base.tiktoken.xz";
const std::string kSotu = STRATA_SOURCE_DIR "/data/default/sotu.jsonl.xz";
const std::string kGolden = STRATA_TEST_DATA_DIR "/golden";
constexpr uint64_t kSeed = 0x5EED'70C0'0001ULL;

const Tokenizer& gpt2() {
  static const Tokenizer tok = Tokenizer::load(kR50k);
  return tok;
}

std::vector<std::string> sotu_documents() {
  static const std::vector<std::string> docs = [] {
    std::vector<std::string> out;
    const std::string data = read_file(kSotu);
    size_t pos = 0;
    while (pos < data.size()) {
      size_t eol = data.find('\n', pos);
      if (eol == std::string::npos) eol = data.size();
      if (eol > pos) out.push_back(nlohmann::json::parse(data.substr(pos, eol - pos))["text"].get<std::string>());
      pos = eol + 1;
    }
    return out;
  }();
  return docs;
}

std::string sotu_text(std::string_view separator) {
  std::string text;
  for (const auto& d : sotu_documents()) {
    if (!text.empty()) text += separator;
    text += d;
  }
  return text;
}

std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

std::string ids_str(const Ids& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(ids[i]);
  }
  s += ']';
  return s;
}

// Random text from fragments that exercise every pre-token class, with occasional invalid bytes.
std::string random_text(std::mt19937_64& rng, size_t bytes, bool with_special) {
  static const std::vector<std::string> frags = {
      "the", "State", "of", "Union", " ", " ", " ", "  ", "\n", "\n\n", "\t", "'s", "'ll", "n't", "1776", "3.14",
      "!", "?!", ",", ".", "—", "é", "naïve", "Ελλάδα", "日本語", "한국", "🙂", "👍🏽", "\xc2\xa0", "\xe3\x80\x80",
      "\x80", "\xff\xfe", "\xc3", "\xed\xa0\x80", "<|endoftext|>", "<|", "aaaaaaaaaaaaaaaaaaaa", "0000000000"};
  std::string s;
  while (s.size() < bytes) {
    const std::string& f = frags[rng() % frags.size()];
    if (!with_special && f == kEndOfText) continue;
    s += f;
  }
  return s;
}

// The tiktoken rule written the slow, obvious way over token byte strings.
Ids naive_encode(const std::unordered_map<std::string, TokenId>& ranks, std::string_view text) {
  Ids out;
  PreTokenizer().split(text, [&](std::string_view piece) {
    if (auto it = ranks.find(std::string(piece)); it != ranks.end()) {
      out.push_back(it->second);
      return;
    }
    std::vector<std::string> parts;
    for (char c : piece) parts.emplace_back(1, c);
    for (;;) {
      size_t best = parts.size();
      TokenId best_rank = UINT32_MAX;
      for (size_t i = 0; i + 1 < parts.size(); ++i) {
        auto it = ranks.find(parts[i] + parts[i + 1]);
        if (it != ranks.end() && it->second < best_rank) {
          best_rank = it->second;
          best = i;
        }
      }
      if (best == parts.size()) break;
      parts[best] += parts[best + 1];
      parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(best) + 1);
    }
    for (const auto& p : parts) out.push_back(ranks.at(p));
  });
  return out;
}

class TempDir {
 public:
  TempDir() : path_(fs::temp_directory_path() / ("strata_tokenizer_test_" + std::to_string(::getpid()))) {
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

// ---- known vectors ---------------------------------------------------------------------------------------------

TEST(Tokenizer, KnownVectors) {
  const Tokenizer& tok = gpt2();
  EXPECT_EQ(tok.vocab_size(), 50257u);
  EXPECT_EQ(tok.eot(), 50256u);
  EXPECT_EQ(tok.encode("Hello world"), (Ids{15496, 995}));
  EXPECT_EQ(tok.encode(" Hello world\n\n"), (Ids{18435, 995, 628}));
  EXPECT_EQ(tok.encode("<|endoftext|>The end", true), (Ids{50256, 464, 886}));
  EXPECT_EQ(tok.token_bytes(50256), kEndOfText);
  EXPECT_EQ(tok.token_bytes(995), " world");
}

TEST(Tokenizer, SpecialTokenIsTextUnlessAllowed) {
  const Tokenizer& tok = gpt2();
  const std::string text = "a<|endoftext|>b <|endoftext|>";
  const Ids plain = tok.encode(text, false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), tok.eot()), 0);
  EXPECT_EQ(tok.decode(plain), text);
  const Ids special = tok.encode(text, true);
  EXPECT_EQ(std::count(special.begin(), special.end(), tok.eot()), 2);
  EXPECT_EQ(tok.decode(special), text);
  // Text around an allowed special token is encoded as separate texts.
  Ids expect = tok.encode("a");
  expect.push_back(tok.eot());
  const Ids b = tok.encode("b ");
  expect.insert(expect.end(), b.begin(), b.end());
  expect.push_back(tok.eot());
  EXPECT_EQ(special, expect);
}

// ---- golden ids from js-tiktoken --------------------------------------------------------------------------------

TEST(Tokenizer, MatchesJsTiktokenGolden) {
  const auto cases = nlohmann::json::parse(read_file(kGolden + "/tokenizer_cases.json"))["cases"];
  const auto expected = nlohmann::json::parse(read_file(kGolden + "/tokenizer_expected.json"))["expected"];
  ASSERT_GE(cases.size(), 300u);
  ASSERT_EQ(cases.size(), expected.size());
  const Tokenizer& tok = gpt2();
  size_t total_ids = 0, mismatches = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string name = cases[i]["name"];
    ASSERT_EQ(name, expected[i]["name"].get<std::string>()) << "cases and expected are out of step at " << i;
    const std::string text = from_hex(cases[i]["hex"]);
    const Ids want = expected[i]["ids"].get<Ids>();
    total_ids += want.size();
    const Ids got = tok.encode(text, true);
    if (got != want) {
      ++mismatches;
      ADD_FAILURE() << "case '" << name << "' (hex " << cases[i]["hex"].get<std::string>() << ")\n  js-tiktoken "
                    << ids_str(want) << "\n  strata      " << ids_str(got);
    }
    EXPECT_EQ(tok.decode(got), text) << "round trip of case '" << name << "'";
  }
  EXPECT_EQ(mismatches, 0u);
  EXPECT_GT(total_ids, 10000u);  // the golden file is not vacuous
}

// ---- merge rule on a tiny vocabulary, checked by hand -----------------------------------------------------------

std::vector<std::string> byte_tokens() {
  std::vector<std::string> t;
  for (int b = 0; b < 256; ++b) t.emplace_back(1, static_cast<char>(b));
  return t;
}

TEST(Tokenizer, MergeRuleOnTinyVocabulary) {
  auto tokens = byte_tokens();
  tokens.push_back("aa");   // 256
  tokens.push_back("bc");   // 257
  tokens.push_back("ab");   // 258
  tokens.push_back("abc");  // 259
  tokens.push_back("aaa");  // 260
  const Tokenizer tok = Tokenizer::from_tokens(tokens);
  EXPECT_EQ(tok.vocab_size(), 262u);
  EXPECT_EQ(tok.eot(), 261u);
  EXPECT_EQ(tok.encode("abc"), (Ids{259}));                 // whole piece is a token
  EXPECT_EQ(tok.encode("abcd"), (Ids{259, 'd'}));           // bc (257) beats ab (258), then a+bc = abc
  EXPECT_EQ(tok.encode("aa"), (Ids{256}));
  EXPECT_EQ(tok.encode("aaaa"), (Ids{256, 256}));           // leftmost aa first, then the remaining aa
  EXPECT_EQ(tok.encode("aaaaa"), (Ids{256, 260}));          // aa,a,a,a -> aa,aa,a -> aa,aaa
  EXPECT_EQ(tok.encode("baaa"), (Ids{'b', 260}));           // b,aa,a -> b,aaa
  EXPECT_EQ(tok.encode("x abc"), (Ids{'x', ' ', 259}));     // " abc" is not a token: byte merges, then abc
  EXPECT_EQ(tok.decode(Ids{261}), kEndOfText);
}

// ---- round trips ------------------------------------------------------------------------------------------------

TEST(Tokenizer, RoundTripsRandomBytes) {
  const Tokenizer& tok = gpt2();
  std::mt19937_64 rng(kSeed);
  for (int i = 0; i < 1200; ++i) {
    const size_t len = i < 1000 ? rng() % 64 : rng() % 4000;
    std::string s(len, '\0');
    const int mode = i % 3;  // 0: any byte; 1: high bytes; 2: ASCII-heavy with some high bytes
    for (auto& c : s) {
      const uint64_t r = rng();
      c = static_cast<char>(mode == 0 ? r % 256 : mode == 1 ? 0x80 + r % 128 : (r % 8 ? 0x20 + r % 95 : r % 256));
    }
    for (bool special : {false, true}) {
      const Ids ids = tok.encode(s, special);
      ASSERT_EQ(tok.decode(ids), s) << "random string " << i;
    }
  }
}

TEST(Tokenizer, MatchesNaiveBpeOnRandomText) {
  const Tokenizer& tok = gpt2();
  std::unordered_map<std::string, TokenId> ranks;
  for (TokenId id = 0; id < tok.eot(); ++id) ranks.emplace(tok.token_bytes(id), id);
  std::mt19937_64 rng(kSeed + 1);
  for (int i = 0; i < 300; ++i) {
    std::string s = random_text(rng, 1 + rng() % 300, false);
    // Long single pieces too (digits, letters, invalid bytes, spaces), which take the long-piece path.
    if (i % 10 == 0) s += std::string(130 + rng() % 200, "7a\x80 "[rng() % 4]);
    if (i % 10 == 5) {
      std::string run;
      while (run.size() < 300) run += static_cast<char>(0x80 + rng() % 64);
      s += run;
    }
    ASSERT_EQ(tok.encode(s), naive_encode(ranks, s)) << "random text " << i;
  }
}

// ---- parallel and batch -----------------------------------------------------------------------------------------

TEST(Tokenizer, ParallelMatchesSerialOnSotu) {
  const Tokenizer& tok = gpt2();
  const std::string text = sotu_text("\n\n<|endoftext|>");
  for (bool special : {false, true}) {
    const Ids serial = tok.encode(text, special);
    ASSERT_GT(serial.size(), 2'000'000u);
    for (int threads : {1, 2, 3, 7}) EXPECT_EQ(tok.encode_parallel(text, special, threads), serial)
        << "threads " << threads << " allow_special " << special;
  }
}

TEST(Tokenizer, ParallelMatchesSerialOnRandomText) {
  const Tokenizer& tok = gpt2();
  std::mt19937_64 rng(kSeed + 2);
  for (size_t bytes : {size_t{1000}, size_t{700'000}, size_t{3'000'000}}) {
    const std::string text = random_text(rng, bytes, true);
    for (bool special : {false, true}) {
      const Ids serial = tok.encode(text, special);
      for (int threads : {1, 2, 3, 7})
        EXPECT_EQ(tok.encode_parallel(text, special, threads), serial) << bytes << " bytes, threads " << threads;
    }
  }
  // Chinese with no spaces: the cuts fall after letters before punctuation (find_safe_cut), not at spaces.
  static const std::vector<std::string> kCjk = {"中", "文", "国", "家", "语", "言", "。", "，", "、", "1", "\n"};
  std::string cjk;
  while (cjk.size() < 2'000'000) cjk += kCjk[rng() % kCjk.size()];
  const Ids serial = tok.encode(cjk);
  for (int threads : {2, 3, 7}) EXPECT_EQ(tok.encode_parallel(cjk, false, threads), serial) << "CJK, threads " << threads;
  EXPECT_TRUE(tok.encode_parallel("", true, 4).empty());
}

TEST(Tokenizer, BatchMatchesPerDocument) {
  const Tokenizer& tok = gpt2();
  const auto& docs = sotu_documents();
  std::vector<std::string_view> views(docs.begin(), docs.end());
  views.push_back("");
  views.push_back("<|endoftext|>x");
  for (bool special : {false, true}) {
    const auto batch = tok.encode_batch(views, special, 3);
    ASSERT_EQ(batch.size(), views.size());
    for (size_t i = 0; i < views.size(); ++i) EXPECT_EQ(batch[i], tok.encode(views[i], special)) << "doc " << i;
  }
}

// Pieces that need merges are cached per thread; the cache must tell vocabularies apart.
TEST(Tokenizer, TwoTokenizersInOneThreadDoNotMix) {
  auto tokens = byte_tokens();
  tokens.push_back("th");
  const Tokenizer tiny = Tokenizer::from_tokens(tokens);
  const Tokenizer& big = gpt2();
  const std::string text = "thxthx zthzth qthq";
  ASSERT_GT(big.encode(" zthzth").size(), 1u);  // merged (cached) by both tokenizers, not a whole token
  const Ids a = big.encode(text), b = tiny.encode(text);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(big.encode(text), a);
    EXPECT_EQ(tiny.encode(text), b);
  }
  EXPECT_NE(a, b);
}

// ---- save / load ------------------------------------------------------------------------------------------------

TEST(Tokenizer, SaveWritesTheTiktokenFormat) {
  TempDir dir;
  gpt2().save(dir.file("r50k.tiktoken"));
  EXPECT_EQ(read_file(dir.file("r50k.tiktoken")), read_file(kR50k));  // byte-identical to the committed file
}

TEST(Tokenizer, SaveLoadRoundTrip) {
  TempDir dir;
  std::mt19937_64 rng(kSeed + 3);
  const std::string text = random_text(rng, 20000, true);
  for (const char* name : {"t.tiktoken", "t.tiktoken.xz"}) {
    gpt2().save(dir.file(name));
    const Tokenizer back = Tokenizer::load(dir.file(name));
    ASSERT_EQ(back.vocab_size(), gpt2().vocab_size());
    for (TokenId id = 0; id < back.vocab_size(); ++id) ASSERT_EQ(back.token_bytes(id), gpt2().token_bytes(id));
    EXPECT_EQ(back.encode(text, true), gpt2().encode(text, true));
  }
  // A small vocabulary survives too.
  auto tokens = byte_tokens();
  tokens.push_back("ab");
  Tokenizer::from_tokens(tokens).save(dir.file("tiny.tiktoken"));
  EXPECT_EQ(Tokenizer::load(dir.file("tiny.tiktoken")).encode("abab"), (Ids{256, 256}));
}

// Writes a rank file of the 256 single bytes plus `extra` lines, loads it, and returns the error message.
std::string load_error(const TempDir& dir, const std::string& name, const std::string& content) {
  const std::string path = dir.file(name);
  write_file_atomic(path, content);
  try {
    Tokenizer::load(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

std::string byte_lines(int skip = -1) {
  std::string s;
  static const char* b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  int rank = 0;
  for (int b = 0; b < 256; ++b) {
    if (b == skip) continue;
    s += std::string{b64[b >> 2], b64[(b & 3) << 4], '=', '='} + " " + std::to_string(rank++) + "\n";
  }
  return s;
}

TEST(Tokenizer, LoadRejectsMalformedFiles) {
  TempDir dir;
  // The well-formed base loads (ranks 0..255, then "ab" = YWI= as 256).
  write_file_atomic(dir.file("good.tiktoken"), byte_lines() + "YWI= 256\n");
  EXPECT_EQ(Tokenizer::load(dir.file("good.tiktoken")).encode("ab"), (Ids{256}));

  struct Bad {
    const char* name;
    std::string content;
    const char* expect;
  };
  const std::vector<Bad> bad = {
      {"bad_base64.tiktoken", byte_lines() + "Y!I= 256\n", "bad_base64.tiktoken:257: 'Y!I=' is not valid base64"},
      {"bad_padding.tiktoken", byte_lines() + "YWI 256\n", "bad_padding.tiktoken:257: 'YWI' is not valid base64"},
      {"missing_rank.tiktoken", byte_lines() + "YWI=\n", "missing_rank.tiktoken:257: expected 'base64 rank'"},
      {"bad_rank.tiktoken", byte_lines() + "YWI= x1\n", "bad_rank.tiktoken:257: rank 'x1' is not"},
      {"negative_rank.tiktoken", byte_lines() + "YWI= -1\n", "negative_rank.tiktoken:257: rank '-1' is not"},
      {"duplicate_rank.tiktoken", byte_lines() + "YWI= 255\n", "duplicate_rank.tiktoken:257: rank 255 is given twice"},
      {"gap.tiktoken", byte_lines() + "YWI= 257\n", "gap.tiktoken:257: rank 257 is out of range"},
      {"duplicate_bytes.tiktoken", byte_lines() + "YQ== 256\n", "duplicate_bytes.tiktoken:257: token bytes of rank 256"},
      {"missing_byte.tiktoken", byte_lines(10) + "YWI= 255\n", "missing_byte.tiktoken: the single byte 0x0a"},
      {"empty.tiktoken", "", "empty.tiktoken: no tokens"},
      {"blank_line.tiktoken", byte_lines() + "\nYWI= 256\n", "blank_line.tiktoken:257: expected 'base64 rank'"},
  };
  for (const auto& b : bad) {
    const std::string msg = load_error(dir, b.name, b.content);
    EXPECT_NE(msg.find(b.expect), std::string::npos) << "file " << b.name << ": got '" << msg << "'";
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
  }
  // A file that does not exist names itself.
  try {
    Tokenizer::load(dir.file("absent.tiktoken"));
    ADD_FAILURE() << "no error for a missing file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("absent.tiktoken"), std::string::npos) << e.what();
  }
}

TEST(Tokenizer, FromTokensValidates) {
  auto missing = byte_tokens();
  missing.erase(missing.begin() + 65);
  EXPECT_THROW(Tokenizer::from_tokens(missing), Error);
  auto dup = byte_tokens();
  dup.push_back("a");
  EXPECT_THROW(Tokenizer::from_tokens(dup), Error);
  auto empty = byte_tokens();
  empty.push_back("");
  EXPECT_THROW(Tokenizer::from_tokens(empty), Error);
  EXPECT_THROW(Tokenizer::from_tokens({}), Error);
}

// ---- decode -----------------------------------------------------------------------------------------------------

TEST(Tokenizer, DecodeRejectsOutOfRangeIds) {
  const Tokenizer& tok = gpt2();
  const Ids bad = {15496, 50257};
  try {
    (void)tok.decode(bad);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "token id 50257 is outside the vocabulary (size 50257)");
  }
  EXPECT_THROW((void)tok.token_bytes(UINT32_MAX), Error);
  EXPECT_EQ(tok.decode(Ids{}), "");
  EXPECT_EQ(tok.decode(Ids{15496, 50256, 995}), "Hello<|endoftext|> world");
}

}  // namespace
}  // namespace strata::data
