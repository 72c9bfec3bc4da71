// strata: the one binary. main stays thin: parse -> validate -> print config -> run; every subcommand lives
// beside the code it drives and registers itself here.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>

#include "data/cli.h"
#include "engine/check.h"
#include "engine/comm.h"
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

  // Under mpirun every fatal error names the rank and host; an error one rank hit alone aborts the world (the
  // launcher ends the other ranks), an error every rank agreed on is printed once and ends every rank.
  const auto fail = [](const char* what, const char* suffix) {
    const bool many = strata::process_context().world > 1;
    std::fprintf(stderr, "strata: error: %s%s%s\n", many ? (strata::process_description() + ": ").c_str() : "",
                 what, suffix);
    strata::abort_world(1);
    return 1;
  };
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version are "errors" with exit code 0; every real parse error is one line, exit 2.
    if (e.get_exit_code() == 0) return app.exit(e);
    fail(e.what(), " (see --help)");
    return 2;
  } catch (const strata::AgreedError& e) {
    if (strata::process_context().rank == 0) std::fprintf(stderr, "strata: error: %s\n", e.what());
    strata::finalize_world();
    return 1;
  } catch (const strata::Error& e) {
    return fail(e.what(), "");
  } catch (const std::exception& e) {
    return fail(e.what(), "");
  }
  strata::finalize_world();
  return 0;
}
