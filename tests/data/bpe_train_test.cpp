// tests/data/bpe_train_test.cpp: BPE training (data/bpe_train.h): hand-checked merges, an independent naive
// reference, determinism across thread counts, the trained vocabulary in the Tokenizer (round trip, and the
// consistency property: encoding the training text gives the trainer's token count), errors, the CLI.
#include "data/bpe_train.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "data/documents.h"
#include "data/pretokenizer.h"
#include "data/tokenizer.h"
#include "engine/check.h"
#include "tests/test_util.h"
#include "engine/fileio.h"

namespace strata::data {
namespace {

namespace fs = std::filesystem;

const std::string kSotu = STRATA_SOURCE_DIR "/data/default/sotu.jsonl.xz";

const std::vector<std::string>& sotu_documents() {
  static const std::vector<std::string> docs = [] {
    std::vector<std::string> out;
    for (Document& d : read_documents(kSotu)) out.push_back(std::move(d.text));
    return out;
  }();
  return docs;
}

std::vector<std::string_view> views(const std::vector<std::string>& docs) {
  return {docs.begin(), docs.end()};
}

std::vector<std::string> merged_tokens(const std::vector<std::string>& tokens) {
  return {tokens.begin() + 256, tokens.end()};
}

BpeTrainOptions options(uint32_t vocab_size, uint64_t min_frequency = 2, int threads = 1) {
  BpeTrainOptions o;
  o.vocab_size = vocab_size;
  o.min_frequency = min_frequency;
  o.threads = threads;
  return o;
}

// ---- an independent, slow reference: full recount of all pairs per merge, every word re-encoded from its bytes
// with the tiktoken rule (lowest-rank adjacent concatenation first, leftmost on ties) after every merge. ----------

using Ids = std::vector<uint32_t>;

Ids tiktoken_encode(std::string_view piece, const std::map<std::string, uint32_t>& ids) {
  std::vector<std::string> parts;
  for (const char c : piece) parts.emplace_back(1, c);
  for (;;) {
    uint32_t lowest = std::numeric_limits<uint32_t>::max();
    size_t pos = 0;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      const auto it = ids.find(parts[i] + parts[i + 1]);
      if (it != ids.end() && it->second < lowest) {
        lowest = it->second;
        pos = i;
      }
    }
    if (lowest == std::numeric_limits<uint32_t>::max()) break;
    parts[pos] += parts[pos + 1];
    parts.erase(parts.begin() + static_cast<ptrdiff_t>(pos) + 1);
  }
  Ids out;
  for (const auto& p : parts) out.push_back(ids.at(p));
  return out;
}

struct Reference {
  std::vector<std::string> tokens;
  std::vector<std::pair<uint32_t, uint32_t>> merges;
  uint64_t tokens_out = 0;
};

Reference reference_train(const std::vector<std::string>& docs, uint32_t merges, uint64_t min_frequency) {
  const PreTokenizer pt;
  std::map<std::string, uint64_t> freq;
  for (const auto& d : docs) pt.split(d, [&](std::string_view p) { ++freq[std::string(p)]; });
  Reference ref;
  std::map<std::string, uint32_t> ids;
  for (int b = 0; b < 256; ++b) {
    ref.tokens.emplace_back(1, static_cast<char>(b));
    ids[ref.tokens.back()] = static_cast<uint32_t>(b);
  }
  std::map<std::string, Ids> enc;
  for (const auto& [p, n] : freq) enc[p] = tiktoken_encode(p, ids);
  for (uint32_t m = 0; m < merges; ++m) {
    std::map<std::pair<uint32_t, uint32_t>, uint64_t> counts;
    for (const auto& [p, n] : freq) {
      const Ids& s = enc[p];
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        counts[{s[i], s[i + 1]}] += n;
        if (s[i] == s[i + 1] && i + 2 < s.size() && s[i + 2] == s[i]) ++i;  // "aaa" holds one (a, a)
      }
    }
    std::pair<uint32_t, uint32_t> best{};
    uint64_t best_count = 0;
    for (const auto& [pair, n] : counts)  // ascending pairs: the first of the highest count wins ties
      if (n > best_count) best_count = n, best = pair;
    if (best_count == 0 || best_count < min_frequency) break;
    ref.merges.push_back(best);
    ref.tokens.push_back(ref.tokens[best.first] + ref.tokens[best.second]);
    EXPECT_EQ(ids.count(ref.tokens.back()), 0u) << "reference produced a duplicate token";
    ids[ref.tokens.back()] = static_cast<uint32_t>(ref.tokens.size() - 1);
    for (const auto& [p, n] : freq) enc[p] = tiktoken_encode(p, ids);
  }
  for (const auto& [p, n] : freq) ref.tokens_out += enc[p].size() * n;
  return ref;
}

