// libFuzzer target for the shard validator (data/shard.h). The bytes are a shard file's contents; they go
// through Shard::view, which runs validate_shard_bytes, the same code Shard::open runs on a mapped file, with
// a GPT-2 vocabulary (tokens checked) and with none. A rejection must be a strata::Error with a one-line
// message naming the shard; an accepted shard must have exactly the size its header claims and be readable
// end to end. Random bytes rarely form a valid header, so each input is also tried behind a synthesized
// header (the width from the first byte, the count that fits, sometimes off by a little), which drives the
// token scan and the reads.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "data/shard.h"
#include "engine/check.h"

namespace {

void check_one(const uint8_t* data, size_t size, uint32_t vocab) {
  using strata::data::Shard;
  try {
    const Shard s = Shard::view("fuzz.bin", data, size, vocab);
    if (size != strata::data::kShardHeaderBytes + s.size() * strata::data::token_bytes(s.width()))
      std::abort();
    std::vector<int32_t> out(s.size());
    s.read(0, s.size(), out.data());
    for (size_t i = 0; i < s.size(); ++i) {
      const uint32_t t = s[i];
      if (static_cast<int32_t>(t) != out[i]) std::abort();
      if (vocab > 0 && t >= vocab) std::abort();
    }
  } catch (const strata::Error& e) {
    const std::string msg = e.what();
    if (msg.rfind("shard 'fuzz.bin': ", 0) != 0 || msg.find('\n') != std::string::npos) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  check_one(data, size, 50257);
  check_one(data, size, 0);

  if (size < 2) return 0;
  namespace d = strata::data;
  const bool u32 = (data[0] & 1) != 0;
  // The count fits the payload half the time and is off by -2..1 (extra bytes / truncated) otherwise.
  const int32_t sel = static_cast<int32_t>((data[0] >> 1) & 7);
  const int32_t skew = sel < 4 ? 0 : sel - 6;
  const size_t payload = size - 1;
  const size_t width = u32 ? 4 : 2;
  std::vector<uint8_t> buf(d::kShardHeaderBytes + payload, 0);
  const int32_t header[3] = {u32 ? d::kShardMagicU32 : d::kShardMagicU16,
                             u32 ? d::kShardVersionU32 : d::kShardVersionU16,
                             static_cast<int32_t>(payload / width) + skew};
  std::memcpy(buf.data(), header, sizeof(header));
  std::memcpy(buf.data() + d::kShardHeaderBytes, data + 1, payload);
  check_one(buf.data(), buf.size(), 50257);
  check_one(buf.data(), buf.size(), 0);
  return 0;
}
