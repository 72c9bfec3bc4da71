// growth/cli.h: the `strata` subcommands that live in growth/.
#pragma once

namespace CLI {
class App;
}

namespace strata::growth {

void add_plan_command(CLI::App& app);  // strata plan (cli_plan.cpp)

}  // namespace strata::growth
