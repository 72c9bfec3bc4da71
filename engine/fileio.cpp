#include "engine/fileio.h"

#include <fcntl.h>
#include <glob.h>
#include <lzma.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "engine/check.h"

namespace strata {
namespace {

std::string read_raw(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  STRATA_REQUIRE(in, "cannot open '", path, "': ", std::strerror(errno));
  std::string data;
  in.seekg(0, std::ios::end);
  const std::streamoff n = in.tellg();
  STRATA_REQUIRE(n >= 0, "cannot read '", path, "': not a regular file");
  data.resize(static_cast<size_t>(n));
  in.seekg(0, std::ios::beg);
  in.read(data.data(), n);
  STRATA_REQUIRE(in.gcount() == n, "cannot read '", path, "': short read");
  return data;
}

std::string xz_decompress(const std::string& path, const std::string& compressed) {
  lzma_stream strm = LZMA_STREAM_INIT;
  lzma_ret ret = lzma_stream_decoder(&strm, UINT64_MAX, LZMA_CONCATENATED);
  STRATA_REQUIRE(ret == LZMA_OK, "cannot decompress '", path, "': liblzma init failed (",
                 static_cast<int>(ret), ")");
  std::string out;
  out.resize(std::max<size_t>(compressed.size() * 4, 1 << 16));
  strm.next_in = reinterpret_cast<const uint8_t*>(compressed.data());
  strm.avail_in = compressed.size();
  size_t produced = 0;
  for (;;) {
    if (produced == out.size()) out.resize(out.size() * 2);
    strm.next_out = reinterpret_cast<uint8_t*>(out.data()) + produced;
    strm.avail_out = out.size() - produced;
    ret = lzma_code(&strm, LZMA_FINISH);
    produced = out.size() - strm.avail_out;
    if (ret == LZMA_STREAM_END) break;
    if (ret != LZMA_OK && ret != LZMA_BUF_ERROR) {
      lzma_end(&strm);
      STRATA_FAIL("cannot decompress '", path, "': corrupt or truncated xz data (liblzma error ",
                  static_cast<int>(ret), ")");
    }
    if (ret == LZMA_BUF_ERROR && strm.avail_in == 0 && produced < out.size()) {
      lzma_end(&strm);
      STRATA_FAIL("cannot decompress '", path, "': truncated xz data");
    }
  }
  lzma_end(&strm);
  out.resize(produced);
  return out;
}

std::string xz_compress(const std::string& path, std::string_view data) {
  std::string out(lzma_stream_buffer_bound(data.size()), '\0');
  size_t written = 0;
  const lzma_ret ret =
      lzma_easy_buffer_encode(6, LZMA_CHECK_CRC64, nullptr, reinterpret_cast<const uint8_t*>(data.data()),
                              data.size(), reinterpret_cast<uint8_t*>(out.data()), &written, out.size());
  STRATA_REQUIRE(ret == LZMA_OK, "cannot write '", path, "': xz compression failed (liblzma error ",
                 static_cast<int>(ret), ")");
  out.resize(written);
  return out;
}

}  // namespace

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string read_file(const std::string& path) {
  std::string raw = read_raw(path);
  if (std::string_view(path).ends_with(".xz")) return xz_decompress(path, raw);
  return raw;
}

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  // The temporary lives in the target's directory so the final rename() stays on one filesystem (atomic).
  std::random_device rd;
  tmp_path_ = cat(path_, ".tmp.", ::getpid(), ".", rd() % 1000000);
  fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  STRATA_REQUIRE(fd_ >= 0, "cannot create '", path_, "': ", std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_path_.c_str());
}

void AtomicFile::write(const void* data, size_t bytes) {
  STRATA_CHECK(!committed_ && fd_ >= 0, "write after commit to ", path_);
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::write(fd_, p, bytes);
    if (n < 0 && errno == EINTR) continue;
    STRATA_REQUIRE(n > 0, "cannot write '", path_, "': ", std::strerror(errno));
    p += n;
    bytes -= static_cast<size_t>(n);
  }
}

void AtomicFile::commit() {
  STRATA_CHECK(!committed_ && fd_ >= 0, "double commit of ", path_);
  STRATA_REQUIRE(::fsync(fd_) == 0, "cannot write '", path_, "': fsync failed: ", std::strerror(errno));
  const int rc = ::close(fd_);
  fd_ = -1;
  STRATA_REQUIRE(rc == 0, "cannot write '", path_, "': close failed: ", std::strerror(errno));
  STRATA_REQUIRE(::rename(tmp_path_.c_str(), path_.c_str()) == 0, "cannot write '", path_,
                 "': rename failed: ", std::strerror(errno));
  committed_ = true;
}

void write_file_atomic(const std::string& path, std::string_view content) {
  AtomicFile f(path);
  if (std::string_view(path).ends_with(".xz"))
    f.write(xz_compress(path, content));
  else
    f.write(content);
  f.commit();
}

std::vector<std::string> expand_inputs(const std::vector<std::string>& patterns) {
  namespace fs = std::filesystem;
  std::vector<std::string> out;
  for (const std::string& pat : patterns) {
    std::error_code ec;
    if (fs::is_directory(pat, ec)) {
      std::vector<std::string> files;
      for (const auto& e : fs::directory_iterator(pat, ec))
        if (e.is_regular_file()) files.push_back(e.path().string());
      STRATA_REQUIRE(!files.empty(), "input '", pat, "': directory has no regular files");
      out.insert(out.end(), files.begin(), files.end());
      continue;
    }
    glob_t g{};
    const int rc = ::glob(pat.c_str(), GLOB_NOSORT, nullptr, &g);
    std::vector<std::string> files;
    if (rc == 0)
      for (size_t i = 0; i < g.gl_pathc; ++i)
        if (fs::is_regular_file(g.gl_pathv[i], ec)) files.emplace_back(g.gl_pathv[i]);
    ::globfree(&g);
    STRATA_REQUIRE(!files.empty(), "input '", pat, "': no such file or no file matches");
    out.insert(out.end(), files.begin(), files.end());
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

MappedFile::MappedFile(const std::string& path, const std::string& what_in) : path_(path) {
  const std::string what = what_in.empty() ? cat("'", path, "': ") : what_in;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  STRATA_REQUIRE(fd >= 0, what, "cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    STRATA_FAIL(what, "cannot stat: ", std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    STRATA_FAIL(what, "not a regular file");
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ == 0) {  // mmap of 0 bytes is an error; an empty file simply has no mapping
    ::close(fd);
    return;
  }
  void* map = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);  // the mapping keeps the file alive
  STRATA_REQUIRE(map != MAP_FAILED, what, "cannot mmap: ", std::strerror(map_err));
  data_ = static_cast<const uint8_t*>(map);
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

MappedFile::~MappedFile() {
  release();
}

void MappedFile::release() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

}  // namespace strata