// Text over a small alphabet with many repeats, so that equal-symbol runs, other splits of a new token and
// follow-on merges all occur.
std::string random_text(std::mt19937_64& rng, size_t words, const std::string& alphabet) {
  std::string s;
  std::uniform_int_distribution<size_t> len(1, 7), letter(0, alphabet.size() - 1), sep(0, 9);
  for (size_t w = 0; w < words; ++w) {
    const size_t n = len(rng);
    for (size_t i = 0; i < n; ++i) s += alphabet[letter(rng)];
    const size_t k = sep(rng);
    s += k == 0 ? "\n" : k == 1 ? ", " : k == 2 ? "  " : " ";
  }
  return s;
}

// ---- (1) hand-checked examples --------------------------------------------------------------------------------

// "aaabdaaabac" is one piece (all letters): bytes a a a b d a a a b a c.
//  pairs, equal runs counted non-overlapping from the left ("aaa" holds one (a,a)):
//    (a,a) 2, (a,b) 2, (b,d) 1, (d,a) 1, (b,a) 1, (a,c) 1
//  1. tie (a,a)=(97,97) vs (a,b)=(97,98): the smaller pair wins -> 256 "aa";  word: aa a b d aa a b a c
//     pairs: (aa,a) 2, (a,b) 2, (b,d) 1, (d,aa) 1, (b,a) 1, (a,c) 1
//  2. tie (a,b)=(97,98) vs (aa,a)=(256,97) -> 257 "ab";                         word: aa ab d aa ab a c
//     pairs: (aa,ab) 2, the rest 1
//  3. (aa,ab)=(256,257) count 2 -> 258 "aaab";                                  word: aaab d aaab a c
//     pairs: (aaab,d) (d,aaab) (aaab,a) (a,c), all 1: min_frequency 2 stops here.
//  With min_frequency 1, ties of count 1 go to the smallest pair:
//  4. (a,c)=(97,99) -> 259 "ac";              word: aaab d aaab ac
//  5. (d,aaab)=(100,258) -> 260 "daaab";      word: aaab daaab ac
//  6. (aaab,daaab)=(258,260) -> 261 "aaabdaaab"; 7. (261,259) -> 262 "aaabdaaabac"; then no pair is left.
TEST(BpeTrain, HandCheckedSingleWord) {
  const std::vector<std::string> docs{"aaabdaaabac"};
  BpeTrainResult r = train_bpe_detailed(views(docs), options(257 + 3));
  EXPECT_EQ(merged_tokens(r.tokens), (std::vector<std::string>{"aa", "ab", "aaab"}));
  using P = std::pair<uint32_t, uint32_t>;
  EXPECT_EQ(r.merges, (std::vector<P>{{97, 97}, {97, 98}, {256, 257}}));
  EXPECT_EQ(r.merge_counts, (std::vector<uint64_t>{2, 2, 2}));
  EXPECT_EQ(r.tokens_out, 5u);  // aaab d aaab a c

  r = train_bpe_detailed(views(docs), options(257 + 7, 1));
  EXPECT_EQ(merged_tokens(r.tokens),
            (std::vector<std::string>{"aa", "ab", "aaab", "ac", "daaab", "aaabdaaab", "aaabdaaabac"}));
  EXPECT_EQ(r.tokens_out, 1u);

  // An 8th merge is impossible, a 4th needs min_frequency 1: errors naming how many merges were possible.
  EXPECT_THROW(train_bpe(views(docs), options(257 + 8, 1)), Error);
  try {
    train_bpe(views(docs), options(257 + 4, 2));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("supports only 3 merges"), std::string::npos) << e.what();
  }
}

