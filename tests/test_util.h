// tests/test_util.h: helpers shared by the test suites.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "engine/check.h"

namespace strata::test {

// A fixture with a fresh folder per test, unique across processes, removed afterwards.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::temp_directory_path() /
           (std::string("strata_") + info->test_suite_name() + "_" + info->name() + "_" +
            std::to_string(::getpid()) + "_" + std::to_string(std::random_device{}()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  std::filesystem::path dir_;
};

// n token ids uniform in [0, V) from a seeded stream (portable: mt19937_64 and a modulo).
inline std::vector<int32_t> random_tokens(size_t n, int V, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng() % static_cast<uint64_t>(V));
  return t;
}

// Runs the strata binary built with the tests with `args` (shell syntax); returns its exit status and
// captures stdout + stderr into *output.
// The strata executable and the source tree the tests use: the build's, unless the environment names others
// (STRATA_TEST_BINARY, STRATA_TEST_SOURCE_DIR), as on a GPU machine that runs test executables built elsewhere.
inline std::string binary_path() {
  const char* env = std::getenv("STRATA_TEST_BINARY");
  return env && *env ? env : STRATA_BINARY;
}
inline std::string source_dir() {
  const char* env = std::getenv("STRATA_TEST_SOURCE_DIR");
  return env && *env ? env : STRATA_SOURCE_DIR;
}

inline int run_strata(const std::string& args, std::string* output) {
  const std::string cmd = binary_path() + " " + args + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return -1;
  std::array<char, 4096> buf{};
  output->clear();
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) output->append(buf.data(), n);
  const int status = ::pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// The small corpus of the end-to-end training suites: a byte-level BPE vocabulary of vocab_size tokens trained
// on the embedded State of the Union corpus (dir/tok.tiktoken), and that corpus prepared with it (dir/data:
// train shards, Moby-Dick as val). Returns true, or false with the failing command's output in *output.
inline bool prepare_test_corpus(const std::filesystem::path& dir, int vocab_size, std::string* output) {
  const std::string tok = (dir / "tok.tiktoken").string();
  return run_strata("tokenizer train --no-progress --vocab-size " + std::to_string(vocab_size) + " --input " +
                        source_dir() + "/data/default/sotu.jsonl.xz --output " + tok,
                    output) == 0 &&
         run_strata("prepare --no-progress --tokenizer " + tok + " --out " + (dir / "data").string(), output) == 0;
}

// Runs fn and expects a strata::Error whose message is one line containing every fragment.
template <typename Fn>
void expect_one_line_error(Fn&& fn, const std::vector<std::string>& fragments) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one mentioning '" << fragments.front() << "'";
  } catch (const strata::Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "not one line: " << msg;
    for (const auto& f : fragments)
      EXPECT_NE(msg.find(f), std::string::npos) << "lacks '" << f << "': " << msg;
  }
}

}  // namespace strata::test
