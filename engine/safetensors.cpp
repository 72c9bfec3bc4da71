#include "engine/safetensors.h"

#include <fcntl.h>
#include <lzma.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

#include "engine/check.h"
#include "engine/fileio.h"

namespace strata {
namespace {

// The official implementation refuses headers above 100 MB; so do we (a corrupt length must not make us
// parse gigabytes).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DTypeInfo {
  DType dtype;
  const char* name;
  size_t size;
};
constexpr std::array<DTypeInfo, 13> kDTypes = {{
    {DType::kF64, "F64", 8},
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
    {DType::kBool, "BOOL", 1},
}};

const DTypeInfo& info(DType d) {
  for (const DTypeInfo& i : kDTypes)
    if (i.dtype == d) return i;
  STRATA_CHECK(false, "unknown DType ", static_cast<int>(d));
  return kDTypes[0];
}

std::string where(std::string_view path) {
  return cat("safetensors '", path, "': ");
}

// nlohmann's messages may quote the offending input, which can hold newlines: keep the error one line.
std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  if (s.size() > 300) s = s.substr(0, 300) + "...";
  return s;
}

// numel(shape) * elem_size, or nullopt on a negative dimension or an overflow.
std::optional<uint64_t> byte_size(const std::vector<int64_t>& shape, size_t elem_size) {
  uint64_t n = elem_size;
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return std::nullopt;
  }
  return n;
}

// Streams bytes into an AtomicFile while keeping the running size and CRC-64.
class CrcWriter {
 public:
  explicit CrcWriter(const std::string& path) : file_(path) {}
  void write(const void* data, size_t bytes) {
    if (bytes == 0) return;
    file_.write(data, bytes);
    out_.crc64 = lzma_crc64(static_cast<const uint8_t*>(data), bytes, out_.crc64);
    out_.bytes += bytes;
  }
  WrittenFile commit() {
    file_.commit();
    return out_;
  }

 private:
  AtomicFile file_;
  WrittenFile out_;
};

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t mant = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: mant * 2^-24, exact in float
      const float f = static_cast<float>(mant) * 0x1p-24f;
      return sign ? -f : f;
    }
  } else if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  }
  return std::bit_cast<float>(bits);
}

}  // namespace

size_t dtype_size(DType d) {
  return info(d).size;
}

const char* dtype_name(DType d) {
  return info(d).name;
}

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const DTypeInfo& i : kDTypes)
    if (name == i.name) return i.dtype;
  return std::nullopt;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

int64_t SafeTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---- writer
// --------------------------------------------------------------------------------------------------

WrittenFile write_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                              const SafetensorsMetadata& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  std::vector<uint64_t> sizes;
  sizes.reserve(tensors.size());
  uint64_t offset = 0;
  for (const TensorView& t : tensors) {
    STRATA_REQUIRE(!t.name.empty(), where(path), "a tensor has an empty name");
    STRATA_REQUIRE(t.name != "__metadata__", where(path), "'__metadata__' is reserved, not a tensor name");
    STRATA_REQUIRE(!header.contains(t.name), where(path), "duplicate tensor name '", t.name, "'");
    const std::optional<uint64_t> bytes = byte_size(t.shape, dtype_size(t.dtype));
    STRATA_REQUIRE(bytes.has_value(), where(path), "tensor '", t.name, "': bad shape ", shape_string(t.shape),
                   " (negative dimension or size overflow)");
    STRATA_REQUIRE(t.data != nullptr || *bytes == 0, where(path), "tensor '", t.name, "': no data");
    header[t.name] = {
        {"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + *bytes}}};
    offset += *bytes;
    sizes.push_back(*bytes);
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {  // e.g. a name that is not UTF-8
    STRATA_FAIL(where(path), "cannot encode the header: ", one_line(e.what()));
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t n = text.size();
  std::array<uint8_t, 8> len{};
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));

  CrcWriter out(path);
  out.write(len.data(), len.size());
  out.write(text.data(), text.size());
  for (size_t i = 0; i < tensors.size(); ++i) out.write(tensors[i].data, sizes[i]);
  return out.commit();
}

// ---- reader
// --------------------------------------------------------------------------------------------------

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  return from_mapping(MappedFile(path, where(path)));
}

