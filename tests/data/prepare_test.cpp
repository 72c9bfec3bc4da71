// data/prepare (+ the `strata prepare` command): shards hold exactly <|endoftext|> + encode(doc) per document in
// input order, independent of threads; splits and shard cuts are right; bad input fails in one line and leaves
// the output folder as it was.
#include "data/prepare.h"

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "data/documents.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "engine/check.h"
#include "tests/test_util.h"
#include "engine/fileio.h"

namespace fs = std::filesystem;
using strata::data::TokenId;

namespace {

const std::string kTokenizer = STRATA_SOURCE_DIR "/data/default/r50k_base.tiktoken.xz";

const strata::data::Tokenizer& gpt2() {
  static const strata::data::Tokenizer tok = strata::data::Tokenizer::load(kTokenizer);
  return tok;
}

// Varied documents: words, numbers, unicode, whitespace runs, and a literal <|endoftext|> (ordinary text here).
std::vector<std::string> make_docs(size_t n, uint64_t seed) {
  static const std::array<const char*, 12> kWords = {"the",  "Union", " state", "1790", "naïve", "добро",
                                                      "国家", "  \n\n", "it's", "<|endoftext|>", "—", "🙂"};
  std::mt19937_64 rng(seed);
  std::vector<std::string> docs(n);
  for (auto& d : docs) {
    const size_t words = 1 + rng() % 400;
    for (size_t i = 0; i < words; ++i) {
      d += kWords[rng() % kWords.size()];
      d += (rng() % 5 == 0) ? "\n" : " ";
    }
  }
  return docs;
}

class PrepareTest : public strata::test::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    fs::create_directories(dir_ / "in");
  }

  // Writes docs as JSON Lines.
  std::string write_jsonl(const std::string& name, const std::vector<std::string>& docs) {
    std::string content;
    for (size_t i = 0; i < docs.size(); ++i)
      content += nlohmann::json{{"name", "doc" + std::to_string(i)}, {"text", docs[i]}}.dump() + "\n";
    const std::string p = (dir_ / "in" / name).string();
    strata::write_file_atomic(p, content);
    return p;
  }
  strata::data::PrepareOptions options(const std::string& out) const {
    strata::data::PrepareOptions o;
    o.tokenizer_path = kTokenizer;
    o.out_dir = (dir_ / out).string();
    o.progress = false;
    return o;
  }
  std::vector<TokenId> read_split(const std::string& out, const std::vector<std::string>& shards) const {
    std::vector<TokenId> all;
    for (const auto& s : shards) {
      auto shard = strata::data::Shard::open((dir_ / out / s).string(), gpt2().vocab_size());
      for (size_t i = 0; i < shard.size(); ++i) all.push_back(shard[i]);
    }
    return all;
  }
  std::vector<TokenId> expected_stream(const std::vector<std::string>& docs) const {
    std::vector<TokenId> want;
    for (const auto& d : docs) {
      want.push_back(gpt2().eot());
      gpt2().encode_append(d, /*allow_special=*/false, want);
    }
    return want;
  }
  std::vector<std::string> listing(const std::string& out) const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_ / out)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }
};

