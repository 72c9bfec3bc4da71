// engine/safetensors.h: the safetensors file format (Hugging Face's), read and written without the Python
// package, so weights move between Strata and PyTorch with nothing but json + numpy on the other side.
//
// Layout of a file (all integers little-endian):
//
//   | bytes              | content                                                                      |
//   |--------------------|------------------------------------------------------------------------------|
//   | [0, 8)             | uint64 N: the header length                                                  |
//   | [8, 8 + N)         | UTF-8 JSON object, padded with spaces (Strata pads N to a multiple of 8):    |
//   |                    |   {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [b, e]}, ... |
//   |                    |    "__metadata__": {"<key>": "<string value>", ...}}   (metadata optional)    |
//   | [8 + N, end)       | the data section; tensor bytes [b, e) relative to its start, row-major       |
//
// The reader validates everything before handing out a byte: a file shorter than 8 bytes, a header length
// beyond the file, a header that is not a JSON object, a missing or mistyped field, an unknown dtype, offsets
// that are out of range, overlap, leave a hole, or do not match shape x dtype size, and a data section whose
// size is not the end of the last tensor. Each is a strata::Error with one line naming the file, e.g.
//   safetensors 'ckpt/model.safetensors': tensor 'lm_head': data_offsets [0, 12) hold 12 bytes, but shape
//   [2, 3] of F32 needs 24
// The writer packs the tensors in the order given, so with 8-byte-multiple headers every tensor of a file of
// one dtype is aligned to that dtype (the reader does not rely on alignment: to_f32 copies).
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/fileio.h"

namespace strata {

static_assert(std::endian::native == std::endian::little,
              "the safetensors reader and writer assume a little-endian host");

enum class DType : uint8_t { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU64, kU32, kU16, kU8, kBool };

// Bytes per element (BOOL: 1).
size_t dtype_size(DType d);
// The safetensors spelling: "F32", "BF16", "I64", "BOOL", ...
const char* dtype_name(DType d);
// The dtype spelled `name`, or nullopt for an unknown spelling.
std::optional<DType> dtype_from_name(std::string_view name);

using SafetensorsMetadata = std::map<std::string, std::string>;

// One tensor to write: `data` points at numel(shape) * dtype_size(dtype) bytes (may be null when that is 0).
// An empty shape is a scalar (one element).
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
};

// What was written: the file size and the CRC-64 (liblzma's lzma_crc64, ECMA-182) of all of its bytes,
// computed while streaming, so a checkpoint can record it without reading the file back.
struct WrittenFile {
  uint64_t bytes = 0;
  uint64_t crc64 = 0;
};

// Writes `tensors` (packed in this order) and `metadata` to `path` atomically (engine/fileio.h AtomicFile:
// nothing is left under `path` on failure; the file is fsynced before the rename). Tensor data is streamed,
// never copied into one buffer. Errors (one line naming the file): an empty, duplicate or reserved
// ("__metadata__") name, a negative dimension, a size that overflows, null data for a non-empty tensor, I/O.
WrittenFile write_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                              const SafetensorsMetadata& metadata = {});

// One tensor of a validated file: its bytes lie in the file's data section.
struct SafeTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // empty: a scalar
  const uint8_t* data = nullptr;
  size_t bytes = 0;  // numel() * dtype_size(dtype)
  int64_t numel() const;
};

// "[2, 3]" ("[]" for a scalar): shapes in error messages.
std::string shape_string(const std::vector<int64_t>& shape);

// A validated safetensors file (mmap'd; nothing is read beyond the header until a tensor is used). Movable.
class SafetensorsFile {
 public:
  // Maps and validates `path` (see the top of this file).
  static SafetensorsFile open(const std::string& path);
  // Validates an already-mapped file, taking ownership (used by the checkpoint reader, which checksums the
  // mapping before parsing it).
  static SafetensorsFile from_mapping(MappedFile file);
  // Validates bytes the caller keeps alive for the object's lifetime (no copy); `name` is used in messages.
  static SafetensorsFile view(std::string name, const uint8_t* data, size_t size);

  const std::string& path() const { return path_; }
  // Tensors in data order (by offset).
  const std::vector<SafeTensor>& tensors() const { return tensors_; }
  std::vector<std::string> names() const;
  const SafetensorsMetadata& metadata() const { return metadata_; }
  // The tensor called `name`, or null.
  const SafeTensor* find(const std::string& name) const;
  // The tensor called `name`; an error naming the file and the tensor when absent.
  const SafeTensor& get(const std::string& name) const;
  // Copies the tensor into `out` (count elements, which must equal its numel), converting F64/F16/BF16 to
  // F32; integer dtypes are an error naming the file and the tensor.
  void to_f32(const SafeTensor& t, float* out, size_t count) const;
  std::vector<float> to_f32(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  void parse(const uint8_t* data, size_t size);

  std::string path_;
  MappedFile file_;
  std::vector<SafeTensor> tensors_;
  std::map<std::string, size_t> index_;  // name -> position in tensors_
  SafetensorsMetadata metadata_;
};

}  // namespace strata
