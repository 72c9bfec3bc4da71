// strata: the one binary. main stays thin: parse -> validate -> print config -> run; every subcommand lives
// beside the code it drives and registers itself here.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>

#include "data/cli.h"
#include "engine/check.h"
#include "engine/cli.h"
#include "growth/cli.h"
#include "kernels/cpu/blas_runtime.h"
#include "models/cli.h"
#if defined(STRATA_HAVE_CUDA)
#include "engine/cuda_backend.h"
#endif

namespace {
constexpr const char* kVersion = "0.1.0";
}

int main(int argc, char** argv) {
  strata::ops::cpu_blas_fix_core(argv);  // may re-execute once with OPENBLAS_CORETYPE set (see blas_runtime.h)
#if defined(STRATA_HAVE_CUDA)
  strata::register_cuda_backend(&strata::make_cuda_backend);  // `strata train --device cuda`
#endif
  CLI::App app{"Strata: transformer pre-training with mid-run model growth", "strata"};
  app.set_version_flag("--version", kVersion);
  app.set_config("--config", "", "Read options from a TOML or INI file ([section] per subcommand)");
  app.allow_config_extras(CLI::config_extras_mode::error);  // a misspelt key is an error, not ignored
  app.option_defaults()->always_capture_default();
  app.require_subcommand(1);
  app.get_formatter()->column_width(40);

  strata::models::add_model_command(app);
  strata::data::add_prepare_command(app);
  strata::data::add_tokenize_command(app);
  CLI::App* tok = app.add_subcommand("tokenizer", "Tokenizer utilities");
  tok->require_subcommand(1);
  strata::data::add_tokenizer_train_command(*tok);
  strata::add_train_command(app);
  strata::add_eval_command(app);
  strata::add_sample_command(app);
  strata::growth::add_plan_command(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version are "errors" with exit code 0; every real parse error is one line, exit 2.
    if (e.get_exit_code() == 0) return app.exit(e);
    std::fprintf(stderr, "strata: error: %s (see --help)\n", e.what());
    return 2;
  } catch (const strata::Error& e) {
    std::fprintf(stderr, "strata: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "strata: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