// "low lower lowest newer wider" -> pieces "low", " lower", " lowest", " newer", " wider" (leading spaces are part
// of the pieces), each once. Bytes: ' '=32 d=100 e=101 i=105 l=108 n=110 o=111 r=114 s=115 t=116 w=119.
//   pairs: (l,o) 3, (o,w) 3, (w,e) 3, (e,r) 3, (' ',l) 2, the rest 1
//  1. four pairs of count 3; smallest (e,r)=(101,114) -> 256 "er"
//     " lower" = ' ' l o w er, " newer" = ' ' n e w er, " wider" = ' ' w i d er; (w,e) drops to 1 (" lowest")
//  2. (l,o)=(108,111) vs (o,w)=(111,119), both 3 -> 257 "lo"
//  3. (lo,w) 3 -> 258 "low"
//  4. (' ',low)=(32,258) 2 -> 259 " low"; every other pair has count 1.
//  Tokens at the end: low | " low" er | " low" e s t | ' ' n e w er | ' ' w i d er = 1 + 2 + 4 + 5 + 5 = 17.
TEST(BpeTrain, HandCheckedPieces) {
  const std::vector<std::string> docs{"low lower lowest newer wider"};
  const BpeTrainResult r = train_bpe_detailed(views(docs), options(257 + 4));
  EXPECT_EQ(merged_tokens(r.tokens), (std::vector<std::string>{"er", "lo", "low", " low"}));
  EXPECT_EQ(r.merge_counts, (std::vector<uint64_t>{3, 3, 3, 2}));
  EXPECT_EQ(r.pieces, 5u);
  EXPECT_EQ(r.unique_pieces, 5u);
  EXPECT_EQ(r.bytes, docs[0].size());
  EXPECT_EQ(r.tokens_out, 17u);
  EXPECT_THROW(train_bpe(views(docs), options(257 + 5)), Error);
}

TEST(BpeTrain, ByteTokensComeFirst) {
  const std::vector<std::string> docs{"hello hello hello world world"};
  const auto tokens = train_bpe(views(docs), options(260));
  ASSERT_EQ(tokens.size(), 259u);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(tokens[static_cast<size_t>(b)], std::string(1, static_cast<char>(b)));
}

// ---- (2) against the reference, and determinism ----------------------------------------------------------------

TEST(BpeTrain, MatchesNaiveReference) {
  std::mt19937_64 rng(20240611);
  const std::vector<std::string> alphabets{"ab", "abc", "aab", "abcde", "xyzzy"};
  for (int trial = 0; trial < 10; ++trial) {
    std::vector<std::string> docs;
    const std::string& alphabet = alphabets[static_cast<size_t>(trial) % alphabets.size()];
    for (int d = 0; d < 4; ++d) docs.push_back(random_text(rng, 60, alphabet));
    const uint64_t min_frequency = trial % 2 == 0 ? 1 : 2;
    const Reference ref = reference_train(docs, 120, min_frequency);
    ASSERT_GT(ref.merges.size(), 10u);
    const BpeTrainResult r =
        train_bpe_detailed(views(docs), options(static_cast<uint32_t>(257 + ref.merges.size()), min_frequency));
    EXPECT_EQ(r.tokens, ref.tokens) << "trial " << trial;
    EXPECT_EQ(r.merges, ref.merges) << "trial " << trial;
    EXPECT_EQ(r.tokens_out, ref.tokens_out) << "trial " << trial;
  }
}

TEST(BpeTrain, DeterministicAcrossThreads) {
  std::mt19937_64 rng(7);
  std::vector<std::string> docs;
  for (int d = 0; d < 40; ++d) docs.push_back(random_text(rng, 400, "etaoinshrdlu"));
  const BpeTrainResult one = train_bpe_detailed(views(docs), options(1000, 2, 1));
  for (const int threads : {1, 2, 3, 0}) {
    const BpeTrainResult r = train_bpe_detailed(views(docs), options(1000, 2, threads));
    EXPECT_EQ(r.tokens, one.tokens) << threads << " threads";
    EXPECT_EQ(r.merges, one.merges) << threads << " threads";
    EXPECT_EQ(r.tokens_out, one.tokens_out) << threads << " threads";
    EXPECT_EQ(r.unique_pieces, one.unique_pieces);
  }
}

// A document over 2 MiB is pre-tokenized in chunks cut at safe cuts; the pieces must be those of the whole text.
TEST(BpeTrain, LargeDocumentChunksMatchReference) {
  std::mt19937_64 rng(99);
  std::string big;
  while (big.size() < (size_t{5} << 20)) big += random_text(rng, 1000, "abc");
  const std::vector<std::string> docs{big};
  const Reference ref = reference_train(docs, 12, 2);
  for (const int threads : {1, 3}) {
    const BpeTrainResult r = train_bpe_detailed(views(docs), options(257 + 12, 2, threads));
    EXPECT_EQ(r.tokens, ref.tokens);
    EXPECT_EQ(r.tokens_out, ref.tokens_out);
  }
}

