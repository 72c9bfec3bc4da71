// Tests for data/shard.h: round trips of both token widths (header bytes checked directly), empty shards, and
// a one-line error naming the file for every kind of bad shard.
#include "data/shard.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "engine/check.h"
#include "tests/test_util.h"

namespace strata::data {
namespace {

namespace fs = std::filesystem;

using ShardTest = strata::test::TempDirTest;

// Seeded random tokens in [1, vocab): never all zeros.
std::vector<uint32_t> random_tokens(size_t n, uint32_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint32_t> t(n);
  for (auto& v : t) v = 1 + static_cast<uint32_t>(rng() % (vocab - 1));
  return t;
}

std::vector<uint8_t> read_bytes(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::string& p, const std::vector<uint8_t>& bytes) {
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

int32_t header_int(const std::vector<uint8_t>& bytes, size_t i) {
  int32_t v;
  std::memcpy(&v, bytes.data() + 4 * i, 4);
  return v;
}

void set_header_int(std::vector<uint8_t>& bytes, size_t i, int32_t v) {
  std::memcpy(bytes.data() + 4 * i, &v, 4);
}

// A raw shard: header (magic, version, count) followed by `token_bytes` bytes of seeded non-zero data.
std::vector<uint8_t> raw_shard(int32_t magic, int32_t version, int32_t count, size_t payload_bytes) {
  std::vector<uint8_t> b(kShardHeaderBytes + payload_bytes, 0);
  set_header_int(b, 0, magic);
  set_header_int(b, 1, version);
  set_header_int(b, 2, count);
  std::mt19937 rng(7);
  for (size_t i = kShardHeaderBytes; i < b.size(); ++i) b[i] = static_cast<uint8_t>(1 + rng() % 100);
  return b;
}

// Runs fn, expects a strata::Error whose message is one line naming the file and containing every fragment.
template <typename Fn>
void expect_error(Fn&& fn, const std::string& file, std::vector<std::string> fragments) {
  fragments.push_back(cat("'", file, "'"));
  strata::test::expect_one_line_error(fn, fragments);
}

void expect_round_trip(const std::string& p, const std::vector<uint32_t>& tokens, uint32_t vocab,
                       TokenWidth w) {
  write_shard(p, tokens, vocab);

  // The header, byte for byte.
  const std::vector<uint8_t> bytes = read_bytes(p);
  const bool u16 = w == TokenWidth::kU16;
  ASSERT_EQ(bytes.size(), 1024 + tokens.size() * (u16 ? 2 : 4));
  EXPECT_EQ(header_int(bytes, 0), u16 ? 20240520 : 20240801);
  EXPECT_EQ(header_int(bytes, 1), u16 ? 1 : 7);
  EXPECT_EQ(header_int(bytes, 2), static_cast<int32_t>(tokens.size()));
  for (size_t i = 3; i < 256; ++i) ASSERT_EQ(header_int(bytes, i), 0) << "header int " << i;
  // The first token, little-endian, right after the header.
  if (!tokens.empty()) {
    EXPECT_EQ(bytes[1024], tokens[0] & 0xff);
    EXPECT_EQ(bytes[1025], (tokens[0] >> 8) & 0xff);
  }

  const Shard s = Shard::open(p, vocab);
  EXPECT_EQ(s.path(), p);
  EXPECT_EQ(s.width(), w);
  ASSERT_EQ(s.size(), tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) ASSERT_EQ(s[i], tokens[i]) << "token " << i;

  // read(): whole, a middle range, the last few, empty ranges; outputs poisoned first.
  const size_t n = tokens.size();
  const std::vector<std::pair<size_t, size_t>> ranges = {{0, n}, {n / 3, n / 2}, {n - 5, 5}, {0, 0}, {n, 0}};
  for (const auto& [begin, count] : ranges) {
    std::vector<int32_t> out(count + 1, -1);
    s.read(begin, count, out.data());
    for (size_t i = 0; i < count; ++i) ASSERT_EQ(out[i], static_cast<int32_t>(tokens[begin + i]));
    EXPECT_EQ(out[count], -1) << "read past the range";
  }
}

TEST(ShardWidth, ForVocab) {
  EXPECT_EQ(token_width_for_vocab(1), TokenWidth::kU16);
  EXPECT_EQ(token_width_for_vocab(50257), TokenWidth::kU16);
  EXPECT_EQ(token_width_for_vocab(65536), TokenWidth::kU16);  // ids up to 65535 fit uint16
  EXPECT_EQ(token_width_for_vocab(65537), TokenWidth::kU32);
  EXPECT_EQ(token_width_for_vocab(100000), TokenWidth::kU32);
  EXPECT_EQ(token_width_for_vocab(UINT32_MAX), TokenWidth::kU32);
  static_assert(token_bytes(TokenWidth::kU16) == 2 && token_bytes(TokenWidth::kU32) == 4);
}

TEST_F(ShardTest, RoundTripU16) {
  const auto tokens = random_tokens(10007, 50257, 1);
  expect_round_trip(path("a.bin"), tokens, 50257, TokenWidth::kU16);
}

TEST_F(ShardTest, RoundTripU16FullRange) {
  auto tokens = random_tokens(5000, 65536, 2);
  tokens[17] = 65535;  // the largest uint16 id
  expect_round_trip(path("a.bin"), tokens, 65536, TokenWidth::kU16);
}

TEST_F(ShardTest, RoundTripU32) {
  auto tokens = random_tokens(10007, 100000, 3);
  tokens[5] = 99999;
  tokens[6] = 65536;  // just past uint16
  expect_round_trip(path("a.bin"), tokens, 100000, TokenWidth::kU32);
}

TEST_F(ShardTest, EmptyShard) {
  for (const uint32_t vocab : {50257u, 100000u}) {
    const std::string p = path(cat("empty", vocab, ".bin"));
    write_shard(p, {}, vocab);
    EXPECT_EQ(fs::file_size(p), 1024u);
    const Shard s = Shard::open(p, vocab);
    EXPECT_EQ(s.size(), 0u);
    EXPECT_EQ(s.width(), token_width_for_vocab(vocab));
    s.read(0, 0, nullptr);
  }
}

TEST_F(ShardTest, OpenWithoutVocabularySkipsTheTokenCheck) {
  const std::string p = path("a.bin");
  write_shard(p, random_tokens(100, 50257, 4), 50257);
  EXPECT_EQ(Shard::open(p).size(), 100u);
  EXPECT_EQ(Shard::open(p, 65536).size(), 100u);  // every uint16 fits: no scan needed
}

TEST_F(ShardTest, MoveKeepsTheMapping) {
  const std::string p = path("a.bin");
  const auto tokens = random_tokens(300, 50257, 5);
  write_shard(p, tokens, 50257);
  Shard a = Shard::open(p);
  Shard b = std::move(a);
  ASSERT_EQ(b.size(), 300u);
  EXPECT_EQ(b[299], tokens[299]);
  Shard c = Shard::open(p);
  c = std::move(b);
  EXPECT_EQ(c[0], tokens[0]);
}

TEST_F(ShardTest, ViewValidatesLikeOpen) {
  const std::string p = path("a.bin");
  const auto tokens = random_tokens(1000, 50257, 6);
  write_shard(p, tokens, 50257);
  const std::vector<uint8_t> bytes = read_bytes(p);
  const Shard v = Shard::view("mem", bytes.data(), bytes.size(), 50257);
  ASSERT_EQ(v.size(), tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) ASSERT_EQ(v[i], tokens[i]);
  expect_error([&] { Shard::view("mem", bytes.data(), bytes.size(), 1000); }, "mem",
               {"outside the vocabulary"});
  expect_error([&] { Shard::view("mem", bytes.data(), bytes.size() - 1, 0); }, "mem", {"truncated"});
}

TEST_F(ShardTest, WrongMagic) {
  const std::string p = path("x.bin");
  write_bytes(p, raw_shard(12345, 1, 10, 20));
  expect_error([&] { Shard::open(p); }, p, {"wrong magic 12345", "20240520", "20240801"});
}

TEST_F(ShardTest, WrongVersionForMagic) {
  const std::string p = path("x.bin");
  write_bytes(p, raw_shard(20240520, 7, 10, 20));  // the uint32 version with the uint16 magic
  expect_error([&] { Shard::open(p); }, p, {"wrong version 7 for magic 20240520", "expected 1"});
  write_bytes(p, raw_shard(20240801, 1, 10, 40));
  expect_error([&] { Shard::open(p); }, p, {"wrong version 1 for magic 20240801", "expected 7"});
}

TEST_F(ShardTest, ShorterThanHeader) {
  const std::string p = path("x.bin");
  write_bytes(p, std::vector<uint8_t>(100, 7));
  expect_error([&] { Shard::open(p); }, p, {"truncated", "100 bytes", "1024-byte header"});
  write_bytes(p, {});
  expect_error([&] { Shard::open(p); }, p, {"truncated", "0 bytes"});
}

TEST_F(ShardTest, ShorterThanCountSays) {
  const std::string p = path("x.bin");
  write_bytes(p, raw_shard(20240520, 1, 1000, 2000 - 1024));
  expect_error([&] { Shard::open(p); }, p,
               {"truncated: header says 1000 uint16 tokens (3024 bytes) but the file has 2000 bytes"});
  write_bytes(p, raw_shard(20240801, 7, 10, 39));
  expect_error([&] { Shard::open(p); }, p, {"truncated", "(1064 bytes)", "1063 bytes"});
}

TEST_F(ShardTest, ExtraBytes) {
  const std::string p = path("x.bin");
  write_bytes(p, raw_shard(20240520, 1, 10, 21));
  expect_error([&] { Shard::open(p); }, p,
               {"size mismatch", "10 uint16 tokens (1044 bytes)", "1045 bytes", "1 extra"});
}

TEST_F(ShardTest, NegativeCount) {
  const std::string p = path("x.bin");
  write_bytes(p, raw_shard(20240520, 1, -4, 0));
  expect_error([&] { Shard::open(p); }, p, {"negative token count -4"});
}

TEST_F(ShardTest, TokenOutsideVocabulary) {
  // uint16: the first bad token is reported, past the first scan block (4096 tokens).
  const std::string p = path("x.bin");
  auto tokens = random_tokens(9000, 1000, 8);
  tokens[5000] = 4242;
  tokens[7000] = 5000;
  write_shard(p, tokens, 50257);
  expect_error([&] { Shard::open(p, 1000); }, p,
               {"token 4242 at index 5000 is outside the vocabulary (size 1000)"});
  expect_error([&] { Shard::open(p, 4243); }, p, {"token 5000 at index 7000"});
  EXPECT_EQ(Shard::open(p, 5001).size(), 9000u);
}

TEST_F(ShardTest, TokenOutsideVocabularyU32) {
  const std::string p = path("x.bin");
  auto tokens = random_tokens(100, 50257, 9);
  tokens[12] = 70000;
  write_shard(p, tokens, 100000);
  expect_error([&] { Shard::open(p, 50257); }, p,
               {"token 70000 at index 12 is outside the vocabulary (size 50257)"});
}

TEST_F(ShardTest, MissingFileAndDirectory) {
  const std::string p = path("missing.bin");
  expect_error([&] { Shard::open(p); }, p, {"cannot open"});
  expect_error([&] { Shard::open(dir_.string()); }, dir_.string(), {"not a regular file"});
}

TEST_F(ShardTest, WriteRejectsTokenOutsideVocabularyAndLeavesNoFile) {
  const std::string p = path("x.bin");
  auto tokens = random_tokens(70000, 50257, 10);
  tokens[66000] = 50257;  // in the second write chunk: the first chunk was already written to the temporary
  expect_error([&] { write_shard(p, tokens, 50257); }, p,
               {"token 50257 at index 66000 is outside the vocabulary (size 50257)"});
  EXPECT_TRUE(fs::is_empty(dir_)) << "a file or temporary was left behind";

  // An existing shard under that name is left untouched.
  const auto good = random_tokens(10, 50257, 11);
  write_shard(p, good, 50257);
  const auto before = read_bytes(p);
  expect_error([&] { write_shard(p, tokens, 50257); }, p, {"outside the vocabulary"});
  EXPECT_EQ(read_bytes(p), before);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

TEST_F(ShardTest, WriteRejectsEmptyVocabulary) {
  const std::string p = path("x.bin");
  expect_error([&] { write_shard(p, {}, 0); }, p, {"vocabulary of size 0"});
  EXPECT_TRUE(fs::is_empty(dir_));
}

// A plain TEST over in-memory bytes: the threadsafe death-test child re-runs the test body, and a fixture's
// temporary directory made there would never be removed.
TEST(ShardDeathTest, ReadOutsideTheShardAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const std::vector<uint8_t> bytes = raw_shard(kShardMagicU16, kShardVersionU16, 10, 20);
  const Shard s = Shard::view("mem", bytes.data(), bytes.size());
  ASSERT_EQ(s.size(), 10u);
  std::vector<int32_t> out(16);
  EXPECT_DEATH(s.read(5, 6, out.data()), "outside shard");
  EXPECT_DEATH(s.read(11, 0, out.data()), "outside shard");
  EXPECT_DEATH(s.read(SIZE_MAX, 2, out.data()), "outside shard");
  EXPECT_DEATH((void)s[10], "outside shard");
}

}  // namespace
}  // namespace strata::data
