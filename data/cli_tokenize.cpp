// placeholder: being written
#include <CLI/CLI.hpp>
#include "data/cli.h"
namespace strata::data {
void add_tokenize_command(CLI::App& app) { app.add_subcommand("tokenize", "(being written)"); }
}
