#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/check.h"

namespace strata {

int32_t sample_token(const float* logits, int V, const SampleOptions& opt, std::mt19937_64& rng) {
  STRATA_CHECK(V >= 1, "sample_token: empty vocabulary");
  if (opt.temperature <= 0.0f) return static_cast<int32_t>(std::max_element(logits, logits + V) - logits);
  std::vector<int32_t> ids(static_cast<size_t>(V));
  std::iota(ids.begin(), ids.end(), 0);
  const int k = (opt.top_k > 0 && opt.top_k < V) ? opt.top_k : V;
  auto higher = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  if (k < V) std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), higher);
  const double top = *std::max_element(logits, logits + V);
  std::vector<double> p(static_cast<size_t>(k));
  double sum = 0.0;
  for (int i = 0; i < k; ++i) {
    p[static_cast<size_t>(i)] = std::exp((static_cast<double>(logits[ids[static_cast<size_t>(i)]]) - top) /
                                         static_cast<double>(opt.temperature));
    sum += p[static_cast<size_t>(i)];
  }
  const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53 * sum;
  double acc = 0.0;
  for (int i = 0; i < k; ++i) {
    acc += p[static_cast<size_t>(i)];
    if (u < acc) return ids[static_cast<size_t>(i)];
  }
  return ids[static_cast<size_t>(k - 1)];
}

std::vector<int32_t> generate(Generator& gen, const std::vector<int32_t>& prompt, int n,
                              const SampleOptions& opt, std::mt19937_64& rng, int32_t stop) {
  STRATA_REQUIRE(!prompt.empty(), "generate: the prompt needs at least one token");
  std::vector<int32_t> out;
  const float* logits = gen.append(prompt.data(), static_cast<int>(prompt.size()));
  for (int i = 0; i < n; ++i) {
    const int32_t t = sample_token(logits, gen.vocab_size(), opt, rng);
    out.push_back(t);
    if (t == stop || gen.position() >= gen.max_seq_len()) break;
    logits = gen.append(&t, 1);
  }
  return out;
}

std::vector<int32_t> prompt_tokens(const data::Tokenizer& tok, const std::string& text) {
  std::vector<int32_t> prompt{static_cast<int32_t>(tok.eot())};
  for (data::TokenId id : tok.encode(text)) prompt.push_back(static_cast<int32_t>(id));
  return prompt;
}

std::string sample_text(Generator& gen, const data::Tokenizer& tok, const std::vector<int32_t>& prompt, int n,
                        const SampleOptions& opt, std::mt19937_64& rng) {
  const int32_t eot = static_cast<int32_t>(tok.eot());
  gen.reset();
  const std::vector<int32_t> out = generate(gen, prompt, n, opt, rng, eot);
  std::vector<data::TokenId> ids;
  for (const auto* part : {&prompt, &out})
    for (int32_t t : *part)
      if (t != eot) ids.push_back(static_cast<data::TokenId>(t));
  return tok.decode(ids);
}

}  // namespace strata
