// engine/safetensors: round trips of every dtype family and edge shape, one-line errors for every malformed
// file, and interoperability with an independent json + numpy implementation (safetensors_roundtrip.py).
#include "engine/safetensors.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <tuple>

#include "engine/check.h"
#include "engine/fileio.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using strata::DType;
using strata::test::expect_one_line_error;

namespace {

struct RefTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

template <typename T>
std::vector<uint8_t> bytes_of(const std::vector<T>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(T));
  if (!b.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// 3i - 7 for i < n: the same reference set as safetensors_roundtrip.py's reference().
template <typename T>
std::vector<T> base(int n, double scale) {
  std::vector<T> v;
  for (int i = 0; i < n; ++i) v.push_back(static_cast<T>((3 * i - 7) * scale));
  return v;
}

std::vector<RefTensor> reference() {
  std::vector<uint8_t> u8;
  for (int i = 0; i < 7; ++i) u8.push_back(static_cast<uint8_t>((i * 37) % 256));
  // -3.5, -2, -0.5, 1 as IEEE half and as bfloat16 bit patterns.
  const std::vector<uint16_t> f16 = {0xC300, 0xC000, 0xB800, 0x3C00};
  const std::vector<uint16_t> bf16 = {0xC060, 0xC000, 0xBF00, 0x3F80};
  return {
      {"f32_matrix", DType::kF32, {2, 3}, bytes_of(base<float>(6, 0.25))},
      {"f64_vec", DType::kF64, {5}, bytes_of(base<double>(5, 0.125))},
      {"f16_vec", DType::kF16, {4}, bytes_of(f16)},
      {"bf16_mat", DType::kBF16, {2, 2}, bytes_of(bf16)},
      {"i64_vec", DType::kI64, {3}, bytes_of(base<int64_t>(3, static_cast<double>(int64_t{1} << 40)))},
      {"i32_cube", DType::kI32, {2, 2, 2}, bytes_of(base<int32_t>(8, 1.0))},
      {"u8_vec", DType::kU8, {7}, u8},
      {"scalar", DType::kF32, {}, bytes_of(std::vector<float>{3.5f})},
      {"empty", DType::kF32, {0, 4}, {}},
  };
}

const strata::SafetensorsMetadata kMetadata = {{"producer", "strata-test"},
                                               {"note", "h\xC3\xA9llo \xE2\x9C\x93"}};

strata::WrittenFile write_reference(const std::string& path) {
  std::vector<RefTensor> ref = reference();
  std::vector<strata::TensorView> views;
  for (const RefTensor& t : ref) views.push_back({t.name, t.dtype, t.shape, t.bytes.data()});
  return strata::write_safetensors(path, views, kMetadata);
}

void expect_reference(const strata::SafetensorsFile& f) {
  const std::vector<RefTensor> ref = reference();
  ASSERT_EQ(f.tensors().size(), ref.size());
  for (const RefTensor& r : ref) {
    SCOPED_TRACE(r.name);
    const strata::SafeTensor* t = f.find(r.name);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->dtype, r.dtype);
    EXPECT_EQ(t->shape, r.shape);
    ASSERT_EQ(t->bytes, r.bytes.size());
    EXPECT_EQ(std::vector<uint8_t>(t->data, t->data + t->bytes), r.bytes);
  }
  EXPECT_EQ(f.metadata(), kMetadata);
}

std::string read_bytes(const std::string& path) {
  return strata::read_file(path);
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A file with this header text (unpadded), `data_bytes` bytes of data, and the true header length unless
// `length` overrides it.
std::string raw_file(const std::string& header, size_t data_bytes, std::optional<uint64_t> length = {}) {
  const uint64_t n = length.value_or(header.size());
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return s + header + std::string(data_bytes, '\x5A');
}

class SafetensorsTest : public strata::test::TempDirTest {
 protected:
  // Writes `bytes` to a file and expects opening it to fail with one line naming the file and `problem`.
  void expect_bad(const std::string& bytes, const std::string& problem) {
    const std::string p = path("bad.safetensors");
    write_bytes(p, bytes);
    expect_one_line_error([&] { strata::SafetensorsFile::open(p); }, {p, problem});
  }
};

TEST(DTypeTest, NamesAndSizes) {
  for (auto [d, name, size] :
       std::vector<std::tuple<DType, std::string, size_t>>{{DType::kF64, "F64", 8},
                                                           {DType::kF32, "F32", 4},
                                                           {DType::kF16, "F16", 2},
                                                           {DType::kBF16, "BF16", 2},
                                                           {DType::kI64, "I64", 8},
                                                           {DType::kI32, "I32", 4},
                                                           {DType::kI16, "I16", 2},
                                                           {DType::kI8, "I8", 1},
                                                           {DType::kU64, "U64", 8},
                                                           {DType::kU32, "U32", 4},
                                                           {DType::kU16, "U16", 2},
                                                           {DType::kU8, "U8", 1},
                                                           {DType::kBool, "BOOL", 1}}) {
    EXPECT_EQ(strata::dtype_name(d), name);
    EXPECT_EQ(strata::dtype_size(d), size);
    EXPECT_EQ(strata::dtype_from_name(name), d);
  }
  EXPECT_FALSE(strata::dtype_from_name("F8_E4M3").has_value());
  EXPECT_FALSE(strata::dtype_from_name("f32").has_value());
}

TEST_F(SafetensorsTest, RoundTripEveryDTypeAndEdgeShape) {
  const std::string p = path("ref.safetensors");
  const strata::WrittenFile w = write_reference(p);
  const std::string raw = read_bytes(p);
  EXPECT_EQ(w.bytes, raw.size());
  EXPECT_NE(w.crc64, 0u);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<uint8_t>(raw[i])) << (8 * i);
  EXPECT_EQ(n % 8, 0u) << "header not padded to a multiple of 8";
  EXPECT_EQ(raw[8], '{');

  strata::SafetensorsFile f = strata::SafetensorsFile::open(p);
  expect_reference(f);
  EXPECT_EQ(f.path(), p);
  // Data order is write order.
  std::vector<std::string> names;
  for (const RefTensor& r : reference()) names.push_back(r.name);
  EXPECT_EQ(f.names(), names);

  const strata::SafeTensor& scalar = f.get("scalar");
  EXPECT_EQ(scalar.numel(), 1);
  EXPECT_EQ(f.to_f32("scalar"), std::vector<float>{3.5f});  // unaligned in the file: copied, not cast
  EXPECT_EQ(f.get("empty").numel(), 0);
  EXPECT_EQ(f.get("empty").bytes, 0u);
  EXPECT_TRUE(f.to_f32("empty").empty());
  EXPECT_EQ(f.to_f32("f32_matrix"), base<float>(6, 0.25));
  EXPECT_EQ(f.to_f32("f64_vec"), base<float>(5, 0.125));
  const std::vector<float> halves = {-3.5f, -2.0f, -0.5f, 1.0f};
  EXPECT_EQ(f.to_f32("f16_vec"), halves);
  EXPECT_EQ(f.to_f32("bf16_mat"), halves);

  // The same bytes through view().
  const auto v =
      strata::SafetensorsFile::view("in-memory", reinterpret_cast<const uint8_t*>(raw.data()), raw.size());
  expect_reference(v);

  // Moving keeps the mapping valid.
  strata::SafetensorsFile moved = std::move(f);
  expect_reference(moved);
}

TEST_F(SafetensorsTest, EmptyFileAndNoMetadata) {
  const std::string p = path("none.safetensors");
  strata::write_safetensors(p, {});
  const auto f = strata::SafetensorsFile::open(p);
  EXPECT_TRUE(f.tensors().empty());
  EXPECT_TRUE(f.metadata().empty());
  EXPECT_EQ(read_bytes(p).substr(8), "{}      ");
}

TEST_F(SafetensorsTest, HalfPrecisionSpecialValues) {
  // Subnormal, largest finite, infinity, negative zero.
  const std::vector<uint16_t> h = {0x0001, 0x7BFF, 0x7C00, 0x8000};
  const std::string p = path("half.safetensors");
  strata::write_safetensors(p, {{"h", DType::kF16, {4}, h.data()}});
  const std::vector<float> f = strata::SafetensorsFile::open(p).to_f32("h");
  EXPECT_EQ(f[0], 0x1p-24f);
  EXPECT_EQ(f[1], 65504.0f);
  EXPECT_TRUE(std::isinf(f[2]) && f[2] > 0);
  EXPECT_TRUE(f[3] == 0.0f && std::signbit(f[3]));
}

TEST_F(SafetensorsTest, ReaderApiErrors) {
  const std::string p = path("ref.safetensors");
  write_reference(p);
  const auto f = strata::SafetensorsFile::open(p);
  EXPECT_EQ(f.find("nope"), nullptr);
  expect_one_line_error([&] { f.get("nope"); }, {p, "no tensor 'nope'"});
  expect_one_line_error([&] { f.to_f32("i32_cube"); }, {p, "i32_cube", "I32"});
  std::vector<float> out(5);
  expect_one_line_error([&] { f.to_f32(f.get("f32_matrix"), out.data(), out.size()); },
                        {p, "f32_matrix", "6"});
  expect_one_line_error([&] { strata::SafetensorsFile::open(path("missing.safetensors")); },
                        {path("missing.safetensors"), "cannot open"});
  expect_one_line_error([&] { strata::SafetensorsFile::open(dir_.string()); },
                        {dir_.string(), "not a regular file"});
}

TEST_F(SafetensorsTest, WriterErrorsLeaveNoFile) {
  const float x[2] = {1.0f, 2.0f};
  const std::string p = path("w.safetensors");
  const auto bad = [&](std::vector<strata::TensorView> views, const std::string& problem) {
    expect_one_line_error([&] { strata::write_safetensors(p, views); }, {p, problem});
    EXPECT_TRUE(fs::is_empty(dir_)) << "a failed write left a file";
  };
  bad({{"a", DType::kF32, {2}, x}, {"a", DType::kF32, {2}, x}}, "duplicate tensor name 'a'");
  bad({{"", DType::kF32, {2}, x}}, "empty name");
  bad({{"__metadata__", DType::kF32, {2}, x}}, "reserved");
  bad({{"a", DType::kF32, {-2}, x}}, "bad shape [-2]");
  bad({{"a", DType::kF32, {int64_t{1} << 62, 8}, x}}, "overflow");
  bad({{"a", DType::kF32, {2}, nullptr}}, "no data");
  bad({{"a\xFF", DType::kF32, {2}, x}}, "cannot encode");
  // A zero-size tensor may have no data.
  strata::write_safetensors(p, {{"a", DType::kF32, {0}, nullptr}});
  EXPECT_EQ(strata::SafetensorsFile::open(p).get("a").bytes, 0u);
}

TEST_F(SafetensorsTest, MalformedFilesAreOneLineErrors) {
  const std::string f32_23 = R"("t": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]})";
  // Sanity: the valid base case opens.
  write_bytes(path("ok.safetensors"), raw_file("{" + f32_23 + "}", 24));
  EXPECT_EQ(strata::SafetensorsFile::open(path("ok.safetensors")).get("t").numel(), 6);

  expect_bad("", "truncated: 0 bytes");
  expect_bad(std::string("\x10\x00\x00", 3), "truncated: 3 bytes");
  expect_bad(raw_file("{}", 0, 1000), "header length 1000 exceeds");
  expect_bad(raw_file("{}", 0, uint64_t{1} << 63), "header length");
  expect_bad(raw_file("", 0), "not a JSON object");
  expect_bad(raw_file("[1, 2]", 0), "not a JSON object");
  expect_bad(raw_file("{\"t\": \n{\"dtype\": \n", 0), "not valid JSON");
  expect_bad(raw_file("{\"t\": 5}", 0), "tensor 't': entry is not an object");
  expect_bad(raw_file(R"({"t": {"shape": [2], "data_offsets": [0, 8]}})", 8), "missing field 'dtype'");
  expect_bad(raw_file(R"({"t": {"dtype": "F32", "data_offsets": [0, 8]}})", 8), "missing field 'shape'");
  expect_bad(raw_file(R"({"t": {"dtype": "F32", "shape": [2]}})", 8), "missing field 'data_offsets'");
  expect_bad(raw_file(R"({"t": {"dtype": 4, "shape": [2], "data_offsets": [0, 8]}})", 8),
             "'dtype' is not a string");
  expect_bad(raw_file(R"({"t": {"dtype": "F9", "shape": [2], "data_offsets": [0, 8]}})", 8),
             "unknown dtype 'F9'");
  expect_bad(raw_file(R"({"t": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}})", 8),
             "'shape' is not an array");
  expect_bad(raw_file(R"({"t": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", 8),
             "non-negative integers");
  expect_bad(raw_file(R"({"t": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}})", 8),
             "non-negative integers");
  expect_bad(raw_file(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0]}})", 8), "'data_offsets'");
  expect_bad(raw_file(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, "8"]}})", 8),
             "'data_offsets'");
  expect_bad(raw_file(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", 8), "end before");
  expect_bad(raw_file(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 800]}})", 8),
             "run past the data section of 8 bytes");
  expect_bad(raw_file(R"({"t": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 12]}})", 12),
             "tensor 't': data_offsets [0, 12) hold 12 bytes, but shape [2, 3] of F32 needs 24");
  expect_bad(
      raw_file(R"({"t": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 8]}})", 8),
      "overflows");
  expect_bad(raw_file(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                          "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})",
                      24),
             "overlaps tensor 'a'");
  expect_bad(raw_file(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                          "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}})",
                      24),
             "hole in the data section: bytes [8, 16)");
  expect_bad(raw_file("{" + f32_23 + "}", 30), "data section has 30 bytes but the tensors end at 24");
  expect_bad(raw_file(R"({"__metadata__": {"k": 1}})", 0), "'__metadata__' value of 'k' is not a string");
  expect_bad(raw_file(R"({"__metadata__": [1]})", 0), "'__metadata__' must be an object");

  // A valid file cut short by one byte.
  const std::string p = path("ref.safetensors");
  write_reference(p);
  const std::string whole = read_bytes(p);
  expect_bad(whole.substr(0, whole.size() - 1), "run past the data section");
  expect_bad(whole.substr(0, 20), "header length");
}

