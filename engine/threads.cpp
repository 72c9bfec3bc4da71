// set_compute_threads (engine/parallel.h), compiled with the training engine's OpenMP flags.
#include "engine/parallel.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace strata {

int set_compute_threads(int requested) {
#ifdef _OPENMP
  omp_set_num_threads(resolve_threads(requested));
  return omp_get_max_threads();
#else
  (void)requested;
  return 1;
#endif
}

}  // namespace strata
