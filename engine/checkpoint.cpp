#include "engine/checkpoint.h"

#include <fcntl.h>
#include <lzma.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <climits>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <set>
#include <vector>

#include "engine/check.h"
#include "engine/fileio.h"
#include "models/model_config_json.h"

namespace fs = std::filesystem;

namespace strata {
namespace {

constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kStateFile = "state.json";

// The step of a folder called ckpt-<digits>, or nullopt.
std::optional<long> parse_checkpoint_name(const std::string& name) {
  constexpr std::string_view kPrefix = "ckpt-";
  if (name.size() <= kPrefix.size() || name.size() > kPrefix.size() + 18 || !name.starts_with(kPrefix))
    return std::nullopt;
  long step = 0;
  for (size_t i = kPrefix.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return std::nullopt;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

void fsync_dir(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  STRATA_REQUIRE(fd >= 0, "checkpoint: cannot open folder '", dir.string(), "': ", std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  STRATA_REQUIRE(rc == 0, "checkpoint: cannot fsync folder '", dir.string(), "': ", std::strerror(err));
}

void rename_or_fail(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  fs::rename(from, to, ec);
  STRATA_REQUIRE(!ec, "checkpoint: cannot rename '", from.string(), "' to '", to.string(),
                 "': ", ec.message());
}

// A checkpoint folder is deleted by renaming it to a dot-folder first, so a crash mid-delete never leaves a
// ckpt-* folder that looks complete but lacks files.
void delete_checkpoint(const fs::path& dir) {
  const fs::path doomed = dir.parent_path() / cat(".", dir.filename().string(), ".del-", ::getpid());
  std::error_code ec;
  fs::remove_all(doomed, ec);
  rename_or_fail(dir, doomed);
  fs::remove_all(doomed, ec);
  STRATA_REQUIRE(!ec, "checkpoint: cannot delete '", doomed.string(), "': ", ec.message());
}

std::vector<TensorView> buffer_views(const ParamBuffer& buf, const std::string& prefix) {
  std::vector<TensorView> views;
  for (const ParamEntry& e : buf.layout().entries())
    views.push_back({prefix + e.spec.name, DType::kF32, e.stored_shape(), buf.data() + e.offset});
  return views;
}

SafetensorsMetadata model_metadata(const models::ModelConfig& cfg) {
  return {{"format", "strata"},
          {"family", models::family_name(cfg.family)},
          {"config", models::model_config_to_json(cfg).dump()}};
}

// Checks that `file` holds exactly the tensors prefix + name of every target's layout, F32, with the stored
// shapes, then copies them in. Nothing is written to a buffer unless every tensor matches.
struct LoadTarget {
  std::string prefix;
  ParamBuffer* buf;
};
void load_buffers(const SafetensorsFile& file, const std::vector<LoadTarget>& targets) {
  const std::string w = cat("safetensors '", file.path(), "': ");
  std::set<std::string> expected;
  std::vector<std::pair<const SafeTensor*, float*>> copies;
  for (const LoadTarget& t : targets) {
    for (const ParamEntry& e : t.buf->layout().entries()) {
      const std::string name = t.prefix + e.spec.name;
      const std::vector<int64_t> shape = e.stored_shape();
      expected.insert(name);
      const SafeTensor* st = file.find(name);
      STRATA_REQUIRE(st != nullptr, w, "tensor '", name, "' is missing (the model expects F32 ",
                     shape_string(shape), ")");
      STRATA_REQUIRE(st->dtype == DType::kF32, w, "tensor '", name, "' is ", dtype_name(st->dtype),
                     ", expected F32");
      STRATA_REQUIRE(st->shape == shape, w, "tensor '", name, "' has shape ", shape_string(st->shape),
                     " but the model expects ", shape_string(shape), " (a checkpoint of a different model?)");
      copies.emplace_back(st, t.buf->data() + e.offset);
    }
  }
  for (const SafeTensor& st : file.tensors())
    STRATA_REQUIRE(expected.count(st.name) == 1, w, "unexpected tensor '", st.name, "' ",
                   shape_string(st.shape), " (the model has no such tensor)");
  for (const auto& [st, dst] : copies) file.to_f32(*st, dst, static_cast<size_t>(st->numel()));
}

// Maps <dir>/<name>, checks its size and CRC-64 against state.json, then parses it.
SafetensorsFile open_verified(const CheckpointInfo& info, const std::string& name) {
  const auto it = info.files.find(name);
  STRATA_REQUIRE(it != info.files.end(), "checkpoint '", info.dir, "': state.json lists no '", name, "'",
                 name == kOptimizerFile ? " (saved without an optimizer)" : "");
  const std::string path = (fs::path(info.dir) / name).string();
  STRATA_REQUIRE(file_exists(path), "checkpoint file '", path, "': missing");
  MappedFile m(path);
  STRATA_REQUIRE(m.size() == it->second.bytes, "checkpoint file '", path, "': ", m.size(),
                 " bytes, but state.json records ", it->second.bytes, " (truncated or replaced)");
  const uint64_t crc = lzma_crc64(m.data(), m.size(), 0);
  STRATA_REQUIRE(crc == it->second.crc64, "checkpoint file '", path, "': CRC-64 ", crc64_hex(crc),
                 " does not match ", crc64_hex(it->second.crc64), " recorded in state.json (corrupt file)");
  return SafetensorsFile::from_mapping(std::move(m));
}

}  // namespace

SafetensorsFile open_checkpoint_file(const std::string& ckpt_dir, const std::string& file) {
  return open_verified(read_checkpoint_info(ckpt_dir), file);
}

std::string crc64_hex(uint64_t crc) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016" PRIx64, crc);
  return buf;
}

std::string checkpoint_dir_name(long step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "ckpt-%08ld", step);
  return buf;
}

WrittenFile save_params_safetensors(const std::string& path, const ParamBuffer& params,
                                    const SafetensorsMetadata& metadata) {
  SafetensorsMetadata meta = model_metadata(params.layout().config());
  for (const auto& [k, v] : metadata) meta[k] = v;
  return write_safetensors(path, buffer_views(params, ""), meta);
}

void load_params_safetensors(const std::string& path, ParamBuffer& params) {
  load_buffers(SafetensorsFile::open(path), {{"", &params}});
}

namespace {

// Checks the caller's arguments and creates run_dir/.ckpt-<step>.tmp-<pid>; returns that folder.
fs::path begin_checkpoint(const std::string& run_dir, long step, const ParamBuffer& params, const AdamW* adam,
                          const nlohmann::json& trainer_state) {
  STRATA_REQUIRE(step >= 0, "checkpoint: step must be non-negative (got ", step, ")");
  STRATA_REQUIRE(trainer_state.is_object() || trainer_state.is_null(),
                 "checkpoint: the trainer state must be a JSON object (got ", trainer_state.type_name(), ")");
  if (adam != nullptr)
    STRATA_CHECK(adam->m().numel() == params.numel() && adam->v().numel() == params.numel(),
                 "optimizer moments laid out for ", adam->m().numel(), " parameters, model has ",
                 params.numel());
  const fs::path run(run_dir);
  std::error_code ec;
  fs::create_directories(run, ec);
  STRATA_REQUIRE(!ec && fs::is_directory(run), "checkpoint: cannot create run folder '", run_dir,
                 "': ", ec ? ec.message() : "not a folder");
  const fs::path tmp = run / cat(".", checkpoint_dir_name(step), ".tmp-", ::getpid());
  fs::remove_all(tmp, ec);  // a leftover of an earlier failed save by this process
  fs::create_directory(tmp, ec);
  STRATA_REQUIRE(!ec, "checkpoint: cannot create '", tmp.string(), "': ", ec.message());
  return tmp;
}

void record_file(nlohmann::json& files, const std::string& file, const WrittenFile& wf) {
  files[file] = {{"bytes", wf.bytes}, {"crc64", crc64_hex(wf.crc64)}};
}

// Writes extra files into tmp, recording each in `files`.
void write_extras(const fs::path& tmp, const std::vector<CheckpointExtra>& extra, nlohmann::json& files) {
  for (const CheckpointExtra& x : extra) {
    STRATA_CHECK(x.file != kModelFile && x.file != kOptimizerFile && x.file != kStateFile &&
                     x.file.find('/') == std::string::npos && !files.contains(x.file),
                 "checkpoint: bad extra file name '", x.file, "'");
    record_file(files, x.file, write_safetensors((tmp / x.file).string(), x.tensors, x.metadata));
  }
}

// The weights, the whole optimizer state (when given) and the extras.
void write_model_files(const fs::path& tmp, const ParamBuffer& params, const AdamW* adam,
                       const std::vector<CheckpointExtra>& extra, nlohmann::json& files) {
  record_file(files, kModelFile, save_params_safetensors((tmp / kModelFile).string(), params));
  if (adam != nullptr) {
    std::vector<TensorView> views = buffer_views(adam->m(), "m.");
    for (TensorView& v : buffer_views(adam->v(), "v.")) views.push_back(std::move(v));
    SafetensorsMetadata meta = model_metadata(params.layout().config());
    meta["content"] = "adamw moments m.<name>, v.<name>";
    record_file(files, kOptimizerFile, write_safetensors((tmp / kOptimizerFile).string(), views, meta));
  }
  write_extras(tmp, extra, files);
}

// Writes state.json (the completion marker: written last, listing every file), then renames tmp to
// ckpt-<step> and prunes old checkpoints. On failure tmp is removed.
std::string finish_checkpoint(const std::string& run_dir, const fs::path& tmp, long step,
                              const models::ModelConfig& cfg, const nlohmann::json& trainer_state,
                              const nlohmann::json& files, int keep_last) {
  const fs::path run(run_dir);
  const std::string name = checkpoint_dir_name(step);
  const fs::path final_dir = run / name;
  std::error_code ec;
  try {
    nlohmann::ordered_json state = nlohmann::ordered_json::object();  // in this order, for people reading it
    state["format_version"] = kCheckpointFormatVersion;
    state["step"] = step;
    state["model"] = nlohmann::ordered_json(models::model_config_to_json(cfg));
    state["trainer"] =
        trainer_state.is_null() ? nlohmann::ordered_json::object() : nlohmann::ordered_json(trainer_state);
    state["files"] = nlohmann::ordered_json(files);
    std::string text;
    try {
      text = state.dump(2) + "\n";
    } catch (const nlohmann::json::exception& e) {
      STRATA_FAIL("checkpoint: cannot encode the trainer state as JSON: ", e.what());
    }
    write_file_atomic((tmp / kStateFile).string(), text);
    fsync_dir(tmp);

    // Install: an existing checkpoint of this step is moved aside first, restored if the rename fails.
    if (fs::exists(fs::symlink_status(final_dir))) {
      const fs::path old = run / cat(".", name, ".old-", ::getpid());
      fs::remove_all(old, ec);
      rename_or_fail(final_dir, old);
      fs::rename(tmp, final_dir, ec);
      if (ec) {
        std::error_code ignored;
        fs::rename(old, final_dir, ignored);
        STRATA_FAIL("checkpoint: cannot rename '", tmp.string(), "' to '", final_dir.string(),
                    "': ", ec.message());
      }
      fs::remove_all(old, ec);
    } else {
      rename_or_fail(tmp, final_dir);
    }
    fsync_dir(run);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }

  if (keep_last > 0) {
    const std::map<long, std::string> all = list_checkpoints(run_dir);
    long keep = keep_last;
    for (auto it = all.rbegin(); it != all.rend(); ++it) {
      if (it->first == step) {  // the one just written always stays, and counts towards keep_last
        --keep;
        continue;
      }
      if (keep > 0) {
        --keep;
        continue;
      }
      try {
        delete_checkpoint(it->second);
      } catch (const Error& e) {  // the new checkpoint is safe; a stale one that survives is only a warning
        std::fprintf(stderr, "strata: warning: %s\n", e.what());
      }
    }
  }
  return final_dir.string();
}

// Every rank's error of one phase of a distributed save, exchanged: when any rank failed, every rank throws
// the first failure (an AgreedError naming the rank), after `cleanup` ran on rank 0.
template <class Cleanup>
void agree_on_errors(Communicator& comm, const std::string& mine, Cleanup&& cleanup) {
  const std::vector<std::string> all = comm.all_gather_strings(mine);
  for (size_t r = 0; r < all.size(); ++r) {
    if (all[r].empty()) continue;
    if (comm.rank() == 0) cleanup();
    if (comm.world() == 1) throw AgreedError(all[r]);
    throw AgreedError(cat("rank ", r, " of ", comm.world(), ": ", all[r]));
  }
}

}  // namespace

std::string save_checkpoint(const std::string& run_dir, long step, const ParamBuffer& params,
                            const AdamW* opt, const nlohmann::json& trainer_state, int keep_last,
                            const std::vector<CheckpointExtra>& extra) {
  const fs::path tmp = begin_checkpoint(run_dir, step, params, opt, trainer_state);
  nlohmann::json files = nlohmann::json::object();
  try {
    write_model_files(tmp, params, opt, extra, files);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  return finish_checkpoint(run_dir, tmp, step, params.layout().config(), trainer_state, files, keep_last);
}

std::string save_checkpoint_distributed(Communicator& comm, const std::string& run_dir, long step,
                                        const ParamBuffer& params, const AdamW* opt,
                                        const nlohmann::json& trainer_state, int keep_last,
                                        const std::vector<CheckpointExtra>& extra,
                                        const std::vector<CheckpointExtra>& rank_files) {
  const bool lead = comm.rank() == 0;
  std::string err;
  fs::path tmp;
  auto remove_tmp = [&] {
    std::error_code ec;
    if (!tmp.empty()) fs::remove_all(tmp, ec);
  };
  // 1. Rank 0 creates the temporary folder; every rank learns its path (a shared file system).
  if (lead) {
    try {
      tmp = begin_checkpoint(run_dir, step, params, opt, trainer_state);
    } catch (const Error& e) {
      err = e.what();
    }
  }
  agree_on_errors(comm, err, [] {});
  tmp = comm.all_gather_strings(lead ? tmp.string() : std::string())[0];
  // 2. Rank 0 writes the weights, the replicated optimizer state and the extras; every rank its own files.
  nlohmann::json files = nlohmann::json::object();
  try {
    if (lead) write_model_files(tmp, params, opt, extra, files);
    STRATA_REQUIRE(fs::is_directory(tmp), "checkpoint: the folder '", tmp.string(),
                   "' rank 0 created is not visible here: --out must be on a file system every node shares");
    write_extras(tmp, rank_files, files);
  } catch (const Error& e) {
    err = e.what();
  }
  agree_on_errors(comm, err, remove_tmp);
  const std::vector<std::string> records = comm.all_gather_strings(files.dump());
  // 3. Rank 0 writes state.json listing every rank's files (the completion marker) and installs the folder.
  std::string final_dir;
  if (lead) {
    try {
      nlohmann::json all = nlohmann::json::object();
      for (const std::string& r : records) all.update(nlohmann::json::parse(r));
      final_dir = finish_checkpoint(run_dir, tmp, step, params.layout().config(), trainer_state, all, keep_last);
    } catch (const Error& e) {
      err = e.what();
    }
  }
  agree_on_errors(comm, err, [] {});
  return comm.all_gather_strings(final_dir)[0];
}

std::string optimizer_shard_file(int rank, int world) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "optimizer-%05d-of-%05d.safetensors", rank, world);
  return buf;
}

CheckpointExtra optimizer_shard_extra(const ParamLayout& layout, const std::vector<ShardRange>& ranges,
                                      const float* m, const float* v, int rank, int world) {
  int64_t held = 0;
  nlohmann::json rj = nlohmann::json::array();
  for (const ShardRange& r : ranges) {
    held += r.size();
    rj.push_back({r.begin, r.end});
  }
  CheckpointExtra x;
  x.file = optimizer_shard_file(rank, world);
  x.tensors = {{"m", DType::kF32, {held}, m}, {"v", DType::kF32, {held}, v}};
  x.metadata = model_metadata(layout.config());
  x.metadata["content"] = "ZeRO-1 shard of the adamw moments: the flat layout's elements in 'ranges', in order";
  x.metadata["ranges"] = rj.dump();
  x.metadata["numel"] = std::to_string(layout.numel());
  x.metadata["rank"] = std::to_string(rank);
  x.metadata["world"] = std::to_string(world);
  return x;
}

std::map<long, std::string> list_checkpoints(const std::string& run_dir) {
  std::map<long, std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(run_dir, ec)) {
    const std::string fname = e.path().filename().string();
    const std::optional<long> step = parse_checkpoint_name(fname);
    if (!step || !e.is_directory(ec) || !file_exists((e.path() / kStateFile).string())) continue;
    // ckpt-5 and ckpt-00000005 are the same step: the canonical spelling wins.
    if (out.count(*step) == 0 || fname == checkpoint_dir_name(*step)) out[*step] = e.path().string();
  }
  return out;
}

