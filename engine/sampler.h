// engine/sampler.h: next-token sampling (temperature, top-k) and autoregressive generation with the KV-cache
// Generator of engine/model.h.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "engine/model.h"

namespace strata {

struct SampleOptions {
  float temperature = 0.8f;  // 0 = greedy (argmax)
  int top_k = 40;            // 0 = the whole vocabulary
};

// Draws the next token from logits (V). Ties in top-k keep the lower id; the draw uses one 53-bit uniform
// from rng, so a seed gives the same text with every standard library.
int32_t sample_token(const float* logits, int V, const SampleOptions& opt, std::mt19937_64& rng);

// Feeds the prompt (at least one token) and draws up to n tokens, stopping early after `stop` (>= 0) or at
// the model's context limit. Returns the drawn tokens only.
std::vector<int32_t> generate(Generator& gen, const std::vector<int32_t>& prompt, int n,
                              const SampleOptions& opt, std::mt19937_64& rng, int32_t stop = -1);

// <|endoftext|> followed by the tokens of `text`: how samples are prompted.
std::vector<int32_t> prompt_tokens(const data::Tokenizer& tok, const std::string& text);
// Generates from `prompt` (as prompt_tokens makes it; the generator is reset first), stopping at
// <|endoftext|>, and returns the prompt's text followed by the drawn text.
std::string sample_text(Generator& gen, const data::Tokenizer& tok, const std::vector<int32_t>& prompt, int n,
                        const SampleOptions& opt, std::mt19937_64& rng);

}  // namespace strata
