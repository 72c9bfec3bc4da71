// tests/tolerances.h: every numeric tolerance of the test suites, each with the reason for its size. A test
// compares against an independent reference; these say how far apart two correct computations may be.
#pragma once

namespace strata::test {

// ---- CPU ops (tests/kernels/cpu_ops_test.cpp), relative to the largest |reference| entry
// -------------------- Central differences with step kFdStep on O(1) inputs: truncation ~h^2 |f'''| ~ 1e-10,
// rounding ~1e-16 |L| / h ~ 1e-10; 1e-6 leaves headroom and still catches any wrong term (those are O(1e-2)
// or larger).
constexpr double kFdStep = 1e-5;
constexpr double kTolFiniteDiff = 1e-6;
// Double op vs a naive double reference: only the summation order (BLAS blocking, simd reductions) differs.
constexpr double kTolDoubleRef = 1e-12;
// Float op vs double op on identical inputs: float rounding (6e-8) grown over sums of up to ~1000 terms, the
// float exp polynomial (~2e-7 relative), and the float softmax feeding a second product in attention.
constexpr double kTolFloatVsDouble = 3e-5;
// Accumulating gradient called twice vs twice its first increment: one more rounding per element in double.
constexpr double kTolTwice = 1e-12;
// cpu_detail::exp_approx vs std::exp, relative: Cephes' expf bound (~2 ulp) plus the input rounding.
constexpr double kTolExpApprox = 4e-7;

// ---- the whole model vs the PyTorch reference (tests/engine/reference_test.cpp), relative to each tensor's
// largest |reference| entry (final parameters: to the largest update)
// ----------------------------------------- Logits (B,T,V) and the mean loss: fp32 products over C = 32,
// softmax over V = 67.
constexpr double kRefForwardTol = 1e-5;
// Every parameter's gradient, and the pre-clip global norm of each step (one more reduction).
constexpr double kRefGradTol = 5e-5;
// The loss before each step: the parameters carry the optimizer's error from the earlier steps too.
constexpr double kRefStepLossTol = 5e-5;
// The learning rates: the same formula in double on both sides, compared as the F32 the golden file stores.
constexpr double kRefLrTol = 1e-7;
// Final parameters, relative to the largest update. AdamW's update m^/(sqrt(v^) + eps) has slope up to 1/eps
// near g = 0, so a gradient error dg moves an element by up to ~2 lr dg / eps per step: with the cases' eps
// 1e-4 (make_case.cpp) and dg ~5e-8, at most ~1e-3 of the update whatever the gradient values.
constexpr double kRefFinalTol = 1e-3;

// ---- model invariants (tests/engine/model_test.cpp)
// --------------------------------------------------------- kAccumTol: the k micro-batch gradients are summed
// in a different order than one big batch's (BLAS reductions over N), so they agree to fp32 rounding relative
// to the largest gradient. kCacheTol: the generator's attention reduces over the same keys in the same order
// but through a different op (decode vs batched), so logits agree to a few fp32 ulps relative to their scale.
constexpr double kAccumTol = 2e-5;
constexpr double kCacheTol = 2e-5;
// Mean losses compared relatively: the same per-position losses summed in another order (float sums of a few
// dozen terms in the model, or in double across micro-batches) differ by a few fp32 ulps.
constexpr double kLossSumTol = 1e-5;
// `strata train` with 4 accumulated micro-batches vs one 4x batch (tests/engine/train_cli_test.cpp), over 3
// steps: the loss (printed with 9 digits) and grad norm differ by the fp32 summation order of the gradients,
// which AdamW carries into the next steps' parameters.
constexpr double kCliAccumTol = 1e-4;

// ---- schedules and AdamW (tests/engine/schedule_optim_test.cpp)
// -------------------------------------------- kScheduleTol: the schedule is computed in double; only
// rounding differs from the closed form. kAdamTol: the engine updates in fp32; three steps of O(1e-3) updates
// accumulate a few fp32 ulps of 1.
constexpr double kScheduleTol = 1e-15;
constexpr double kAdamTol = 2e-6;
// kNormTol: the global norm is summed in double; against a double re-sum only the order differs.
// kClippedNormTol: after clipping to 1, the fp32 gradients' norm is 1 to fp32 rounding of the scale.
constexpr double kNormTol = 1e-9;
constexpr double kClippedNormTol = 1e-5;

// ---- growth operators (tests/growth/growth_test.cpp), relative to the largest |logit| or |gradient|
// kGrowthPreserveTol: a function-preserving growth recomputes the same logits through wider or reordered fp32
// sums (split fan-ins alpha w + (1 - alpha) w, added zero terms): a few ulps.
constexpr double kGrowthPreserveTol = 1e-5;
// LLaMA hidden growth by zero/random with norm eps 1e-5: normed vectors move by up to eps (C'/C - 1) / (2 m),
// stream mean square m ~ 1e-2 in the test models, so ~5e-4 per norm (measured 6e-4 on the logits, C'/C = 2).
constexpr double kGrowthNormEpsTol = 2e-3;
// Growth that is not function-preserving (direct at a non-integer ratio, GPT-2 LayerNorm under zero/random):
// the norm's statistics change by O(10%), the logits by less than half their scale (measured 0.12, 0.06,
// 0.06). Says "bounded" only.
constexpr double kGrowthInexactBound = 0.5;
// Noise e recovered from (W_noisy - (1 - a) W) / a over >= 2e3 draws per tensor: the sample mean and standard
// deviation are within ~3 / sqrt(n) ~ 7% of the init's; fp32 cancellation adds ~1e-6.
constexpr double kGrowthNoiseStatTol = 0.1;
// G_learn dD vs central differences of the fp32 loss along W' += h W_j: the loss (~4) rounds at ~5e-7, over
// 2h = 2e-2 is ~1e-4 of the largest |g| (~0.2); truncation h^2 |f'''| / 6 is smaller (measured 1.2e-4 total).
constexpr double kGrowthFdStep = 1e-2;
constexpr double kGrowthFdTol = 2e-3;
// Plus, where the gradients are small (G_learn in width on GPT-2's std-0.02 init: max |g| ~8e-3), the floor
// of the central difference itself: each fp32 loss carries a few ulps of rounding (its reductions), so the
// difference quotient is off by ~kGrowthFdLossUlps * ulp(loss) / (2h) (~1e-4 at a loss of 4) whatever the
// gradient.
constexpr double kGrowthFdLossUlps = 4.0;
// dD recovered from one Adam step (betas 0, eps 1: dD = -delta / (1 - |delta|)) vs the double dot product of
// the fp32 gradients: D is fp32 near 1 (ulp 1.2e-7), and the step rounds m, v to fp32.
constexpr double kGrowthLearnGradTol = 1e-5;

// ---- CUDA kernels vs their CPU twins (tests/kernels/cuda/*_test.cpp), relative to the largest |reference|
// entry. Inputs are bf16-representable, so the twin (fp32) sees exactly the kernel's inputs; what differs is the
// bf16 rounding of the kernel's outputs (and of any intermediate it stores in bf16) and fp32 summation order.
// bf16 keeps 8 significant bits: epsilon (the spacing just above 1) is 2^-7, a correctly rounded value is within
// 2^-8 of the exact one relative to itself.
constexpr double kBf16Eps = 1.0 / 128.0;
// One fp32 computation rounded once to bf16 (embedding, RoPE, activations, residual + norm outputs): half an ulp
// of the element, at most 2^-8 of max |ref|; fp32 order differences are ~1e-6. One eps leaves 2x headroom and
// still fails any wrong term (those are O(max |ref|)).
constexpr double kTolBf16Elementwise = kBf16Eps;
// A bf16 output that is a reduction of bf16 products (norm backward's dinp, dweight accumulated in bf16 twice):
// two roundings plus the reduction's fp32 rounding.
constexpr double kTolBf16Reduction = 2 * kBf16Eps;
// fp32 statistics (norm rstd/mean, log-sum-exp, per-row losses, grad norm) from bf16 inputs: only the fp32
// summation order differs from the twin (~C * 6e-8 for C up to a few thousand).
constexpr double kTolFp32Stat = 1e-5;
// Flash attention (FlashAttention's rule): error(kernel vs fp32 reference) <= kAttnErrFactor x error(naive bf16
// attention vs the same reference) + kAttnErrFloor, for out, dQ, dK, dV. The naive bf16 version rounds the
// scores, probabilities and outputs to bf16 as a straightforward bf16 implementation would.
constexpr double kAttnErrFactor = 2.0;
constexpr double kAttnErrFloor = 1e-3;
// AdamW's fp32 master weights vs the fp32 twin: the same formula in fp32; only the fused multiply-adds and
// rsqrt differ (a few ulp of the update).
constexpr double kTolAdamMaster = 1e-6;
// Statistical checks of stochastic rounding (tests/kernels/cuda/adamw_test.cpp): a mean of n independent
// roundings must lie within this many binomial standard deviations of its expectation. A correct rounding misses
// by chance with probability ~6e-7 (the two-sided normal tail at 5 sigma); the seeds are fixed, so a run's
// outcome is deterministic. A biased rounding (to nearest, or truncation) misses by 10x to 100x the bound.
constexpr double kStochasticRoundingSigmas = 5.0;

// ---- the CUDA model runner vs the CPU runner (tests/engine/cuda_model_test.cpp), from the same bf16-representable
// weights. The CUDA runner rounds every stored activation, and each gradient, to bf16 (within 2^-9 of itself), so
// a gradient carries several such roundings from the layers above it. Measured on the emulation (2-layer LLaMA
// GQA and GPT-2, C=128): loss 5.5e-5 relative, worst gradient tensor 0.010 of its max, training losses within
// 0.7% over 10 steps (the trajectories drift apart slowly as the weight updates differ), the L2 distance between
// the two runners' weights after those steps 0.036 of the distance the CPU's weights moved. Each bound leaves ~3x
// or more; a wrong or missing term (a skipped layer, a dropped bias gradient) moves these by O(1).
constexpr double kRunnerLossTol = 1e-3;              // |loss difference| / loss
constexpr double kRunnerGradTol = 4 * kBf16Eps;      // per tensor, max |difference| / max |CPU gradient|
constexpr double kRunnerStepLossTol = 2e-2;          // per training step, |loss difference| / loss
constexpr double kRunnerUpdateTol = 0.15;           // |w_cuda - w_cpu| / |w_cpu - w_initial| (L2)
// G_learn's mixing gradients dD[l, j] = <g_l, W_j> (tests/engine/cuda_train_test.cpp), CUDA vs CPU backend
// after one step from the same weights, relative to each tensor kind's max |dD|: the gradients differ by up to
// kRunnerGradTol of their max, and the sums cancel (a norm weight's dD is the sum of its C gradients, W ~ 1),
// which magnifies the relative difference. Measured on the emulation: at most 0.017 (the test's weights fitted
// to its batch), 0.045 from random-init weights (GPT-2's attn_norm). A gradient paired with the wrong layer or
// tensor, or a kind left out, is off by O(1).
constexpr double kRunnerMixGradTol = 0.15;

}  // namespace strata::test