std::string resolve_checkpoint(const std::string& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  STRATA_REQUIRE(fs::exists(st), "checkpoint '", path, "': no such file or folder");
  STRATA_REQUIRE(fs::is_directory(st), "checkpoint '", path,
                 "': not a folder (expected a checkpoint folder or a run folder)");
  if (file_exists((fs::path(path) / kStateFile).string())) return path;
  const std::map<long, std::string> all = list_checkpoints(path);
  STRATA_REQUIRE(
      !all.empty(), "checkpoint '", path,
      "': not a checkpoint (no state.json) and holds no complete checkpoint (ckpt-NNNNNNNN/state.json)");
  return all.rbegin()->second;
}

CheckpointInfo read_checkpoint_info(const std::string& ckpt_dir) {
  const std::string path = (fs::path(ckpt_dir) / kStateFile).string();
  STRATA_REQUIRE(file_exists(path), "checkpoint '", ckpt_dir, "': no state.json (not a checkpoint folder)");
  const std::string w = cat("checkpoint state '", path, "': ");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    std::string msg = e.what();
    for (char& c : msg)
      if (c == '\n' || c == '\r') c = ' ';
    STRATA_FAIL(w, "not valid JSON: ", msg);
  }
  STRATA_REQUIRE(j.is_object(), w, "not a JSON object");
  const auto need = [&](const char* key) -> const nlohmann::json& {
    STRATA_REQUIRE(j.contains(key), w, "field '", key, "' is missing");
    return j[key];
  };
  const nlohmann::json& version = need("format_version");
  STRATA_REQUIRE(version.is_number_integer() && version.get<int64_t>() == kCheckpointFormatVersion, w,
                 "format_version ", version.dump(), " is not supported (expected ", kCheckpointFormatVersion,
                 ")");
  CheckpointInfo info;
  info.dir = ckpt_dir;
  const nlohmann::json& step = need("step");
  STRATA_REQUIRE(step.is_number_unsigned() && step.get<uint64_t>() <= static_cast<uint64_t>(LONG_MAX), w,
                 "field 'step' must be a non-negative integer (got ", step.dump(), ")");
  info.step = step.get<long>();
  try {
    info.model = models::model_config_from_json(need("model"));
  } catch (const Error& e) {
    STRATA_FAIL(w, "field 'model': ", e.what());
  }
  info.trainer = need("trainer");
  STRATA_REQUIRE(info.trainer.is_object(), w, "field 'trainer' must be an object");
  const nlohmann::json& files = need("files");
  STRATA_REQUIRE(files.is_object(), w, "field 'files' must be an object");
  for (const auto& [fname, entry] : files.items()) {
    const bool ok = entry.is_object() && entry.contains("bytes") && entry["bytes"].is_number_unsigned() &&
                    entry.contains("crc64") && entry["crc64"].is_string() &&
                    entry["crc64"].get<std::string>().size() == 16;
    STRATA_REQUIRE(ok, w, "files['", fname, "'] must be {\"bytes\": n, \"crc64\": \"<16 hex digits>\"} (got ",
                   entry.dump(), ")");
    const std::string hex = entry["crc64"].get<std::string>();
    char* end = nullptr;
    CheckpointFile cf;
    cf.bytes = entry["bytes"].get<uint64_t>();
    cf.crc64 = std::strtoull(hex.c_str(), &end, 16);
    STRATA_REQUIRE(end == hex.c_str() + hex.size() && hex.find_first_of("+- ") == std::string::npos, w,
                   "files['", fname, "'].crc64 '", hex, "' is not 16 hex digits");
    info.files[fname] = cf;
  }
  STRATA_REQUIRE(info.files.count(kModelFile) == 1, w, "files lists no '", kModelFile, "'");
  return info;
}