// ---- interoperability with an independent json + numpy implementation
// ----------------------------------------

class SafetensorsPythonTest : public SafetensorsTest {
 protected:
  void SetUp() override {
    SafetensorsTest::SetUp();
    // Debian's interpreter, where python3-numpy is installed (a `python3` earlier on PATH may lack it).
    if (std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") != 0)
      GTEST_SKIP() << "/usr/bin/python3 cannot import numpy (apt-get install python3-numpy)";
  }
  // Runs the helper; returns its exit status, output in *out.
  int helper(const std::string& mode, const std::string& file, std::string* out) {
    const std::string cmd = std::string("/usr/bin/python3 ") + STRATA_SOURCE_DIR +
                            "/tests/engine/safetensors_roundtrip.py " + mode + " '" + file + "' 2>&1";
    FILE* p = ::popen(cmd.c_str(), "r");
    if (p == nullptr) return -1;
    char buf[4096];
    size_t n;
    out->clear();
    while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out->append(buf, n);
    const int status = ::pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
};

TEST_F(SafetensorsPythonTest, PythonReadsOurFile) {
  const std::string p = path("from_cpp.safetensors");
  write_reference(p);
  std::string out;
  EXPECT_EQ(helper("check", p, &out), 0) << out;
}

TEST_F(SafetensorsPythonTest, WeReadPythonsFile) {
  const std::string p = path("from_py.safetensors");
  std::string out;
  ASSERT_EQ(helper("write", p, &out), 0) << out;
  expect_reference(strata::SafetensorsFile::open(p));
}

TEST_F(SafetensorsPythonTest, PythonRejectsATamperedFile) {
  // The check must be able to fail: one value changed is caught.
  const std::string p = path("tampered.safetensors");
  write_reference(p);
  std::string bytes = read_bytes(p);
  bytes[bytes.size() - 1] ^= 1;  // "empty", the last tensor, has no bytes: this is scalar's last byte
  write_bytes(p, bytes);
  std::string out;
  EXPECT_EQ(helper("check", p, &out), 1) << out;
  EXPECT_NE(out.find("scalar"), std::string::npos) << out;
}

}  // namespace
