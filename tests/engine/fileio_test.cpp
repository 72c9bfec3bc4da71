// engine/fileio: .xz reading, atomic writes that leave nothing behind on failure, input expansion.
#include "engine/fileio.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

#include "engine/check.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace {

class FileIoTest : public strata::test::TempDirTest {
 protected:
  std::vector<std::string> listing() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }
};

std::string random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng() & 0xFF);
  return s;
}

TEST_F(FileIoTest, AtomicWriteRoundTrip) {
  const std::string data = random_bytes(100'003, 1);
  strata::write_file_atomic(path("a.bin"), data);
  EXPECT_EQ(strata::read_file(path("a.bin")), data);
  EXPECT_EQ(listing(), std::vector<std::string>{"a.bin"});  // no temporary left
}

TEST_F(FileIoTest, UncommittedWriterLeavesNothing) {
  strata::write_file_atomic(path("keep.bin"), "old content");
  {
    strata::AtomicFile f(path("keep.bin"));
    f.write("new content that must never appear");
    // destroyed without commit(), as when an exception unwinds
  }
  EXPECT_EQ(strata::read_file(path("keep.bin")), "old content");
  EXPECT_EQ(listing(), std::vector<std::string>{"keep.bin"});
}

TEST_F(FileIoTest, ReadsXzTransparently) {
  const std::string text = "State of the Union\n" + random_bytes(5000, 2);
  { std::ofstream(path("t.bin"), std::ios::binary) << text; }
  ASSERT_EQ(std::system(("xz -kq " + path("t.bin")).c_str()), 0);
  EXPECT_EQ(strata::read_file(path("t.bin.xz")), text);
}

TEST_F(FileIoTest, XzPathIsWrittenCompressedAndReadBack) {
  const std::string text = std::string(20000, 'a') + random_bytes(3000, 3);
  strata::write_file_atomic(path("w.bin.xz"), text);
  std::ifstream raw(path("w.bin.xz"), std::ios::binary);
  std::string magic(6, '\0');
  raw.read(magic.data(), 6);
  EXPECT_EQ(magic, std::string("\xFD"
                               "7zXZ\0",
                               6));  // the xz stream header, so not stored raw
  EXPECT_EQ(strata::read_file(path("w.bin.xz")), text);
}

TEST_F(FileIoTest, CorruptXzIsOneLineErrorNamingTheFile) {
  {
    std::ofstream(path("bad.xz"), std::ios::binary) << "\xFD"
                                                       "7zXZ this is not xz";
  }
  try {
    strata::read_file(path("bad.xz"));
    FAIL() << "no error";
  } catch (const strata::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("bad.xz"), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

TEST_F(FileIoTest, MissingFileNamesIt) {
  try {
    strata::read_file(path("nope.txt"));
    FAIL() << "no error";
  } catch (const strata::Error& e) {
    EXPECT_NE(std::string(e.what()).find("nope.txt"), std::string::npos) << e.what();
  }
}

TEST_F(FileIoTest, ExpandInputsSortsGlobsAndDirectories) {
  for (const char* n : {"b.txt", "a.txt", "c.md"}) strata::write_file_atomic(path(n), n);
  const auto g = strata::expand_inputs({path("*.txt")});
  EXPECT_EQ(g, (std::vector<std::string>{path("a.txt"), path("b.txt")}));
  const auto d = strata::expand_inputs({dir_.string(), path("a.txt")});  // duplicates removed
  EXPECT_EQ(d, (std::vector<std::string>{path("a.txt"), path("b.txt"), path("c.md")}));
  EXPECT_THROW(strata::expand_inputs({path("*.none")}), strata::Error);
}

}  // namespace
