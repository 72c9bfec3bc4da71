// engine/cli.h: the `strata` subcommands that live in engine/.
#pragma once

namespace CLI {
class App;
}

namespace strata {

void add_train_command(CLI::App& app);   // strata train  (cli_train.cpp)
void add_eval_command(CLI::App& app);    // strata eval   (cli_eval.cpp)
void add_sample_command(CLI::App& app);  // strata sample (cli_eval.cpp)

}  // namespace strata
