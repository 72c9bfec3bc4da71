#include "data/prepare.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <string_view>

#include "data/documents.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "engine/check.h"
#include "engine/fileio.h"
#include "engine/parallel.h"

namespace strata::data {
namespace fs = std::filesystem;
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// In-place progress bar on stderr, drawn only when stderr is a terminal (logs stay clean).
class ProgressBar {
 public:
  ProgressBar(bool enabled, uint64_t total_bytes)
      : enabled_(enabled && ::isatty(STDERR_FILENO)), total_(total_bytes), t0_(Clock::now()) {}
  void update(const char* phase, uint64_t done_bytes, uint64_t tokens) {
    if (!enabled_) return;
    const double frac = total_ ? std::min(1.0, static_cast<double>(done_bytes) / static_cast<double>(total_)) : 1.0;
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(frac * kWidth);
    const double secs = seconds_since(t0_);
    std::fprintf(stderr, "\r%-5s [%.*s%*s] %5.1f%%  %.1f MB  %llu tokens  %.1f MB/s ", phase, filled,
                 "##############################", kWidth - filled, "", 100.0 * frac,
                 static_cast<double>(done_bytes) / 1e6, static_cast<unsigned long long>(tokens),
                 secs > 0 ? static_cast<double>(done_bytes) / 1e6 / secs : 0.0);
    std::fflush(stderr);
  }
  void finish() {
    if (enabled_) std::fprintf(stderr, "\n");
  }

 private:
  bool enabled_;
  uint64_t total_;
  Clock::time_point t0_;
};

// Accumulates a split's token stream and cuts it into numbered shards in `dir`.
class ShardSink {
 public:
  ShardSink(std::string dir, std::string split, uint64_t shard_tokens, uint32_t vocab)
      : dir_(std::move(dir)), split_(std::move(split)), shard_tokens_(shard_tokens), vocab_(vocab) {}
  void append(const std::vector<TokenId>& ids) {
    size_t off = 0;
    while (off < ids.size()) {
      const size_t take = std::min<size_t>(ids.size() - off, shard_tokens_ - buffer_.size());
      buffer_.insert(buffer_.end(), ids.begin() + static_cast<std::ptrdiff_t>(off),
                     ids.begin() + static_cast<std::ptrdiff_t>(off + take));
      off += take;
      if (buffer_.size() == shard_tokens_) flush();
    }
  }
  void flush() {
    if (buffer_.empty()) return;
    char name[64];
    std::snprintf(name, sizeof(name), "%s_%06zu.bin", split_.c_str(), names_.size());
    write_shard((fs::path(dir_) / name).string(), buffer_, vocab_);
    names_.emplace_back(name);
    buffer_.clear();
  }
  const std::vector<std::string>& names() const { return names_; }