TEST(BpeTrain, SotuDeterministicAcrossThreads) {
  const auto& all = sotu_documents();
  const std::vector<std::string> docs(all.begin(), all.begin() + 40);
  const BpeTrainResult one = train_bpe_detailed(views(docs), options(2048, 2, 1));
  EXPECT_EQ(one.merges.size(), 2048u - 257u);
  for (const int threads : {2, 3}) {
    const BpeTrainResult r = train_bpe_detailed(views(docs), options(2048, 2, threads));
    EXPECT_EQ(r.tokens, one.tokens) << threads << " threads";
    EXPECT_EQ(r.tokens_out, one.tokens_out) << threads << " threads";
  }
}

// ---- (3)/(4) the trained vocabulary in the Tokenizer ----------------------------------------------------------

// Encoding the training text with the trained vocabulary (tiktoken rule) gives exactly the trainer's final
// segmentation, so the token counts agree; and decode(encode(x)) == x.
TEST(BpeTrain, EncodingReproducesTrainingSegmentation) {
  // The full State of the Union corpus at the default vocabulary size.
  const auto& sotu = sotu_documents();
  const BpeTrainResult r = train_bpe_detailed(views(sotu), options(8192, 2, 0));
  const Tokenizer tok = Tokenizer::from_tokens(r.tokens);
  EXPECT_EQ(tok.vocab_size(), 8192u);
  EXPECT_EQ(tok.eot(), 8191u);
  const auto encoded = tok.encode_batch(views(sotu), false, 0);
  uint64_t n = 0;
  for (size_t d = 0; d < sotu.size(); ++d) {
    n += encoded[d].size();
    ASSERT_EQ(tok.decode(encoded[d]), sotu[d]) << "document " << d;
  }
  EXPECT_EQ(n, r.tokens_out);
  EXPECT_LT(r.tokens_out, r.bytes / 4);  // a real compression: English at 8k tokens is ~4.9 bytes/token

  // Small-alphabet corpora, where equal-symbol runs are common, per piece against the reference.
  std::mt19937_64 rng(31337);
  for (const std::string alphabet : {"ab", "aab", "abcab"}) {
    std::vector<std::string> docs;
    for (int d = 0; d < 3; ++d) docs.push_back(random_text(rng, 300, alphabet));
    const BpeTrainResult small = train_bpe_detailed(views(docs), options(400, 1));
    const Tokenizer t = Tokenizer::from_tokens(small.tokens);
    uint64_t m = 0;
    for (const auto& d : docs) m += t.encode(d).size();
    EXPECT_EQ(m, small.tokens_out) << alphabet;
    EXPECT_EQ(reference_train(docs, 400 - 257, 1).tokens, small.tokens) << alphabet;
  }
}

TEST(BpeTrain, RoundTripRandomText) {
  const auto& all = sotu_documents();
  const std::vector<std::string> docs(all.begin(), all.begin() + 20);
  const Tokenizer tok = Tokenizer::from_tokens(train_bpe(views(docs), options(1024)));
  std::mt19937_64 rng(0xB9E);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<size_t> len(0, 2000);
  const std::vector<std::string> frags{" the", " Union", "'s", " 1776", "\n\n", "  ", "\t", "é", "日本", "🙂",
                                       "\xff", "\xc3", "<|endoftext|>", ", ", "-", " of"};
  std::uniform_int_distribution<size_t> frag(0, frags.size() - 1);
  for (int trial = 0; trial < 200; ++trial) {
    std::string text;
    const size_t n = len(rng);
    if (trial % 2 == 0) {
      for (size_t i = 0; i < n; ++i) text += static_cast<char>(byte(rng));  // any bytes, mostly invalid UTF-8
    } else {
      while (text.size() < n) text += frags[frag(rng)];
    }
    const std::vector<TokenId> ids = tok.encode(text);
    for (const TokenId id : ids) ASSERT_LT(id, tok.eot());
    ASSERT_EQ(tok.decode(ids), text) << "trial " << trial;
  }
  // Held-out English text compresses (1024 tokens give about 2.9 bytes/token here).
  const std::string sample = all[100];
  EXPECT_LT(tok.encode(sample).size(), sample.size() / 2);
}

