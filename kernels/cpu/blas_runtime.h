// kernels/cpu/blas_runtime.h: which OpenBLAS kernels the CPU ops run, and the fix for a misdetection.
//
// Debian 12's OpenBLAS (0.3.21, DYNAMIC_ARCH) picks its kernel set from the CPU model when the library loads.
// On Intel models newer than it knows (e.g. Emerald Rapids, family 6 model 207, which is what the development
// machines report) it falls back to "Prescott" (SSE3): sgemm then runs ~6x slower than with the AVX-512
// ("SkylakeX") or AVX2 ("Haswell") kernels the CPU supports. The choice is made before main() runs, from the
// OPENBLAS_CORETYPE environment variable, so the fix is to set that variable and re-execute the program.
#pragma once

#include <string>

namespace strata::ops {

// The OpenBLAS kernel set in use, e.g. "SkylakeX", "Haswell", "Prescott".
std::string cpu_blas_core();

// The OPENBLAS_CORETYPE matching this CPU's features ("SkylakeX" with AVX-512, "Haswell" with AVX2 + FMA)
// when OpenBLAS fell back to an older kernel set (SSE-era names); "" when it chose a modern set itself
// (Haswell, Zen, SkylakeX, Cooperlake, SapphireRapids) or the CPU has neither AVX2 nor AVX-512.
std::string cpu_blas_better_core();

// Call first thing in main(): when cpu_blas_better_core() is non-empty and OPENBLAS_CORETYPE is unset, sets
// it and re-executes /proc/self/exe with the same argv (the variable then stays set, so this happens once).
// Returns normally when there is nothing to do or the exec fails.
void cpu_blas_fix_core(char** argv);

}  // namespace strata::ops
