// `strata tokenize`: text -> GPT-2 token ids, or with --decode ids -> the exact bytes.
//
//   echo "Hello world" | strata tokenize                       -> 15496 995 198
//   strata tokenize --input doc.txt --format json --output ids.json
//   strata tokenize --decode --input ids.json --output doc.txt   (ids whitespace-separated or a JSON array)
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "data/cli.h"
#include "data/tokenizer.h"
#include "engine/check.h"
#include "engine/fileio.h"

namespace strata::data {
namespace {

struct TokenizeArgs {
  std::string tokenizer;
  std::string input = "-";
  std::string output = "-";
  std::string format = "text";
  bool decode = false;
  bool allow_special = false;
  int threads = 0;
};

std::string input_name(const std::string& path) { return path == "-" ? "<stdin>" : "'" + path + "'"; }

std::string read_input(const std::string& path) {
  if (path != "-") return read_file(path);
  std::string data;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), stdin)) > 0) data.append(buf, n);
  STRATA_REQUIRE(!std::ferror(stdin), "cannot read <stdin>: ", std::strerror(errno));
  return data;
}

void write_output(const std::string& path, std::string_view data) {
  if (path != "-") {
    write_file_atomic(path, data);
    return;
  }
  const size_t n = std::fwrite(data.data(), 1, data.size(), stdout);
  STRATA_REQUIRE(n == data.size() && std::fflush(stdout) == 0, "cannot write <stdout>: ", std::strerror(errno));
}

// Ids as whitespace-separated integers, or a JSON array of integers (when the first non-space character is '[').
std::vector<TokenId> parse_ids(const std::string& text, const std::string& name) {
  std::vector<TokenId> ids;
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && text[first] == '[') {
    const auto j = nlohmann::json::parse(text, nullptr, false);
    STRATA_REQUIRE(j.is_array(), "input ", name, ": not a valid JSON array of token ids");
    for (size_t i = 0; i < j.size(); ++i) {
      const auto& v = j[i];
      STRATA_REQUIRE(v.is_number_unsigned() && v.get<uint64_t>() <= UINT32_MAX, "input ", name, ": element ", i,
                     " (", v.dump().substr(0, 40), ") is not a token id (a non-negative integer)");
      ids.push_back(static_cast<TokenId>(v.get<uint64_t>()));
    }
    return ids;
  }
  const char* p = text.data();
  const char* end = p + text.size();
  auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; };
  for (;;) {
    while (p < end && is_space(*p)) ++p;
    if (p == end) break;
    const char* word_end = p;
    while (word_end < end && !is_space(*word_end)) ++word_end;
    TokenId id = 0;
    const auto [q, ec] = std::from_chars(p, word_end, id);
    STRATA_REQUIRE(ec == std::errc() && q == word_end, "input ", name, ": '",
                   std::string_view(p, std::min<size_t>(static_cast<size_t>(word_end - p), 40)), "' (id number ",
                   ids.size() + 1, ") is not a token id (a non-negative integer)");
    ids.push_back(id);
    p = word_end;
  }
  return ids;
}

void run_tokenize(const TokenizeArgs& a) {
  const std::string name = input_name(a.input);
  const Tokenizer tok = Tokenizer::load(a.tokenizer);
  const std::string in = read_input(a.input);
  if (a.decode) {
    const std::vector<TokenId> ids = parse_ids(in, name);
    for (size_t i = 0; i < ids.size(); ++i)
      STRATA_REQUIRE(ids[i] < tok.vocab_size(), "input ", name, ": token id ", ids[i], " (id number ", i + 1,
                     ") is outside the vocabulary (size ", tok.vocab_size(), ")");
    write_output(a.output, tok.decode(ids));
    return;
  }
  const std::vector<TokenId> ids = tok.encode_parallel(in, a.allow_special, a.threads);
  std::string out;
  out.reserve(ids.size() * 6 + 3);
  const bool json = a.format == "json";
  if (json) out += '[';
  char buf[16];
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out += json ? ',' : ' ';
    const auto r = std::to_chars(buf, buf + sizeof(buf), ids[i]);
    out.append(buf, r.ptr);
  }
  if (json) out += ']';
  out += '\n';
  write_output(a.output, out);
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
  auto args = std::make_shared<TokenizeArgs>();
  args->tokenizer = default_tokenizer_path();
  CLI::App* cmd = app.add_subcommand(
      "tokenize", "Encode text to GPT-2 token ids, or with --decode turn token ids back into the exact bytes");
  cmd->add_option("--tokenizer", args->tokenizer, "Tokenizer rank file (tiktoken format, .xz allowed)");
  cmd->add_option("--input", args->input, "Input file, or - for stdin: text to encode, or ids with --decode");
  cmd->add_option("--output", args->output,
                  "Output file (written atomically), or - for stdout: ids, or the decoded bytes with --decode");
  cmd->add_flag("--decode", args->decode,
                "Decode: read token ids (whitespace-separated or a JSON array) and write their bytes exactly");
  cmd->add_flag("--allow-special", args->allow_special,
                "Encode each literal <|endoftext|> as the special token (otherwise it is ordinary text)");
  cmd->add_option("--format", args->format, "Encoded ids as 'text' (space-separated, one line) or 'json' (an array)")
      ->check(CLI::IsMember({"text", "json"}));
  cmd->add_option("--threads", args->threads, "Encoding threads (0 = all cores); the ids do not depend on it")
      ->check(CLI::NonNegativeNumber);
  cmd->callback([args] { run_tokenize(*args); });
}

}  // namespace strata::data
