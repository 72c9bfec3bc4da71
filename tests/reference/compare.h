// tests/reference/compare.h: comparing the engine's fp32 tensors against a PyTorch golden tensor, as the
// reference tests do it (tests/engine/reference_test.cpp, tests/growth/reference_*_test.cpp): the error
// is max |engine - reference| divided by a scale (by default max |reference|), so one tolerance fits tensors
// of any magnitude. STRATA_REFERENCE_VERBOSE=1 prints every comparison's error.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iomanip>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/fileio.h"
#include "engine/safetensors.h"
#include "models/model_config.h"
#include "models/model_config_json.h"

namespace strata::test {

struct RefError {
  double max_err = 0, scale = 0;
  int64_t index = -1;
  float got = 0, want = 0;
};

// max |got - want| over n elements and where, plus max |want| (or the given scale when >= 0).
inline RefError compare_to_reference(const float* got, const float* want, size_t n, double scale = -1) {
  RefError e;
  double max_ref = 0;
  for (size_t i = 0; i < n; ++i) {
    max_ref = std::max(max_ref, std::abs(static_cast<double>(want[i])));
    const double d = std::abs(static_cast<double>(got[i]) - want[i]);
    if (!(d <= e.max_err)) {  // NaN counts as the worst
      e.max_err = std::isnan(d) ? INFINITY : d;
      e.index = static_cast<int64_t>(i);
      e.got = got[i];
      e.want = want[i];
    }
  }
  e.scale = scale >= 0 ? scale : max_ref;
  return e;
}

// Expects max |got - want| / scale <= tol; returns the relative error. A zero scale fails (the comparison
// would pass vacuously).
inline double expect_close_to_reference(const std::string& what, const float* got, const float* want,
                                        size_t n, double tol, double scale = -1) {
  const RefError e = compare_to_reference(got, want, n, scale);
  EXPECT_GT(e.scale, 0.0) << what << ": the reference is all zeros, so the comparison would pass vacuously";
  if (!(e.scale > 0)) return INFINITY;
  const double rel = e.max_err / e.scale;
  if (std::getenv("STRATA_REFERENCE_VERBOSE"))
    std::printf("  %-28s %.2e  (tolerance %.0e)\n", what.c_str(), rel, tol);
  EXPECT_LE(rel, tol) << std::setprecision(3) << what << ": max abs err " << e.max_err << " at index "
                      << e.index << " (engine " << e.got << ", reference " << e.want << "), scale " << e.scale
                      << " -> " << rel << " > tolerance " << tol;
  return rel;
}

inline double expect_close_to_reference(const std::string& what, const float* got,
                                        const std::vector<float>& want, double tol, double scale = -1) {
  return expect_close_to_reference(what, got, want.data(), want.size(), tol, scale);
}

// A (B, T) int32 tensor of a case's batch file (inputs or targets).
inline std::vector<int32_t> batch_ints(const SafetensorsFile& f, const std::string& name, int64_t B,
                                       int64_t T) {
  const SafeTensor& t = f.get(name);
  EXPECT_EQ(t.dtype, DType::kI32) << name;
  EXPECT_EQ(t.shape, (std::vector<int64_t>{B, T})) << name;
  std::vector<int32_t> v(static_cast<size_t>(t.numel()));
  std::copy_n(reinterpret_cast<const uint8_t*>(t.data), t.bytes, reinterpret_cast<uint8_t*>(v.data()));
  return v;
}

// A reference case's common inputs, for the reference tests' fixtures to derive from: load(model) reads
// STRATA_TEST_DATA_DIR/reference/<model>/case.json (its model, B and T) and batch.safetensors (inputs and
// targets, (B, T) each).
struct ReferenceCase {
  void load(const std::string& model) {
    dir_ = std::string(STRATA_TEST_DATA_DIR) + "/reference/" + model + "/";
    json_ = nlohmann::json::parse(read_file(dir_ + "case.json"));
    cfg_ = models::model_config_from_json(json_.at("model"));
    B_ = json_.at("B").get<int>();
    T_ = json_.at("T").get<int>();
    const SafetensorsFile batch = SafetensorsFile::open(dir_ + "batch.safetensors");
    inputs_ = batch_ints(batch, "inputs", B_, T_);
    targets_ = batch_ints(batch, "targets", B_, T_);
  }

  std::string dir_;  // ends with '/'
  nlohmann::json json_;
  models::ModelConfig cfg_;
  int B_ = 0, T_ = 0;
  std::vector<int32_t> inputs_, targets_;
};

}  // namespace strata::test