TEST_F(PrepareTest, ShardsHoldEotPlusEncodingOfEachDocumentInOrder) {
  const auto train = make_docs(60, 1), val = make_docs(7, 2);
  auto o = options("out");
  o.train_inputs = {write_jsonl("a.jsonl", {train.begin(), train.begin() + 30}),
                    write_jsonl("b.jsonl", {train.begin() + 30, train.end()})};
  o.val_inputs = {write_jsonl("v.jsonl", val)};
  o.shard_tokens = 1000;  // forces several shards, cut mid-document
  const auto s = strata::data::prepare(o);
  const auto want_train = expected_stream(train);
  ASSERT_GT(want_train.size(), 3000u);
  EXPECT_EQ(read_split("out", s.train.shards), want_train);
  EXPECT_EQ(read_split("out", s.val.shards), expected_stream(val));
  EXPECT_EQ(s.train.documents, 60u);
  EXPECT_EQ(s.val.documents, 7u);
  EXPECT_EQ(s.train.tokens, want_train.size());
  EXPECT_EQ(s.train.shards.size(), (want_train.size() + 999) / 1000);
  uint64_t bytes = 0;
  for (const auto& d : train) bytes += d.size();
  EXPECT_EQ(s.train.bytes, bytes);
  // The literal "<|endoftext|>" inside documents was ordinary text: eot appears once per document only.
  EXPECT_EQ(std::count(want_train.begin(), want_train.end(), gpt2().eot()), 60);

  const auto m = nlohmann::json::parse(strata::read_file((dir_ / "out" / "manifest.json").string()));
  EXPECT_EQ(m["vocab_size"], 50257);
  EXPECT_EQ(m["token_bytes"], 2);
  EXPECT_EQ(m["train"]["tokens"], want_train.size());
  EXPECT_EQ(m["val"]["shards"].size(), s.val.shards.size());
  for (const auto& n : listing("out")) EXPECT_EQ(n.find(".prepare-tmp"), std::string::npos) << n;
}

TEST_F(PrepareTest, OutputDoesNotDependOnThreadCount) {
  const auto docs = make_docs(40, 3);
  std::string big;  // one large plain-text document exercises the parallel single-document path
  // Inputs are taken in sorted order, so the big file (z_...) comes after d.jsonl.
  for (const auto& d : docs) big += d;
  const std::string big_path = (dir_ / "in" / "z_big.txt").string();
  strata::write_file_atomic(big_path, big);
  std::vector<std::vector<TokenId>> results;
  for (int threads : {1, 2, 3}) {
    auto o = options("out" + std::to_string(threads));
    o.train_inputs = {write_jsonl("d.jsonl", docs), big_path};
    o.threads = threads;
    const auto s = strata::data::prepare(o);
    results.push_back(read_split("out" + std::to_string(threads), s.train.shards));
  }
  EXPECT_EQ(results[0], results[1]);
  EXPECT_EQ(results[0], results[2]);
  auto want = expected_stream(docs);
  const auto big_ids = expected_stream({big});
  want.insert(want.end(), big_ids.begin(), big_ids.end());
  EXPECT_EQ(results[0], want);
}

TEST_F(PrepareTest, ValFractionHoldsOutTheLastDocuments) {
  const auto docs = make_docs(10, 4);
  auto o = options("out");
  o.train_inputs = {write_jsonl("d.jsonl", docs)};
  o.val_fraction = 0.25;  // ceil(2.5) = 3 documents
  const auto s = strata::data::prepare(o);
  EXPECT_EQ(s.train.documents, 7u);
  EXPECT_EQ(s.val.documents, 3u);
  EXPECT_EQ(read_split("out", s.val.shards), expected_stream({docs.begin() + 7, docs.end()}));
}

void expect_one_line_error(const std::function<void()>& fn, const std::string& needle) {
  strata::test::expect_one_line_error(fn, {needle});
}

TEST_F(PrepareTest, BadInputFailsInOneLineAndLeavesTheFolderAsItWas) {
  auto o = options("out");
  o.train_inputs = {write_jsonl("good.jsonl", make_docs(5, 5))};
  strata::data::prepare(o);
  const auto before = listing("out");
  const std::string manifest_before = strata::read_file((dir_ / "out" / "manifest.json").string());

  // Existing shards without --overwrite.
  expect_one_line_error([&] { strata::data::prepare(o); }, "--overwrite");
  // A malformed JSON Lines file, found after the tokenizer loaded: named with its line.
  const std::string bad = (dir_ / "in" / "bad.jsonl").string();
  strata::write_file_atomic(bad, "{\"text\": \"fine\"}\n{\"txt\": \"no text field\"}\n");
  auto o2 = o;
  o2.overwrite = true;
  o2.train_inputs = {o.train_inputs[0], bad};
  expect_one_line_error([&] { strata::data::prepare(o2); }, "bad.jsonl' line 2");
  // A missing input and a broken tokenizer.
  o2.train_inputs = {(dir_ / "in" / "missing*.txt").string()};
  expect_one_line_error([&] { strata::data::prepare(o2); }, "missing*.txt");
  o2.train_inputs = o.train_inputs;
  o2.tokenizer_path = bad;
  expect_one_line_error([&] { strata::data::prepare(o2); }, "bad.jsonl");

  EXPECT_EQ(listing("out"), before);  // no temporary folder, no partial shard, nothing replaced
  EXPECT_EQ(strata::read_file((dir_ / "out" / "manifest.json").string()), manifest_before);
}

