#include "engine/peak_flops.h"

#include <algorithm>
#include <cctype>

namespace strata {
namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

// True when `word` occurs in `s` not followed by a letter or digit ("a10" in "nvidia a10" but not in
// "nvidia a100-sxm4").
bool has_word(const std::string& s, std::string_view word) {
  for (size_t at = s.find(word); at != std::string::npos; at = s.find(word, at + 1)) {
    const size_t end = at + word.size();
    const bool starts = at == 0 || !std::isalnum(static_cast<unsigned char>(s[at - 1]));
    const bool ends = end == s.size() || !std::isalnum(static_cast<unsigned char>(s[end]));
    if (starts && ends) return true;
  }
  return false;
}

}  // namespace

std::optional<PeakFlops> datasheet_peak(std::string_view device_name) {
  const std::string n = lower(device_name);
  auto entry = [](double t, const char* what) { return PeakFlops{t, std::string(what) + " (datasheet)"}; };
  // NVL variants are not in the table: their per-device figures differ from SXM's and PCIe's.
  if (has_word(n, "nvl")) return std::nullopt;
  if (has_word(n, "h200") || has_word(n, "gh200"))
    return entry(989.4, has_word(n, "gh200") ? "GH200" : "H200");
  if (has_word(n, "h100")) {
    if (has_word(n, "pcie")) return entry(756.5, "H100 PCIe");
    return entry(989.4, "H100 SXM");  // "NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM5 ..."
  }
  if (has_word(n, "a100")) return entry(312.0, "A100");  // "A100-SXM4-80GB", "A100 80GB PCIe"
  if (has_word(n, "l40s")) return entry(362.05, "L40S");
  if (has_word(n, "l4")) return entry(121.0, "L4");
  if (has_word(n, "a10")) return entry(125.0, "A10");
  return std::nullopt;
}

std::optional<PeakFlops> resolve_peak(double override_tflops, std::string_view device_name) {
  if (override_tflops > 0.0) return PeakFlops{override_tflops, "--peak-tflops"};
  if (device_name.empty()) return std::nullopt;
  return datasheet_peak(device_name);
}

double mfu(double flops_per_token, double tokens_per_s, const PeakFlops& peak, int devices) {
  return flops_per_token * tokens_per_s / (peak.tflops * 1e12 * std::max(devices, 1));
}

}  // namespace strata
