// growth/apply.h: executing a GrowthPlan on layer-indexed buffers, the G_random masks, G_learn's trained
// depth mixing, and growing a running model + optimizer in place.
//
// Everything here works on ParamBuffers through their layouts (per tensor, per layer slices) and never on a
// backend: the CUDA backend runs the same plan on its buffers.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/model.h"
#include "engine/optim.h"
#include "engine/params.h"
#include "engine/safetensors.h"
#include "growth/plan.h"

namespace strata::growth {

// Fills `dst` (laid out for plan.to) from `src` (laid out for plan.from) by the plan's rules, then applies
// the stage's noise (W <- (1 - a) W + a e on every per-layer tensor). Random draws (new elements, init-filled
// layers, noise) come from streams seeded by (seed, tensor, layer), so the result depends on nothing else.
void apply_params(const GrowthPlan& plan, const ParamBuffer& src, ParamBuffer& dst, uint64_t seed);

// The random draws apply_params makes, for a backend that runs the plan on its own buffers (the CUDA
// backend's device growth) and must match apply_params bit for bit. layer_draws: what target layer l of rule
// r draws (de: the target's entry), numel_per_layer values into out: an init-filled layer's values, or for a
// copied layer with new elements filled from the init distribution a whole layer of draws, of which each
// new element takes its own position's; returns false (out untouched) when the layer draws nothing.
// noise_draws: the noise e of layer l of per-layer entry de (used when plan.stage.noise > 0).
bool layer_draws(const TensorRule& r, const ParamEntry& de, int64_t l, uint64_t seed, float* out);
// Whether layer_draws draws for any layer of rule r.
bool rule_draws(const TensorRule& r);
void noise_draws(const ParamEntry& de, int64_t l, uint64_t seed, float* out);

// Maps one AdamW moment buffer with the weights: copied elements keep their moment (no split factors, no
// noise), new elements and init- or zero-filled layers get 0.
void map_moments(const GrowthPlan& plan, const ParamBuffer& src, ParamBuffer& dst);

// The G_random mask: the plan's masked elements are multiplied by c = mask_factor(step - growth_step, K)
// for the forward and backward of each step, while the parameters keep their raw values between steps (so
// the optimizer and checkpoints see raw weights). Per step: begin() before the forward pass saves the raw
// values and writes c * raw; end() after the backward pass restores them and scales their gradients by c
// (the chain rule through the factor).
class GrowthMask {
 public:
  GrowthMask() = default;
  GrowthMask(std::vector<MaskSlice> slices, long growth_step, long mask_steps);
  // Whether the step after `steps_done` optimizer steps is still masked.
  bool active(long steps_done) const;
  void begin(ParamBuffer& params, long steps_done);
  // grads may be null (an evaluation between steps).
  void end(ParamBuffer& params, ParamBuffer* grads);
  long growth_step() const { return growth_step_; }
  // The factor c of the step after `steps_done` optimizer steps, and the masked slices: what a backend that
  // masks its own buffers (the CUDA backend's device weights) needs.
  float factor(long steps_done) const { return mask_factor(steps_done - growth_step_, mask_steps_); }
  const std::vector<MaskSlice>& slices() const { return slices_; }

 private:
  std::vector<MaskSlice> slices_;
  long growth_step_ = 0, mask_steps_ = 0;
  float c_ = 1.0f;
  std::vector<float> raw_;
  bool applied_ = false;
};

// G_learn's trained state, in depth (LearnedDepth) or width (LearnedWidth, growth/learned_width.h): the grown
// model's weights are a function of the frozen small model's and of a few learned matrices. For learn_steps
// steps the grown model runs on the training data and only those matrices train (Adam, learn_lr, betas of the
// run, no weight decay); afterwards the last materialised weights are plain parameters.
class LearnedGrowth {
 public:
  virtual ~LearnedGrowth() = default;
  // Writes the grown model's learned weights into `grown` (plan.to's layout).
  virtual void materialise(ParamBuffer& grown) const = 0;
  // dL/d(learned matrices) from the grown model's gradients, in the layout step_from_dots takes. Linear in
  // the gradients: the sum over ranks of the dots of each rank's gradient shard (zeros elsewhere) is the dots
  // of the whole gradient, which is how ZeRO-1 computes it.
  virtual std::vector<double> dots(const ParamBuffer& grown_grads) const = 0;
  // One Adam step (t advances first) from dots laid out as dots() returns them.
  virtual void step_from_dots(const std::vector<double>& dots, double lr) = 0;
  void step(const ParamBuffer& grown_grads, double lr) { step_from_dots(dots(grown_grads), lr); }
  long t() const { return t_; }
  // Checkpoint form (growth.safetensors): the learned matrices, their Adam moments and the frozen small
  // model; the views point into this object. load() reads them back into an object built for the same plan.
  virtual std::vector<TensorView> tensors() const = 0;
  virtual void load(const SafetensorsFile& f, long t) = 0;

