// engine/checkpoint.h: training checkpoints, and parameter exchange through safetensors files.
//
// A run folder holds checkpoints ckpt-<step, 8 digits>/ (ckpt-00001000/), each with
//   model.safetensors      every parameter tensor of the ParamLayout, F32, named TensorSpec::name, shape
//                          ParamEntry::stored_shape() ((L, ...) for per-layer kinds); metadata {"format":
//                          "strata", "family": "llama"|"gpt2", "config": <model config JSON, as a string>}
//   optimizer.safetensors  the AdamW moments "m.<name>" and "v.<name>", same shapes (absent when the caller
//                          saved without an optimizer)
//   state.json             {"format_version": 1, "step": n, "model": <model config JSON>, "trainer": <the
//                          caller's object: tokens, loader state, rng, optimizer t, ...>, "files":
//                          {"model.safetensors": {"bytes": n, "crc64": "<16 hex digits>"}, ...}}
// The CRC-64 (liblzma, ECMA-182) of each file is checked before it is parsed, so a flipped byte anywhere is
// an error naming the file, never silently different weights.
//
// Saving is atomic: everything is written and fsynced into <run>/.ckpt-<step>.tmp-<pid>/, which is then
// renamed to ckpt-<step> (an existing ckpt-<step> is renamed away first and deleted after). A crash leaves at
// most a dot-folder that every reader ignores; a failed save removes its temporary folder and leaves the
// existing checkpoints untouched. Old checkpoints are pruned the same way (renamed to a dot-folder, then
// deleted), so a half-deleted checkpoint never looks complete.
//
// All errors are strata::Error with one line naming the file or folder.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "engine/comm.h"
#include "engine/optim.h"
#include "engine/params.h"
#include "engine/safetensors.h"
#include "models/model_config.h"