 private:
  std::string dir_, split_;
  uint64_t shard_tokens_;
  uint32_t vocab_;
  std::vector<TokenId> buffer_;
  std::vector<std::string> names_;
};

// Removes a temporary folder unless released (the success path moves its contents out first).
struct TempDirGuard {
  fs::path path;
  bool active = true;
  ~TempDirGuard() {
    std::error_code ec;
    if (active) fs::remove_all(path, ec);
  }
};

bool is_shard_name(const std::string& name) {
  auto match = [&](std::string_view prefix) {
    return name.size() > prefix.size() + 4 && name.compare(0, prefix.size(), prefix) == 0 &&
           name.compare(name.size() - 4, 4, ".bin") == 0;
  };
  return match("train_") || match("val_");
}

// Tokenizes `docs` into `sink` in order, parallel across documents. Progress is counted in input-file bytes
// (compressed where the input is), `file_bytes_per_text_byte` converting.
void tokenize_split(const Tokenizer& tok, const std::vector<Document>& docs, int threads, ShardSink& sink,
                    SplitSummary& summary, ProgressBar& bar, const char* phase, double& bytes_done,
                    double file_bytes_per_text_byte) {
  // Batches of documents of ~64 MiB of text: parallel within a batch, written in order.
  constexpr uint64_t kBatchBytes = 64ull << 20;
  size_t begin = 0;
  while (begin < docs.size()) {
    size_t end = begin;
    uint64_t batch_bytes = 0;
    while (end < docs.size() && (end == begin || batch_bytes + docs[end].text.size() <= kBatchBytes))
      batch_bytes += docs[end++].text.size();
    std::vector<std::vector<TokenId>> ids(end - begin);
    // One huge document would leave the other cores idle: give it all threads; otherwise one thread each.
    const bool single = end - begin == 1;
    parallel_for(end - begin, threads, [&](size_t i) {
      const std::string& text = docs[begin + i].text;
      std::vector<TokenId>& out = ids[i];
      out.push_back(tok.eot());
      if (single) {
        std::vector<TokenId> body = tok.encode_parallel(text, /*allow_special=*/false, threads);
        out.insert(out.end(), body.begin(), body.end());
      } else {
        tok.encode_append(text, /*allow_special=*/false, out);
      }
    });
    for (size_t i = 0; i < ids.size(); ++i) {
      sink.append(ids[i]);
      summary.tokens += ids[i].size();
      summary.bytes += docs[begin + i].text.size();
      ++summary.documents;
    }
    bytes_done += static_cast<double>(batch_bytes) * file_bytes_per_text_byte;
    bar.update(phase, static_cast<uint64_t>(bytes_done), summary.tokens);
    begin = end;
  }
}

uint64_t file_bytes(const std::string& f) {
  std::error_code ec;
  const auto n = fs::file_size(f, ec);
  return ec ? 0 : n;
}

uint64_t total_file_bytes(const std::vector<std::string>& files) {
  uint64_t total = 0;
  for (const auto& f : files) total += file_bytes(f);
  return total;
}

// Streams `files` through the tokenizer in groups of ~256 MiB on disk, so a corpus larger than memory works and
// many small files still keep every core busy (files of a group are read in parallel).
void tokenize_files(const Tokenizer& tok, const std::vector<std::string>& files, int threads, ShardSink& sink,
                    SplitSummary& summary, ProgressBar& bar, const char* phase, double& bytes_done) {
  constexpr uint64_t kGroupBytes = 256ull << 20;
  size_t begin = 0;
  while (begin < files.size()) {
    size_t end = begin;
    uint64_t group_bytes = 0;
    while (end < files.size() && (end == begin || group_bytes + file_bytes(files[end]) <= kGroupBytes))
      group_bytes += file_bytes(files[end++]);
    std::vector<std::vector<Document>> per_file(end - begin);
    parallel_for(end - begin, threads, [&](size_t i) { per_file[i] = read_documents(files[begin + i]); });
    std::vector<Document> docs;
    uint64_t text_bytes = 0;
    for (auto& v : per_file)
      for (auto& d : v) {
        text_bytes += d.text.size();
        docs.push_back(std::move(d));
      }
    tokenize_split(tok, docs, threads, sink, summary, bar, phase, bytes_done,
                   text_bytes ? static_cast<double>(group_bytes) / static_cast<double>(text_bytes) : 0.0);
    begin = end;
  }
}

nlohmann::json split_json(const SplitSummary& s) {
  return {{"documents", s.documents}, {"tokens", s.tokens}, {"bytes", s.bytes}, {"shards", s.shards}};
}

}  // namespace

