// data/bpe_train.h: training a byte-level BPE vocabulary of any size from text, for the tiktoken format.
//
// Vocabulary (ids are tiktoken ranks):
//   0..255            the single bytes 0x00..0xFF, in byte order;
//   256..256+M-1      one token per merge, in merge order (token bytes = bytes(left) + bytes(right));
//   256+M             <|endoftext|>, added by Tokenizer::from_tokens, not returned here.
//   vocab_size counts the special token, so M = vocab_size - 257 and vocab_size must be >= 257.
//
// Training:
//   1. Every document is split by the GPT-2 PreTokenizer, exactly as encoding does, so a merge never crosses a piece
//      boundary. Unique pieces are counted in parallel (per-chunk maps, merged by key: the result does not depend on
//      the thread count) and sorted by bytes. A piece is a "word": its current symbols (token ids) and its frequency.
//   2. The count of an adjacent pair (L, R) is sum over words of frequency x occurrences, occurrences counted
//      non-overlapping from the left as a merge applies them ("aaa" holds one (a, a)).
//   3. Repeat M times: take the pair with the highest count, ties to the smallest (L, R) (so training is
//      deterministic); add the token T = bytes(L) + bytes(R) with the next rank; update every word that holds an
//      adjacent pair whose bytes concatenate to T.
//      A word is updated by continuing the tiktoken encoding rule on its current symbols with the grown vocabulary:
//      repeatedly merge the adjacent pair whose concatenated bytes have the lowest rank (leftmost on ties) until no
//      adjacent pair concatenates to a token. Usually that just merges the (L, R) occurrences, but it also merges
//      other splits of T (A + B == T) and follow-on merges into older tokens (Z followed by X where Z + X is an
//      older token). Because of this every word's symbols are always exactly what encoding the piece with the
//      vocabulary so far gives (each word is "closed": no adjacent pair concatenates to a token), hence:
//        - the consistency property: encoding the training text with the trained vocabulary gives exactly the
//          token count the trainer ends with (BpeTrainResult::tokens_out), and the same segmentation;
//        - a chosen pair can never concatenate to an existing token, so no merge is ever skipped as a duplicate and
//          the token byte strings are distinct (checked as an internal invariant).
//      Classic BPE (merge only the (L, R) occurrences) would differ only in those follow-on cases; none was seen on
//      the embedded corpora or in randomized searches over tiny alphabets, but the trainer does not rely on that.
//   4. Counts are kept incrementally (pair -> count, pair -> words index, a lazy max-heap), so each merge costs
//      time proportional to the words it touches.
//   Stop condition: if the best pair's count falls below min_frequency (or no pair is left) before M merges, that
//   is a strata::Error naming how many merges the corpus supports, so a vocabulary always has the requested size.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace strata::data {

struct BpeTrainOptions {
  uint32_t vocab_size = 8192;   // including <|endoftext|>; >= 257
  int threads = 0;              // for pre-tokenizing and counting; 0 = all cores. The result does not depend on it.
  uint64_t min_frequency = 2;   // a merge needs a pair count of at least this (>= 1)
  bool progress = false;        // progress lines on stderr
};

struct BpeTrainResult {
  std::vector<std::string> tokens;                     // byte strings in rank order, 256 + merges, no special token
  std::vector<std::pair<uint32_t, uint32_t>> merges;   // merges[i] = (left id, right id) that made token 256 + i
  std::vector<uint64_t> merge_counts;                  // the pair count when merges[i] was chosen
  uint64_t documents = 0;
  uint64_t bytes = 0;          // total bytes of the training text (= tokens with the 256 byte tokens alone)
  uint64_t pieces = 0;         // total pre-tokenizer pieces
  uint64_t unique_pieces = 0;
  uint64_t tokens_out = 0;     // tokens of the whole training text with the trained vocabulary
  double seconds_count = 0;    // pre-tokenizing + counting
  double seconds_merge = 0;    // the merge loop
};

// Trains on `documents` (each pre-tokenized on its own) and returns the vocabulary and statistics.
// Throws strata::Error when vocab_size < 257, min_frequency == 0, or the corpus supports fewer merges.
BpeTrainResult train_bpe_detailed(const std::vector<std::string_view>& documents, const BpeTrainOptions& options);

// The token byte strings in rank order (without the special token), ready for Tokenizer::from_tokens.
std::vector<std::string> train_bpe(const std::vector<std::string_view>& documents, const BpeTrainOptions& options);

}  // namespace strata::data