namespace strata {

inline constexpr int kCheckpointFormatVersion = 1;

// "ckpt-00001000".
std::string checkpoint_dir_name(long step);

// Writes ckpt-<step> under run_dir (created when missing) and returns its path. `opt` may be null (no
// optimizer.safetensors). `trainer_state` must be a JSON object (null is taken as {}). After the save, only
// the newest `keep_last` checkpoints (by step) are kept (keep_last <= 0: all); the one just written is never
// deleted.
// Extra safetensors files of a checkpoint (growth state), written and checksummed like the others.
struct CheckpointExtra {
  std::string file;  // e.g. "growth.safetensors"
  std::vector<TensorView> tensors;
  SafetensorsMetadata metadata;
};
std::string save_checkpoint(const std::string& run_dir, long step, const ParamBuffer& params,
                            const AdamW* opt, const nlohmann::json& trainer_state, int keep_last,
                            const std::vector<CheckpointExtra>& extra = {});

// `path` is a checkpoint folder (it holds state.json), or a run folder: its complete checkpoint with the
// highest step (ckpt-<digits>/ holding state.json; dot-folders such as leftover temporaries are ignored).
// Errors: missing path, a regular file, a folder with no complete checkpoint.
std::string resolve_checkpoint(const std::string& path);

// The complete checkpoints of a run folder, ordered by step (step -> path); empty when there are none or the
// folder does not exist.
std::map<long, std::string> list_checkpoints(const std::string& run_dir);

struct CheckpointFile {
  uint64_t bytes = 0;
  uint64_t crc64 = 0;
};

struct CheckpointInfo {
  std::string dir;
  long step = 0;
  models::ModelConfig model;
  nlohmann::json trainer;                       // the object save_checkpoint was given
  std::map<std::string, CheckpointFile> files;  // file name -> recorded size and checksum
  // optimizer.safetensors, or ZeRO-1 shards optimizer-<r>-of-<R>.safetensors.
  bool has_optimizer() const {
    return files.count("optimizer.safetensors") == 1 ||
           files.lower_bound("optimizer-") != files.lower_bound("optimizer.");
  }
};

// Distributed runs (engine/comm.h): every rank calls this with the same step, trainer state and keep_last.
// Rank 0 creates the temporary folder and writes what save_checkpoint writes (params, `opt` when the optimizer
// state is replicated, `extra`); every rank writes its own `rank_files` (ZeRO-1: its optimizer shard) into the
// same folder, which must be on a file system every node shares. Rank 0 writes state.json, the completion
// marker, only after every rank reported its files written (their sizes and CRC-64s go into it), then renames
// the folder into place. A failure on any rank is an AgreedError on every rank naming that rank, and no
// checkpoint appears. Returns the checkpoint's path on every rank.
std::string save_checkpoint_distributed(Communicator& comm, const std::string& run_dir, long step,
                                        const ParamBuffer& params, const AdamW* opt,
                                        const nlohmann::json& trainer_state, int keep_last,
                                        const std::vector<CheckpointExtra>& extra,
                                        const std::vector<CheckpointExtra>& rank_files);

// ZeRO-1 optimizer shards: "optimizer-<rank>-of-<world>.safetensors" (5 digits each) holds tensors "m" and "v",
// F32 [elements held]: the elements of the flat ranges `ranges` (ascending, disjoint) one after another, with
// metadata "ranges" (a JSON array of [begin, end) pairs), numel, rank, world and the model config. The CPU
// backend's shard is one range (engine/comm.h's shard_range), the CUDA backend's its layer-wise pieces
// (engine/shard_map.h); together the files of a checkpoint hold every element of every tensor once. (Files
// written before "ranges" existed name their one range by shard_begin and shard_end.)
std::string optimizer_shard_file(int rank, int world);
CheckpointExtra optimizer_shard_extra(const ParamLayout& layout, const std::vector<ShardRange>& ranges,
                                      const float* m, const float* v, int rank, int world);

// Parses and validates <ckpt_dir>/state.json (format version, step, model config, trainer object, file
// table).
CheckpointInfo read_checkpoint_info(const std::string& ckpt_dir);

// Loads the weights into `params` after checking model.safetensors' size and CRC-64. Every tensor of params'
// layout must be present, F32, with its exact stored shape (an error names the tensor, the expected and the
// found shape); a tensor the layout lacks is an error too. Nothing is copied unless everything matches.
void load_checkpoint_params(const std::string& ckpt_dir, ParamBuffer& params);

// Opens one of the checkpoint's files listed in state.json after checking its size and CRC-64.
SafetensorsFile open_checkpoint_file(const std::string& ckpt_dir, const std::string& file);

// The moments of the flat ranges `ranges` of `layout` (ascending, disjoint; m and v receive their elements
// one after another), from optimizer.safetensors or from the shards of any number of ranks, whichever way
// they were split: a run resumes on any rank count and either backend. Checks sizes, CRC-64s, names, shapes,
// that the shards do not overlap and that they hold every element asked for.
void load_checkpoint_moments(const CheckpointInfo& info, const ParamLayout& layout,
                             const std::vector<ShardRange>& ranges, float* m, float* v);

// Loads the AdamW moments (same checks, on optimizer.safetensors). The step counter t is not in this file:
// the caller restores it from the trainer state (AdamW::set_t).
void load_checkpoint_optimizer(const std::string& ckpt_dir, AdamW& opt);

// Parameters as a safetensors file, for checkpoints and for exchanging weights with PyTorch. The metadata
// gets "format" = "strata", "family" and "config" (the model config JSON) unless `metadata` sets those keys.
WrittenFile save_params_safetensors(const std::string& path, const ParamBuffer& params,
                                    const SafetensorsMetadata& metadata = {});
// Reads `path` into params with the checks of load_checkpoint_params (no checksum: a bare file has none).
void load_params_safetensors(const std::string& path, ParamBuffer& params);

// "%016x" of a CRC-64, as stored in state.json.
std::string crc64_hex(uint64_t crc);

}  // namespace strata