SafetensorsFile SafetensorsFile::from_mapping(MappedFile file) {
  SafetensorsFile f;
  f.path_ = file.path();
  f.file_ = std::move(file);
  f.parse(f.file_.data(), f.file_.size());
  return f;
}

SafetensorsFile SafetensorsFile::view(std::string name, const uint8_t* data, size_t size) {
  SafetensorsFile f;
  f.path_ = std::move(name);
  f.parse(data, size);
  return f;
}

void SafetensorsFile::parse(const uint8_t* data, size_t size) {
  const std::string w = where(path_);
  STRATA_REQUIRE(size >= 8, w, "truncated: ", size, " bytes, shorter than the 8-byte header length");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(data[i]) << (8 * i);
  STRATA_REQUIRE(n <= size - 8, w, "header length ", n, " exceeds the ", size - 8,
                 " bytes after the length field (truncated or not a safetensors file)");
  STRATA_REQUIRE(n <= kMaxHeaderBytes, w, "header length ", n, " exceeds the limit of ", kMaxHeaderBytes,
                 " bytes");
  STRATA_REQUIRE(n >= 2 && data[8] == '{', w, "header is not a JSON object (it must start with '{')");

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(data + 8, data + 8 + n);
  } catch (const nlohmann::json::exception& e) {
    STRATA_FAIL(w, "header is not valid JSON: ", one_line(e.what()));
  }
  STRATA_REQUIRE(header.is_object(), w, "header is not a JSON object");

  const uint8_t* base = data + 8 + n;
  const uint64_t data_bytes = size - 8 - n;
  struct Span {
    uint64_t begin, end;
    size_t index;
  };
  std::vector<Span> spans;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      STRATA_REQUIRE(entry.is_object(), w, "'__metadata__' must be an object of strings");
      for (const auto& [k, v] : entry.items()) {
        STRATA_REQUIRE(v.is_string(), w, "'__metadata__' value of '", k, "' is not a string");
        metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string t = cat(w, "tensor '", name, "': ");
    STRATA_REQUIRE(entry.is_object(), t, "entry is not an object");
    STRATA_REQUIRE(entry.contains("dtype"), t, "missing field 'dtype'");
    STRATA_REQUIRE(entry.contains("shape"), t, "missing field 'shape'");
    STRATA_REQUIRE(entry.contains("data_offsets"), t, "missing field 'data_offsets'");
    const auto& jd = entry["dtype"];
    STRATA_REQUIRE(jd.is_string(), t, "field 'dtype' is not a string");
    const std::optional<DType> dt = dtype_from_name(jd.get<std::string>());
    STRATA_REQUIRE(dt.has_value(), t, "unknown dtype '", one_line(jd.get<std::string>()), "'");
    const auto& js = entry["shape"];
    STRATA_REQUIRE(js.is_array(), t, "field 'shape' is not an array");
    SafeTensor st;
    st.name = name;
    st.dtype = *dt;
    for (const auto& d : js) {
      STRATA_REQUIRE(d.is_number_unsigned() && d.get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX), t,
                     "field 'shape' must hold non-negative integers (got ", one_line(d.dump()), ")");
      st.shape.push_back(static_cast<int64_t>(d.get<uint64_t>()));
    }
    const auto& jo = entry["data_offsets"];
    STRATA_REQUIRE(
        jo.is_array() && jo.size() == 2 && jo[0].is_number_unsigned() && jo[1].is_number_unsigned(), t,
        "field 'data_offsets' must be two non-negative integers [begin, end] (got ", one_line(jo.dump()),
        ")");
    const uint64_t b = jo[0].get<uint64_t>(), e = jo[1].get<uint64_t>();
    STRATA_REQUIRE(b <= e, t, "data_offsets [", b, ", ", e, ") end before they begin");
    STRATA_REQUIRE(e <= data_bytes, t, "data_offsets [", b, ", ", e, ") run past the data section of ",
                   data_bytes, " bytes (truncated file?)");
    const std::optional<uint64_t> need = byte_size(st.shape, dtype_size(st.dtype));
    STRATA_REQUIRE(need.has_value(), t, "shape ", shape_string(st.shape), " overflows");
    STRATA_REQUIRE(e - b == *need, t, "data_offsets [", b, ", ", e, ") hold ", e - b, " bytes, but shape ",
                   shape_string(st.shape), " of ", dtype_name(st.dtype), " needs ", *need);
    st.data = base + b;
    st.bytes = static_cast<size_t>(*need);
    spans.push_back({b, e, tensors_.size()});
    tensors_.push_back(std::move(st));
  }

  // The tensors must tile the data section exactly: sorted by offset, each starts where the previous ended.
  std::sort(spans.begin(), spans.end(),
            [](const Span& a, const Span& b) { return std::tie(a.begin, a.end) < std::tie(b.begin, b.end); });
  uint64_t pos = 0;
  const std::string* prev = nullptr;
  for (const Span& s : spans) {
    const std::string& nm = tensors_[s.index].name;
    STRATA_REQUIRE(s.begin >= pos, w, "tensor '", nm, "' at [", s.begin, ", ", s.end, ") overlaps tensor '",
                   prev ? *prev : "", "' ending at ", pos);
    STRATA_REQUIRE(s.begin == pos, w, "hole in the data section: bytes [", pos, ", ", s.begin,
                   ") belong to no tensor (before tensor '", nm, "')");
    pos = s.end;
    prev = &nm;
  }
  STRATA_REQUIRE(pos == data_bytes, w, "data section has ", data_bytes, " bytes but the tensors end at ", pos,
                 data_bytes > pos ? " (trailing bytes)" : "");

  std::vector<SafeTensor> ordered;
  ordered.reserve(tensors_.size());
  for (const Span& s : spans) ordered.push_back(std::move(tensors_[s.index]));
  tensors_ = std::move(ordered);
  for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const SafeTensor& t : tensors_) out.push_back(t.name);
  return out;
}

