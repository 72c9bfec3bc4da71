// data/cli.h: the `strata` subcommands that live in data/. Each adds its subcommand, options and callback to the
// application; the callback throws strata::Error on bad input.
#pragma once

#include <string>

namespace CLI {
class App;
}

namespace strata::data {

void add_tokenize_command(CLI::App& app);          // strata tokenize        (cli_tokenize.cpp)
void add_tokenizer_train_command(CLI::App& app);   // strata tokenizer train (cli_tokenizer_train.cpp)
void add_prepare_command(CLI::App& app);           // strata prepare         (cli_prepare.cpp)

// Directory of the committed default data (tokenizer, corpora): $STRATA_DATA_DIR, else the source tree's
// data/default as configured at build time.
const char* default_data_dir();
// The default tokenizer file: <default_data_dir>/r50k_base.tiktoken.xz
std::string default_tokenizer_path();

}  // namespace strata::data
