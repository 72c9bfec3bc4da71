// libFuzzer target for the safetensors reader (engine/safetensors.h), the code every checkpoint load runs. The
// bytes are a file's contents, through SafetensorsFile::view (the validation SafetensorsFile::open runs on a
// mapped file). A rejection must be a strata::Error with a one-line message naming the file; an accepted file
// must describe tensors that lie inside it with sizes matching their shapes, and every float tensor must
// convert. Random bytes rarely start with a plausible header length, so each input is also tried as the JSON
// header of a file whose data section is zero bytes of a size taken from the input's first byte.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine/check.h"
#include "engine/safetensors.h"

namespace {

void check_one(const uint8_t* data, size_t size) {
  using strata::SafetensorsFile;
  try {
    const SafetensorsFile f = SafetensorsFile::view("fuzz.safetensors", data, size);
    for (const strata::SafeTensor& t : f.tensors()) {
      if (t.data < data || t.data + t.bytes > data + size) std::abort();
      if (static_cast<size_t>(t.numel()) * strata::dtype_size(t.dtype) != t.bytes) std::abort();
      if (t.dtype == strata::DType::kF32 || t.dtype == strata::DType::kF16 || t.dtype == strata::DType::kBF16 ||
          t.dtype == strata::DType::kF64) {
        std::vector<float> out(static_cast<size_t>(t.numel()));
        f.to_f32(t, out.data(), out.size());
      }
    }
  } catch (const strata::Error& e) {
    const std::string msg = e.what();
    if (msg.rfind("safetensors 'fuzz.safetensors': ", 0) != 0 || msg.find('\n') != std::string::npos) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  check_one(data, size);
  if (size < 1) return 0;
  const size_t header = size - 1, body = data[0];
  std::vector<uint8_t> buf(8 + header + body, 0);
  const uint64_t n = header;
  std::memcpy(buf.data(), &n, 8);  // little-endian host (the format's byte order)
  std::memcpy(buf.data() + 8, data + 1, header);
  check_one(buf.data(), buf.size());
  return 0;
}