const SafeTensor* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const SafeTensor& SafetensorsFile::get(const std::string& name) const {
  const SafeTensor* t = find(name);
  STRATA_REQUIRE(t != nullptr, where(path_), "no tensor '", name, "'");
  return *t;
}

void SafetensorsFile::to_f32(const SafeTensor& t, float* out, size_t count) const {
  STRATA_REQUIRE(count == static_cast<size_t>(t.numel()), where(path_), "tensor '", t.name, "' has ",
                 t.numel(), " elements, expected ", count);
  const uint8_t* p = t.data;
  switch (t.dtype) {
    case DType::kF32:
      if (count > 0) std::memcpy(out, p, count * 4);  // tensors need not be aligned: copy bytes
      return;
    case DType::kF64:
      for (size_t i = 0; i < count; ++i) {
        double d;
        std::memcpy(&d, p + 8 * i, 8);
        out[i] = static_cast<float>(d);
      }
      return;
    case DType::kBF16:
    case DType::kF16:
      for (size_t i = 0; i < count; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] =
            t.dtype == DType::kBF16 ? std::bit_cast<float>(static_cast<uint32_t>(h) << 16) : half_to_float(h);
      }
      return;
    default:
      STRATA_FAIL(where(path_), "tensor '", t.name, "' is ", dtype_name(t.dtype),
                  ", not a floating-point dtype");
  }
}

std::vector<float> SafetensorsFile::to_f32(const std::string& name) const {
  const SafeTensor& t = get(name);
  std::vector<float> out(static_cast<size_t>(t.numel()));
  to_f32(t, out.data(), out.size());
  return out;
}

}  // namespace strata
