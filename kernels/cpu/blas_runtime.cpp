// kernels/cpu/blas_runtime.cpp: OpenBLAS kernel-set query and the OPENBLAS_CORETYPE re-exec (see the header).
#include "kernels/cpu/blas_runtime.h"

#include <cblas.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace strata::ops {

std::string cpu_blas_core() {
  const char* name = openblas_get_corename();
  return name ? std::string(name) : std::string();
}

std::string cpu_blas_better_core() {
#if defined(__x86_64__)
  // Kernel sets OpenBLAS chose on purpose for a CPU it knows (0.3.21 names): left alone.
  constexpr std::array<std::string_view, 5> kGood = {"SkylakeX", "Cooperlake", "SapphireRapids", "Haswell",
                                                     "Zen"};
  const std::string core = cpu_blas_core();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const char* want = avx512 ? "SkylakeX" : avx2 ? "Haswell" : nullptr;
  if (!want) return {};
  for (std::string_view good : kGood)
    if (core == good) return {};
  return want;
#else
  return {};
#endif
}

void cpu_blas_fix_core(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr || argv == nullptr || argv[0] == nullptr) return;
  const std::string want = cpu_blas_better_core();
  if (want.empty()) return;
  if (::setenv("OPENBLAS_CORETYPE", want.c_str(), 1) != 0) return;
  std::fflush(nullptr);             // output buffered so far would be lost by the exec
  ::execv("/proc/self/exe", argv);  // returns only on failure: carry on with the kernels we have
}

}  // namespace strata::ops
