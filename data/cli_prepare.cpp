// placeholder: being written
#include <CLI/CLI.hpp>
#include <cstdlib>
#include "data/cli.h"
namespace strata::data {
const char* default_data_dir() {
  const char* env = std::getenv("STRATA_DATA_DIR");
  return (env && *env) ? env : STRATA_DEFAULT_DATA_DIR;
}
std::string default_tokenizer_path() { return std::string(default_data_dir()) + "/r50k_base.tiktoken.xz"; }
void add_prepare_command(CLI::App& app) { app.add_subcommand("prepare", "(being written)"); }
}
