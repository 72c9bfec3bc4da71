// placeholder: being written
#include <CLI/CLI.hpp>
#include "data/cli.h"
namespace strata::data {
void add_tokenizer_train_command(CLI::App& app) { app.add_subcommand("train", "(being written)"); }
}
