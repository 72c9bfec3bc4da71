// tests/fuzz/fuzz_tokenizer.cpp: libFuzzer target for data/tokenizer.h.
//  - decode(encode(x)) == x for any bytes x, with and without special tokens allowed (abort on mismatch);
//  - encode_parallel agrees with encode;
//  - the input reinterpreted as uint32 token ids decodes or throws strata::Error (never crashes).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <vector>

#include "data/tokenizer.h"
#include "engine/check.h"

namespace {

const strata::data::Tokenizer& tokenizer() {
  static const strata::data::Tokenizer tok = strata::data::Tokenizer::load(STRATA_DEFAULT_TOKENIZER);
  return tok;
}

[[noreturn]] void fail(const char* what, size_t size) {
  std::fprintf(stderr, "fuzz_tokenizer: %s (input of %zu bytes)\n", what, size);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto& tok = tokenizer();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  for (const bool special : {false, true}) {
    const std::vector<strata::data::TokenId> ids = tok.encode(text, special);
    if (tok.decode(ids) != text) fail("decode(encode(x)) != x", size);
    for (const auto id : ids)
      if (id >= tok.vocab_size() || (!special && id == tok.eot())) fail("encode produced an invalid id", size);
    if (tok.encode_parallel(text, special, 2) != ids) fail("encode_parallel != encode", size);
  }
  std::vector<strata::data::TokenId> as_ids(size / sizeof(uint32_t));
  if (!as_ids.empty()) std::memcpy(as_ids.data(), data, as_ids.size() * sizeof(uint32_t));
  try {
    const std::string bytes = tok.decode(as_ids);
    for (const auto id : as_ids)
      if (id >= tok.vocab_size()) fail("decode accepted an out-of-range id", size);
    (void)bytes;
  } catch (const strata::Error&) {
    bool any_bad = false;
    for (const auto id : as_ids) any_bad |= id >= tok.vocab_size();
    if (!any_bad) fail("decode rejected valid ids", size);
  }
  return 0;
}
