#include "engine/check.h"

#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>

namespace strata {

ProcessContext& process_context() {
  static ProcessContext ctx;
  return ctx;
}

std::string host_name() {
  char buf[HOST_NAME_MAX + 1] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "unknown-host";
  return buf;
}

std::string process_description() {
  const ProcessContext& c = process_context();
  std::string s = cat("rank ", c.rank, "/", c.world, " on host ", host_name());
  if (c.device >= 0) s += cat(", device ", c.device);
  return s;
}

namespace detail {

void check_failed(std::string_view what, std::string_view statement, const char* file, int line,
                  const char* func, const std::string& message) {
  // Internal failures are bugs or broken hardware, not user errors: report everything and abort, so a core
  // dump or a debugger catches the state. The message stays on one line for log grepping.
  std::fprintf(stderr, "strata: %.*s failed: %.*s%s%s at %s:%d in %s (%s)\n", static_cast<int>(what.size()),
               what.data(), static_cast<int>(statement.size()), statement.data(), message.empty() ? "" : ": ",
               message.c_str(), file, line, func, process_description().c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace detail
}  // namespace strata