void load_checkpoint_params(const std::string& ckpt_dir, ParamBuffer& params) {
  const CheckpointInfo info = read_checkpoint_info(ckpt_dir);
  load_buffers(open_verified(info, kModelFile), {{"", &params}});
}

void load_checkpoint_moments(const CheckpointInfo& info, const ParamLayout& layout,
                             const std::vector<ShardRange>& ranges, float* m, float* v) {
  int64_t prev_end = 0;
  for (const ShardRange& r : ranges) {
    STRATA_CHECK(r.begin >= prev_end && r.begin <= r.end && r.end <= layout.numel(),
                 "load_checkpoint_moments: ranges must be ascending, disjoint and inside the layout");
    prev_end = r.end;
  }
  if (info.files.count(kOptimizerFile) == 1) {  // the whole state in one file (one process, or ZeRO-0)
    AdamW whole(layout, AdamWConfig{});
    load_buffers(open_verified(info, kOptimizerFile), {{"m.", &whole.m()}, {"v.", &whole.v()}});
    int64_t at = 0;
    for (const ShardRange& r : ranges) {
      std::copy(whole.m().data() + r.begin, whole.m().data() + r.end, m + at);
      std::copy(whole.v().data() + r.begin, whole.v().data() + r.end, v + at);
      at += r.size();
    }
    return;
  }
  // ZeRO-1 shards, written by any number of ranks and split either way: every file's ranges, then the
  // overlap of each with the ranges asked for.
  int world = 0;
  std::set<int> ranks;
  for (const auto& [fname, f] : info.files) {
    int r = 0, w = 0;
    char tail[32] = "";
    if (std::sscanf(fname.c_str(), "optimizer-%5d-of-%5d.%31s", &r, &w, tail) != 3 ||
        std::string(tail) != "safetensors" || fname != optimizer_shard_file(r, w))
      continue;
    STRATA_REQUIRE(world == 0 || world == w, "checkpoint '", info.dir, "': optimizer shards of ", world,
                   " and of ", w, " ranks are mixed");
    world = w;
    ranks.insert(r);
  }
  STRATA_REQUIRE(world > 0, "checkpoint '", info.dir,
                 "': no optimizer state (neither optimizer.safetensors nor optimizer-*-of-*.safetensors)");
  STRATA_REQUIRE(static_cast<int>(ranks.size()) == world && *ranks.begin() == 0 && *ranks.rbegin() == world - 1,
                 "checkpoint '", info.dir, "': has ", ranks.size(), " of the ", world,
                 " optimizer shards its state.json should list");
  struct Held {
    int64_t begin, end, at;  // a flat range and where it is in its file's tensors
    int file;
  };
  std::vector<Held> held;
  std::vector<std::vector<float>> file_m(static_cast<size_t>(world)), file_v(static_cast<size_t>(world));
  for (int r = 0; r < world; ++r) {
    const std::string fname = optimizer_shard_file(r, world);
    const SafetensorsFile file = open_verified(info, fname);
    const std::string w = cat("checkpoint file '", info.dir, "/", fname, "': ");
    const auto meta = [&](const char* key) -> std::string {
      const auto it = file.metadata().find(key);
      STRATA_REQUIRE(it != file.metadata().end(), w, "metadata '", key, "' is missing");
      return it->second;
    };
    STRATA_REQUIRE(meta("numel") == std::to_string(layout.numel()), w, "a shard of ", meta("numel"),
                   " elements in all, but the model has ", layout.numel());
    std::vector<ShardRange> mine;
    if (file.metadata().count("ranges") == 0) {  // the one contiguous range of files that predate "ranges"
      const ShardRange s = shard_range(layout.numel(), world, r);
      STRATA_REQUIRE(meta("shard_begin") == std::to_string(s.begin) && meta("shard_end") == std::to_string(s.end),
                     w, "holds elements [", meta("shard_begin"), ", ", meta("shard_end"), "), expected [",
                     s.begin, ", ", s.end, ")");
      mine.push_back(s);
    } else {
      try {
        for (const auto& p : nlohmann::json::parse(meta("ranges")))
          mine.push_back({p.at(0).get<int64_t>(), p.at(1).get<int64_t>()});
      } catch (const nlohmann::json::exception& e) {
        STRATA_FAIL(w, "metadata 'ranges' is not a list of [begin, end) pairs (", e.what(), ")");
      }
    }
    int64_t at = 0, last = 0;
    for (const ShardRange& s : mine) {
      STRATA_REQUIRE(s.begin >= last && s.begin <= s.end && s.end <= layout.numel(), w, "range [", s.begin, ", ",
                     s.end, ") is not ascending or lies outside the model's ", layout.numel(), " elements");
      held.push_back({s.begin, s.end, at, r});
      at += s.size();
      last = s.end;
    }
    for (const auto& [tname, dst] : {std::pair<const char*, std::vector<float>*>{"m", &file_m[size_t(r)]},
                                     {"v", &file_v[size_t(r)]}}) {
      const SafeTensor* t = file.find(tname);
      STRATA_REQUIRE(t != nullptr && t->dtype == DType::kF32 && t->shape == std::vector<int64_t>{at}, w,
                     "tensor '", tname, "' must be F32 [", at, "], the elements of its ranges");
      dst->resize(static_cast<size_t>(at));
      file.to_f32(*t, dst->data(), dst->size());
    }
  }
  std::sort(held.begin(), held.end(), [](const Held& a, const Held& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < held.size(); ++i)
    STRATA_REQUIRE(held[i].begin >= held[i - 1].end, "checkpoint '", info.dir, "': optimizer shards ",
                   held[i - 1].file, " and ", held[i].file, " both hold element ", held[i].begin);
  // The alignment gaps between tensors (engine/params.h) belong to no tensor: a split by tensors (the CUDA
  // backend's) does not hold them, and they read as 0.
  const auto tensor_elements = [&](int64_t lo, int64_t hi) {
    int64_t n = 0;
    for (const ParamEntry& e : layout.entries())
      n += std::max<int64_t>(0, std::min(hi, e.offset + e.numel()) - std::max(lo, e.offset));
    return n;
  };
  int64_t out = 0;
  size_t k = 0;  // the first held range that may overlap the current one
  for (const ShardRange& r : ranges) {
    while (k < held.size() && held[k].end <= r.begin) ++k;
    std::fill(m + out, m + out + r.size(), 0.0f);
    std::fill(v + out, v + out + r.size(), 0.0f);
    int64_t covered_tensor = 0;
    for (size_t i = k; i < held.size() && held[i].begin < r.end; ++i) {
      const int64_t lo = std::max(held[i].begin, r.begin), hi = std::min(held[i].end, r.end);
      if (lo >= hi) continue;
      const size_t src = static_cast<size_t>(held[i].at + (lo - held[i].begin));
      const std::vector<float>& fm = file_m[static_cast<size_t>(held[i].file)];
      const std::vector<float>& fv = file_v[static_cast<size_t>(held[i].file)];
      std::copy(fm.begin() + src, fm.begin() + src + (hi - lo), m + out + (lo - r.begin));
      std::copy(fv.begin() + src, fv.begin() + src + (hi - lo), v + out + (lo - r.begin));
      covered_tensor += tensor_elements(lo, hi);
    }
    const int64_t want = tensor_elements(r.begin, r.end);
    STRATA_REQUIRE(covered_tensor == want, "checkpoint '", info.dir, "': its optimizer shards lack ",
                   want - covered_tensor, " tensor elements of [", r.begin, ", ", r.end, ")");
    out += r.size();
  }
}

void load_checkpoint_optimizer(const std::string& ckpt_dir, AdamW& opt) {
  const CheckpointInfo info = read_checkpoint_info(ckpt_dir);
  load_buffers(open_verified(info, kOptimizerFile), {{"m.", &opt.m()}, {"v.", &opt.v()}});
}

}  // namespace strata
