// data/prepare.h: `strata prepare`: text files -> train and validation token shards (llm.c format).
//
// Output, in `out_dir`:
//   train_000000.bin, train_000001.bin, ...   training shards of at most `shard_tokens` tokens
//   val_000000.bin, ...                       held-out shards (when a validation split is asked for)
//   manifest.json                             tokenizer, vocabulary, per-split documents/tokens/bytes, shard list
// Every document is preceded by <|endoftext|> (llm.c's convention), so documents are separated by it and the
// stream starts with it. "<|endoftext|>" written literally in a document is encoded as ordinary text.
// Documents are taken in input order (globs sorted), encoded in parallel, written in order: the output depends
// only on the inputs and the tokenizer, never on the thread count.
// Nothing half-written: shards are written into a temporary folder inside out_dir and moved into place only
// when every shard is complete; manifest.json is written last. A failure removes the temporary folder. Existing
// shards in out_dir are an error unless `overwrite` is set (then the old train_*/val_* shards are replaced).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace strata::data {

struct PrepareOptions {
  std::vector<std::string> train_inputs;  // files, directories or globs
  std::vector<std::string> val_inputs;    // held-out files; exclusive with val_fraction
  double val_fraction = 0.0;              // else: this fraction of the training documents (the last ones) is held out
  std::string tokenizer_path;
  std::string out_dir;
  uint64_t shard_tokens = 100'000'000;    // llm.c's shard size
  int threads = 0;                        // 0 = all cores
  bool overwrite = false;
  bool progress = true;                   // progress bar on stderr (when it is a terminal)
};

struct SplitSummary {
  uint64_t documents = 0;
  uint64_t tokens = 0;  // including one <|endoftext|> per document
  uint64_t bytes = 0;   // UTF-8 bytes of the documents' text
  std::vector<std::string> shards;
};

struct PrepareSummary {
  SplitSummary train, val;
  uint32_t vocab_size = 0;
  double seconds = 0;
};

PrepareSummary prepare(const PrepareOptions& opts);

}  // namespace strata::data