 protected:
  LearnedGrowth(double beta1, double beta2, double eps) : beta1_(beta1), beta2_(beta2), eps_(eps) {}
  // A learned matrix's values x and Adam moments m, v (all zero at first). In a checkpoint, the matrix called
  // `name` with letter L is "L.<name>", "mL.<name>" and "vL.<name>".
  struct Learned {
    Learned() = default;
    explicit Learned(size_t n) : x(n, 0.0f), m(n, 0.0f), v(n, 0.0f) {}
    std::vector<float> x, m, v;
  };
  // Adam on every value of s from gradient g (s.x.size() entries), at the bias corrections of step t_ (the
  // caller advances t_ once per step, before its first adam()).
  void adam(Learned& s, const double* g, double lr) const;
  static void add_views(std::vector<TensorView>& out, const std::string& letter, const std::string& name,
                        const std::vector<int64_t>& shape, const Learned& s);
  static void load_learned(const SafetensorsFile& f, const std::string& letter, const std::string& name,
                           Learned& s);
  // Reads tensor `name` of `f` into out, whose size it must have (a one-line error naming both otherwise).
  static void load_tensor(const SafetensorsFile& f, const std::string& name, std::vector<float>& out);
  long t_ = 0;
  double beta1_, beta2_, eps_;
};

// The learned state of an op=learn plan (depth or width), from the small model's weights. `seed` draws
// LearnedWidth's random initial rows; LearnedDepth draws nothing.
std::unique_ptr<LearnedGrowth> make_learned_growth(const GrowthPlan& plan, const ParamBuffer& small,
                                                   double beta1, double beta2, double eps, uint64_t seed);

// G_learn (depth, LiGO-style): every per-layer tensor kind k of the grown model is W'_l = sum_j D_k[l, j] W_j
// over the small model's layers j, with one (L' x L) matrix D_k per kind, initialised to the plan's layer map
// (D[l, layer_map[l]] = 1: G_stack), trained by dD[l, j] = <dL/dW'_l, W_j>. Global tensors (embeddings, final
// norm, LM head) are frozen.
class LearnedDepth final : public LearnedGrowth {
 public:
  LearnedDepth(const GrowthPlan& plan, const ParamBuffer& small, double beta1, double beta2, double eps);
  // Writes W' = D W into the per-layer tensors of `grown` (global tensors are left as they are).
  void materialise(ParamBuffer& grown) const override;
  // dL/dD, (kinds, L', L) in kind order: dots[(k L' + l) L + j] = <dL/dW'_l, W_j> of kind k, summed in
  // double. The CUDA backend sums the same on the device and calls step_from_dots.
  std::vector<double> dots(const ParamBuffer& grown_grads) const override;
  void step_from_dots(const std::vector<double>& dots, double lr) override;
  // D of kind `name` (L' x L, row-major).
  const std::vector<float>& mixing(const std::string& name) const;

  // The per-layer tensor kinds in layout order (the order of dots()): name, elements per layer, the frozen
  // small-model weights (L, per_layer) and D (L', L).
  int kind_count() const { return static_cast<int>(kinds_.size()); }
  const std::string& kind_name(int k) const { return kinds_.at(static_cast<size_t>(k)).name; }
  int64_t kind_numel_per_layer(int k) const { return kinds_.at(static_cast<size_t>(k)).per_layer; }
  const std::vector<float>& source(int k) const { return kinds_.at(static_cast<size_t>(k)).src; }
  const std::vector<float>& mixing(int k) const { return kinds_.at(static_cast<size_t>(k)).D.x; }
  int from_layers() const { return L_; }
  int to_layers() const { return L2_; }

  // Checkpoint form: "D.<kind>", "mD.<kind>", "vD.<kind>" (L' x L) and "src.<kind>" (L, ...) tensors.
  std::vector<TensorView> tensors() const override;
  void load(const SafetensorsFile& f, long t) override;

 private:
  struct Kind {
    std::string name;
    int64_t per_layer = 0;
    std::vector<float> src;  // (L, per_layer): the frozen small-model weights
    Learned D;               // (L', L)
    std::vector<int64_t> src_shape;
  };
  std::vector<Kind> kinds_;
  int L_ = 0, L2_ = 0;
};

// What one growth did, for the metrics log and the checkpoint's history.
struct GrowthRecord {
  int stage = 0;
  std::string spec;
  long step = 0;
  uint64_t tokens = 0;
  double flops = 0.0;
  models::ModelConfig from, to;
  double wall_s = 0.0;
  int64_t params_before = 0, params_after = 0;
  nlohmann::json to_json() const;
};

// Grows `model` and `opt` in place by `plan`: the new parameters are filled by apply_params (seeded by
// `seed`), the optimizer is reset (moments 0, t = 0) or its moments are mapped (t kept), and the model
// re-plans its activations for the new architecture. Peak memory stays within the old plus the new model
// state: the old gradients and activations are released before the new buffers are allocated.
void grow_in_place(const GrowthPlan& plan, Model& model, AdamW& opt, uint64_t seed);
// The state half of grow_in_place, for any backend's host copy: returns the grown parameters (plan.to's
// layout) filled from `params`, and resets or maps opt's moments as grow_in_place does.
ParamBuffer grow_state(const GrowthPlan& plan, const ParamBuffer& params, AdamW& opt, uint64_t seed);

}  // namespace strata::growth
