// engine/peak_flops.h: the dense bf16 tensor-core peak of the accelerators Strata reports MFU against, and
// the MFU arithmetic. MFU = (training FLOPs per token x tokens per second) / (peak x devices), with the model
// FLOPs of models::train_flops_per_token (6N plus attention), never the FLOPs a kernel happens to execute.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace strata {

struct PeakFlops {
  double tflops = 0.0;  // dense bf16 with fp32 accumulation, per device, boost clock (the datasheet figure)
  std::string label;    // e.g. "H100 SXM (datasheet)" or "--peak-tflops"
};

// The datasheet peak of a CUDA device by the name cudaGetDeviceProperties reports ("NVIDIA H100 80GB HBM3",
// "NVIDIA A100-SXM4-80GB", "NVIDIA H200", ...), case-insensitive; nullopt for a device not in the table (give
// --peak-tflops then). Table: A100 (SXM and PCIe) 312, H100 SXM 989.4, H100 PCIe 756.5, H200 and GH200 989.4,
// L40S 362.05, L4 121, A10 125 TFLOP/s.
std::optional<PeakFlops> datasheet_peak(std::string_view device_name);

// The peak used for MFU: `override_tflops` when > 0 (labelled "--peak-tflops"), else the table's entry for
// `device_name` (empty name: no device, e.g. the CPU backend), else nullopt (MFU is then not reported).
std::optional<PeakFlops> resolve_peak(double override_tflops, std::string_view device_name);

// Model FLOPs utilisation as a fraction: flops_per_token * tokens_per_s / (peak * devices).
double mfu(double flops_per_token, double tokens_per_s, const PeakFlops& peak, int devices = 1);

}  // namespace strata
