// The MFU peak table: the names cudaGetDeviceProperties reports for each card map to that card's datasheet
// dense bf16 figure, look-alike names (A10 / A100, L4 / L40S, NVL parts) do not borrow another card's peak,
// and the MFU arithmetic matches a hand computation.
#include <gtest/gtest.h>

#include "engine/peak_flops.h"

namespace strata {
namespace {

double peak_of(const char* name) {
  const auto p = datasheet_peak(name);
  return p ? p->tflops : -1.0;
}

TEST(PeakFlops, DeviceNamesMapToTheirDatasheetPeak) {
  EXPECT_EQ(peak_of("NVIDIA H100 80GB HBM3"), 989.4);  // SXM5, as the driver names it
  EXPECT_EQ(peak_of("NVIDIA H100 PCIe"), 756.5);
  EXPECT_EQ(peak_of("NVIDIA H200"), 989.4);
  EXPECT_EQ(peak_of("NVIDIA GH200 480GB"), 989.4);
  EXPECT_EQ(peak_of("NVIDIA A100-SXM4-80GB"), 312.0);
  EXPECT_EQ(peak_of("NVIDIA A100-PCIE-40GB"), 312.0);
  EXPECT_EQ(peak_of("NVIDIA A100 80GB PCIe"), 312.0);
  EXPECT_EQ(peak_of("NVIDIA L40S"), 362.05);
  EXPECT_EQ(peak_of("NVIDIA L4"), 121.0);
  EXPECT_EQ(peak_of("NVIDIA A10"), 125.0);
  EXPECT_EQ(datasheet_peak("NVIDIA H100 PCIe")->label, "H100 PCIe (datasheet)");
}

TEST(PeakFlops, LookAlikeAndUnknownNamesAreNotGuessed) {
  EXPECT_EQ(peak_of("NVIDIA L40"), -1.0);       // not L4, not L40S
  EXPECT_EQ(peak_of("NVIDIA A10G"), -1.0);      // not A10's figure
  EXPECT_EQ(peak_of("NVIDIA H100 NVL"), -1.0);  // NVL parts differ from SXM and PCIe
  EXPECT_EQ(peak_of("NVIDIA GeForce RTX 4090"), -1.0);
  EXPECT_EQ(peak_of(""), -1.0);
}

TEST(PeakFlops, OverrideWinsAndNoDeviceMeansNoPeak) {
  EXPECT_EQ(resolve_peak(500.0, "NVIDIA H200")->tflops, 500.0);
  EXPECT_EQ(resolve_peak(500.0, "NVIDIA H200")->label, "--peak-tflops");
  EXPECT_EQ(resolve_peak(0.0, "NVIDIA H200")->tflops, 989.4);
  EXPECT_FALSE(resolve_peak(0.0, "").has_value());  // the CPU backend
  EXPECT_EQ(resolve_peak(2.5, "")->tflops, 2.5);
}

TEST(PeakFlops, MfuIsModelFlopsOverPeakTimesDevices) {
  // gpt2-124m at T=1024: ~8.5e8 FLOPs per token; 400k tokens/s on one H100 SXM = 3.4e14 / 9.894e14.
  const PeakFlops h100{989.4, "H100 SXM (datasheet)"};
  EXPECT_DOUBLE_EQ(mfu(8.5e8, 4.0e5, h100), 8.5e8 * 4.0e5 / 989.4e12);
  EXPECT_DOUBLE_EQ(mfu(8.5e8, 8.0e5, h100, 2), mfu(8.5e8, 4.0e5, h100));
}

}  // namespace
}  // namespace strata
