// engine/fileio.h: file helpers shared by every subsystem that reads user files or writes results.
//
// - read_file: whole file into memory; files ending in ".xz" are decompressed (liblzma) transparently.
// - AtomicFile: writes go to a temporary file beside the target; commit() flushes, fsyncs and renames it into
//   place. A writer destroyed without commit() (an exception, a failed check) removes its temporary, so a
//   failure never leaves a half-written file under the final name.
// - expand_inputs: files, directories and glob patterns -> a sorted, de-duplicated list of regular files.
// All failures are strata::Error with a one-line message naming the file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace strata {

std::string read_file(const std::string& path);
bool file_exists(const std::string& path);

class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t bytes);
  void write(std::string_view s) { write(s.data(), s.size()); }
  // Flushes, fsyncs and renames the temporary over the target. No writes are allowed afterwards.
  void commit();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::string tmp_path_;
  int fd_ = -1;
  bool committed_ = false;
};

// Writes the whole of `content` to `path` atomically; a path ending in ".xz" is written xz-compressed, so
// read_file() reads it back transparently.
void write_file_atomic(const std::string& path, std::string_view content);

// A read-only mapping of a whole file (an empty file has no mapping: data() is null). Movable.
class MappedFile {
 public:
  MappedFile() = default;
  // Errors (one line, starting with `what`, default "'<path>': "): missing, not a regular file, cannot be
  // mapped.
  explicit MappedFile(const std::string& path, const std::string& what = "");
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void release();
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Each pattern may be a file, a directory (its regular files, non-recursive) or a glob ("data/*.txt").
// A pattern that matches nothing is an error naming it.
std::vector<std::string> expand_inputs(const std::vector<std::string>& patterns);

}  // namespace strata