PrepareSummary prepare(const PrepareOptions& opts) {
  const auto t0 = Clock::now();
  STRATA_REQUIRE(!opts.train_inputs.empty(), "prepare: no --input given");
  STRATA_REQUIRE(!opts.out_dir.empty(), "prepare: --out is empty");
  STRATA_REQUIRE(opts.shard_tokens >= 1, "prepare: --shard-tokens must be at least 1");
  STRATA_REQUIRE(opts.shard_tokens <= static_cast<uint64_t>(INT32_MAX),
                 "prepare: --shard-tokens ", opts.shard_tokens, " exceeds the shard format's limit of ", INT32_MAX);
  STRATA_REQUIRE(opts.val_fraction >= 0.0 && opts.val_fraction < 1.0,
                 "prepare: --val-fraction must be in [0, 1), got ", opts.val_fraction);
  STRATA_REQUIRE(opts.val_inputs.empty() || opts.val_fraction == 0.0,
                 "prepare: give either --val files or --val-fraction, not both");

  // Validate every input before any output exists.
  const std::vector<std::string> train_files = expand_inputs(opts.train_inputs);
  const std::vector<std::string> val_files =
      opts.val_inputs.empty() ? std::vector<std::string>{} : expand_inputs(opts.val_inputs);
  for (const auto& v : val_files)
    for (const auto& t : train_files)
      STRATA_REQUIRE(!fs::equivalent(v, t), "prepare: '", v, "' is both a training and a validation input");
  const Tokenizer tok = Tokenizer::load(opts.tokenizer_path);

  std::error_code ec;
  fs::create_directories(opts.out_dir, ec);
  STRATA_REQUIRE(fs::is_directory(opts.out_dir), "prepare: cannot create output folder '", opts.out_dir,
                 "'", ec ? ": " + ec.message() : "");
  std::vector<fs::path> old_shards;
  for (const auto& e : fs::directory_iterator(opts.out_dir))
    if (e.is_regular_file() && is_shard_name(e.path().filename().string())) old_shards.push_back(e.path());
  STRATA_REQUIRE(old_shards.empty() || opts.overwrite, "prepare: output folder '", opts.out_dir,
                 "' already holds shards (e.g. '", old_shards.empty() ? "" : old_shards[0].filename().string(),
                 "'); pass --overwrite to replace them");

  std::random_device rd;
  TempDirGuard tmp{fs::path(opts.out_dir) / cat(".prepare-tmp-", ::getpid(), "-", rd() % 100000)};
  fs::create_directory(tmp.path, ec);
  STRATA_REQUIRE(!ec, "prepare: cannot create '", tmp.path.string(), "': ", ec.message());

  PrepareSummary summary;
  summary.vocab_size = tok.vocab_size();
  ProgressBar bar(opts.progress, total_file_bytes(train_files) + total_file_bytes(val_files));
  double bytes_done = 0;
  ShardSink train_sink(tmp.path.string(), "train", opts.shard_tokens, tok.vocab_size());
  ShardSink val_sink(tmp.path.string(), "val", opts.shard_tokens, tok.vocab_size());

  if (opts.val_fraction > 0.0) {
    // Hold out the last ceil(f * n) documents of the (ordered) training inputs.
    std::vector<Document> docs = read_documents(train_files);
    const auto n_val = static_cast<size_t>(std::ceil(opts.val_fraction * static_cast<double>(docs.size())));
    STRATA_REQUIRE(n_val < docs.size(), "prepare: --val-fraction ", opts.val_fraction, " leaves no training documents (",
                   docs.size(), " in all)");
    std::vector<Document> val_docs(std::make_move_iterator(docs.end() - static_cast<std::ptrdiff_t>(n_val)),
                                   std::make_move_iterator(docs.end()));
    docs.resize(docs.size() - n_val);
    uint64_t text_bytes = 0;
    for (const auto& d : docs) text_bytes += d.text.size();
    for (const auto& d : val_docs) text_bytes += d.text.size();
    const double scale =
        text_bytes ? static_cast<double>(total_file_bytes(train_files)) / static_cast<double>(text_bytes) : 0.0;
    tokenize_split(tok, docs, opts.threads, train_sink, summary.train, bar, "train", bytes_done, scale);
    tokenize_split(tok, val_docs, opts.threads, val_sink, summary.val, bar, "val", bytes_done, scale);
  } else {
    tokenize_files(tok, train_files, opts.threads, train_sink, summary.train, bar, "train", bytes_done);
    tokenize_files(tok, val_files, opts.threads, val_sink, summary.val, bar, "val", bytes_done);
  }
  train_sink.flush();
  val_sink.flush();
  bar.finish();
  STRATA_REQUIRE(summary.train.tokens > 0, "prepare: the training inputs hold no documents");
  summary.train.shards = train_sink.names();
  summary.val.shards = val_sink.names();

  // Every shard is complete: replace the old set, move the new one in, then write the manifest.
  for (const auto& p : old_shards) fs::remove(p);
  for (const auto& names : {summary.train.shards, summary.val.shards})
    for (const auto& n : names) fs::rename(tmp.path / n, fs::path(opts.out_dir) / n);
  summary.seconds = seconds_since(t0);
  nlohmann::json manifest = {
      {"format", "llm.c token shards"},
      {"tokenizer", fs::absolute(opts.tokenizer_path).lexically_normal().string()},  // usable from any folder
      {"vocab_size", tok.vocab_size()},
      {"eot", tok.eot()},
      {"token_bytes", token_width_for_vocab(tok.vocab_size()) == TokenWidth::kU16 ? 2 : 4},
      {"shard_tokens", opts.shard_tokens},
      {"document_separator", "<|endoftext|> before every document"},
      {"train_inputs", train_files},
      {"val_inputs", val_files},
      {"val_fraction", opts.val_fraction},
      {"train", split_json(summary.train)},
      {"val", split_json(summary.val)}};
  write_file_atomic((fs::path(opts.out_dir) / "manifest.json").string(), manifest.dump(2) + "\n");
  return summary;
}

}  // namespace strata::data