// ---- (5) sizes and errors -------------------------------------------------------------------------------------

TEST(BpeTrain, Vocab257HasNoMerges) {
  const std::vector<std::string> docs{"some text some text"};
  const BpeTrainResult r = train_bpe_detailed(views(docs), options(257));
  EXPECT_EQ(r.tokens.size(), 256u);
  EXPECT_TRUE(r.merges.empty());
  EXPECT_EQ(r.tokens_out, r.bytes);
  // No documents at all: fine without merges.
  EXPECT_EQ(train_bpe({}, options(257)).size(), 256u);
}

TEST(BpeTrain, Errors) {
  const std::vector<std::string> docs{"some text some text"};
  for (const uint32_t v : {0u, 1u, 256u}) {
    try {
      train_bpe(views(docs), options(v));
      FAIL() << "vocab size " << v << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("at least 257"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(train_bpe(views(docs), options(300, 0)), Error);
  EXPECT_THROW(train_bpe({}, options(258)), Error);
  EXPECT_THROW(train_bpe(views(docs), options(100000)), Error);
}

// ---- the CLI ---------------------------------------------------------------------------------------------------

class BpeTrainCli : public strata::test::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    input_ = (dir_ / "in.txt").string();
    std::mt19937_64 rng(5);
    text_ = random_text(rng, 3000, "etaoinshr");
    write_file_atomic(input_, text_);
  }
  // A failing run: exit 1, its last line the one error line, naming `what`; no output file.
  void expect_error(const std::string& args, const std::string& out_path, const std::string& what) {
    std::string out;
    EXPECT_EQ(strata::test::run_strata("tokenizer train --no-progress " + args, &out), 1) << out;
    const auto err = out.find("strata: error: ");
    ASSERT_NE(err, std::string::npos) << out;
    EXPECT_NE(out.find(what, err), std::string::npos) << out;
    EXPECT_EQ(out.find('\n', err), out.size() - 1) << out;
    EXPECT_FALSE(fs::exists(out_path)) << out_path;
  }

  std::string input_, text_;
};

TEST_F(BpeTrainCli, TrainsAndWritesALoadableVocabulary) {
  const std::string out_path = (dir_ / "v.tiktoken").string();
  std::string out;
  ASSERT_EQ(strata::test::run_strata("tokenizer train --no-progress --input " + input_ + " --vocab-size 400 --threads 2 --output " +
                           out_path,
                       &out),
            0)
      << out;
  EXPECT_NE(out.find("bytes/token"), std::string::npos) << out;
  const Tokenizer tok = Tokenizer::load(out_path);
  EXPECT_EQ(tok.vocab_size(), 400u);
  const std::vector<std::string> docs{text_};
  const auto tokens = train_bpe(views(docs), options(400));
  for (TokenId id = 0; id < tokens.size(); ++id) ASSERT_EQ(tok.token_bytes(id), tokens[id]) << id;
}

TEST_F(BpeTrainCli, ErrorsAreOneLineAndWriteNothing) {
  const std::string out_path = (dir_ / "v.tiktoken").string();
  expect_error("--input " + input_ + " --vocab-size 256 --output " + out_path, out_path, "257");
  expect_error("--input " + input_ + " --vocab-size 300 --min-frequency 0 --output " + out_path, out_path,
               "--min-frequency");
  expect_error("--input " + input_ + " --vocab-size 60000 --output " + out_path, out_path, "supports only");
  expect_error("--input " + (dir_ / "missing.txt").string() + " --output " + out_path, out_path, "missing.txt");
  const std::string nowhere = (dir_ / "no_such_dir" / "v.tiktoken").string();
  expect_error("--input " + input_ + " --vocab-size 300 --output " + nowhere, nowhere, "no_such_dir");
  expect_error("--input " + input_ + " --vocab-size 300 --output " + dir_.string(), dir_.string() + "/x", "folder");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);  // only in.txt
}

TEST_F(BpeTrainCli, HelpListsEveryFlag) {
  std::string out;
  ASSERT_EQ(strata::test::run_strata("tokenizer train --help", &out), 0) << out;
  for (const char* flag : {"--input", "--output", "--vocab-size", "--threads", "--min-frequency", "--no-progress",
                           "sotu.jsonl.xz", "8192"})
    EXPECT_NE(out.find(flag), std::string::npos) << flag << "\n" << out;
}

}  // namespace
}  // namespace strata::data