using strata::test::run_strata;

TEST_F(PrepareTest, CliErrorIsOneLineAndNonZeroExit) {
  std::string out;
  const int rc = run_strata("prepare --no-progress --input " + (dir_ / "in" / "nothing.txt").string() + " --out " +
                                (dir_ / "out").string(),
                            &out);
  EXPECT_EQ(rc, 1) << out;
  // The start line, then exactly one error line.
  const auto err = out.find("strata: error: ");
  ASSERT_NE(err, std::string::npos) << out;
  EXPECT_NE(out.find("nothing.txt", err), std::string::npos) << out;
  EXPECT_EQ(out.find('\n', err), out.size() - 1) << out;
  EXPECT_FALSE(fs::exists(dir_ / "out" / "manifest.json"));
}

TEST_F(PrepareTest, CliHelpListsEveryFlagWithItsDefault) {
  std::string out;
  ASSERT_EQ(run_strata("prepare --help", &out), 0) << out;
  for (const char* flag : {"--input", "--val", "--val-fraction", "--tokenizer", "--out", "--shard-tokens",
                           "--threads", "--overwrite", "--no-progress"})
    EXPECT_NE(out.find(flag), std::string::npos) << flag << "\n" << out;
  EXPECT_NE(out.find("100000000"), std::string::npos) << out;  // --shard-tokens default
  EXPECT_NE(out.find("out/default"), std::string::npos) << out;
}

TEST_F(PrepareTest, CliConfigFileSetsOptions) {
  const auto docs = make_docs(4, 6);
  const std::string in = write_jsonl("c.jsonl", docs);
  const std::string cfg = (dir_ / "prep.toml").string();
  strata::write_file_atomic(cfg, "[prepare]\ninput = [\"" + in + "\"]\nout = \"" + (dir_ / "cfgout").string() +
                                     "\"\nshard-tokens = 50\nno-progress = true\n");
  std::string out;
  ASSERT_EQ(run_strata("--config " + cfg + " prepare", &out), 0) << out;
  const auto m = nlohmann::json::parse(strata::read_file((dir_ / "cfgout" / "manifest.json").string()));
  EXPECT_EQ(m["shard_tokens"], 50);
  EXPECT_EQ(m["train"]["documents"], 4);
}

// The embedded default corpus: 233 addresses, about 2.07 M GPT-2 tokens (../shared/DATA.md), Moby-Dick held out.
TEST_F(PrepareTest, DefaultCorpusThroughTheCli) {
  std::string out;
  ASSERT_EQ(run_strata("prepare --no-progress --out " + (dir_ / "def").string(), &out), 0) << out;
  const auto m = nlohmann::json::parse(strata::read_file((dir_ / "def" / "manifest.json").string()));
  EXPECT_EQ(m["train"]["documents"], 233);
  EXPECT_EQ(m["val"]["documents"], 138);
  const double train_tokens = m["train"]["tokens"].get<double>();
  EXPECT_GT(train_tokens, 2.0e6);
  EXPECT_LT(train_tokens, 2.15e6);
  const double val_tokens = m["val"]["tokens"].get<double>();
  EXPECT_GT(val_tokens, 0.25e6);
  EXPECT_LT(val_tokens, 0.33e6);
}

}  // namespace
