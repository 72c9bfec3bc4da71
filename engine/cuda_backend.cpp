// engine/cuda_backend.cpp: the CUDA TrainBackend (engine/train_backend.h) over engine/cuda_model.h, with host
// mirrors of its state for checkpoints, samples and growth. Built with the runner, against the CUDA runtime
// or the CPU emulation.
#include "engine/cuda_backend.h"

#if defined(STRATA_CUDA_EMU)
#include "kernels/cuda/emu/emu.h"
#else
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <vector>

#include "engine/check.h"
#if defined(STRATA_HAVE_NCCL)
#include "engine/comm_nccl.h"
#endif
#include "engine/cuda_growth.h"
#include "engine/cuda_model.h"
#include "growth/apply.h"
#include "kernels/cuda/op_timer.h"
#if !defined(STRATA_CUDA_EMU) && defined(STRATA_HAVE_CUDNN_SDPA)
#include "kernels/cuda/cudnn_sdpa.h"
#endif

namespace strata {
namespace {

constexpr const char* kWeightsFile = "weights_bf16.safetensors";
double gib(size_t bytes) {
  return static_cast<double>(bytes) / double(size_t{1} << 30);
}

class CudaBackend final : public TrainBackend {
 public:
  CudaBackend(const models::ModelConfig& cfg, int B, int T, const AdamWConfig& adamw, uint64_t seed,
              const DataParallelSetup& dp, const CudaRunOptions& run)
      : B_(B), T_(T), adamw_(adamw), seed_(seed), run_(run) {
    if (dp.active()) {
#if defined(STRATA_HAVE_NCCL)
      nccl_ = std::make_unique<NcclCommunicator>(*dp.comm);
      zero_ = dp.comm->world() == 1 ? 0 : dp.zero_stage;  // a loopback has no shards: ZeRO-0's all-reduce
#else
      STRATA_FAIL("--device cuda under ", dp.comm->world(),
                  " ranks: this strata was built without NCCL (install it with the CUDA toolkit and rebuild)");
#endif
    }
    gpu_ = std::make_unique<CudaModel>(cfg, B, T, model_options());  // ZeRO-1: this rank's shard
  }
  ~CudaBackend() override {
    if (comm_stream_ == nullptr) return;
    (void)cudaStreamSynchronize(comm_stream_);  // no errors from a destructor
    (void)cudaEventDestroy(grads_ready_);
    (void)cudaEventDestroy(reduced_event_);
    (void)cudaEventDestroy(updated_event_);
    for (cudaEvent_t e : gathered_) (void)cudaEventDestroy(e);
    (void)cudaStreamDestroy(comm_stream_);
  }

  const char* name() const override { return "cuda"; }
  std::string device_name() const override {
#if defined(STRATA_CUDA_EMU)
    return "CPU emulation of CUDA";
#else
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    cudaDeviceProp p{};
    CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
    return p.name;
#endif
  }
  const models::ModelConfig& config() const override {
    return gpu_->config();
  }
  std::string memory_summary() const override {
    const CudaMemoryPlan p = CudaModel::plan_memory(gpu_->config(), B_, T_, model_options());
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    // The attention implementation and, through cuDNN, the library version its plans were built with.
    std::string attention = "flash";
#if !defined(STRATA_CUDA_EMU) && defined(STRATA_HAVE_CUDNN_SDPA)
    if (run_.cudnn_attention) attention = cat("cudnn (cuDNN ", cuda::cudnn::library().version, ")");
#endif
    char b[256];
    std::snprintf(
        b, sizeof b,
        "%.2f GiB (model state %.2f, activations %.2f with --recompute %s, --attention %s), %.1f of "
        "%.1f GiB free now",
        gib(p.total()), gib(p.weights + p.grads + p.master + p.moments), gib(p.activations),
        recompute_name(run_.recompute), attention.c_str(), gib(free_bytes), gib(total_bytes));
    return b;
  }
  void check_growth_fits(const growth::GrowthPlan& plan, const std::string& what) const override {
    CudaModel::require_supported(plan.to, what);
    const size_t peak = cuda_growth_peak_bytes(plan, B_, T_, model_options());
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    // This run's share of the device: what is free now and what the runner holds (replaced at growth).
    const size_t usable = free_bytes + gpu_->state_bytes() + gpu_->activation_bytes();
    const size_t margin = CudaModel::memory_margin(total_bytes);
    const bool zero0_ranks = nccl_world() > 1 && zero_ == 0;
    STRATA_REQUIRE(
        peak + margin <= usable, what, ": growing to ", plan.to.n_layer, " layers of width ", plan.to.d_model,
        " needs ", gib_text(peak),
        " of GPU memory at its peak (the old and the grown model's state side by side, then the grown "
        "model training) but this run has ",
        gib_text(usable), " of ", gib_text(total_bytes), ": use a smaller --batch-size",
        run_.recompute == Recompute::kAll ? "" : ", --recompute all", zero0_ranks ? ", --zero 1" : "",
        " or a smaller growth");
  }
  int batch() const override {
    return B_;
  }
  int seq_len() const override {
    return T_;
  }
  void zero_grad() override {
    gpu_->zero_grad();
    reduced_ = false;
  }
  void micro_batch_is_last(bool last) override {
    last_micro_ = last;
  }
  float train_micro_batch(const int32_t* inputs, const int32_t* targets, float grad_scale) override {
    const float loss = forward_after_gather(inputs, targets, grad_scale);
#if defined(STRATA_HAVE_NCCL)
    if (nccl_ && last_micro_ && !masked_) {
      // Each layer's gradients are reduced on the communication stream as soon as the backward pass has
      // finished that layer (all-reduced under ZeRO-0, reduce-scattered into the owners' pieces under
      // ZeRO-1), while it goes on with the layers below. Not in G_random's masked phase: mask_end() scales the
      // masked gradients after the backward pass, so grad_norm() reduces them after that.
      std::vector<bool> issued(static_cast<size_t>(gpu_->config().n_layer), false);
      gpu_->set_layer_backward_hook([&](int l) {
        reduce_tensors(l);
        issued[static_cast<size_t>(l)] = true;
      });
      gpu_->backward();
      gpu_->set_layer_backward_hook(nullptr);
      finish_reduction(issued);  // a batch without targets runs no layer
      return loss;
    }
#endif
    gpu_->backward();
    return loss;
  }
  float evaluate(const int32_t* inputs, const int32_t* targets, int64_t* n_valid) override {
    settle_gather();
    const float loss = gpu_->evaluate(inputs, targets);
    *n_valid = gpu_->num_valid_targets();
    return loss;
  }
  double grad_norm() override {
#if defined(STRATA_HAVE_NCCL)
    if (nccl_) {
      // Data parallel: the ranks' gradients (each scaled by 1 / (micro-batches x world)) summed over the
      // ranks by NCCL on the runner's stream: all of them (ZeRO-0), or this rank's shard (ZeRO-1); the norm
      // is the sum of the ranks' shard sums of squares, in rank order.
      // The watchdog covers the wait for the device collective (the norm's download synchronises).
      const Communicator::Guard watch(nccl_->host(), zero_ == 0 ? "NCCL all-reduce" : "NCCL reduce-scatter",
                                      gpu_->layout().numel() * 2, /*count=*/false);
      if (!reduced_) finish_reduction({});  // no micro-batch was marked last: reduce everything now
      if (zero_ == 0) return gpu_->grad_norm();
      return std::sqrt(nccl_->host().sum_in_rank_order({gpu_->grad_sum_squares()})[0]);
    }
#endif
    return gpu_->grad_norm();
  }
  void adamw_step(double lr, float grad_scale) override {
    settle_gather();
    ++t_;
    gpu_->adamw_step(adamw_, t_, lr, grad_scale, seed_);
#if defined(STRATA_HAVE_NCCL)
    if (nccl_ && zero_ == 1) issue_gather();
#endif
  }
  long optimizer_t() const override {
    return t_;
  }
  bool optimizer_sharded() const override {
    return zero_ == 1 && gpu_->shards().world() > 1;
  }
  std::vector<CheckpointExtra> rank_checkpoint_files() override {
    if (!optimizer_sharded()) return {};
    ensure_host();  // download_to_host() ran for this checkpoint: the mirrors hold every element
    const LayerShards& sh = gpu_->shards();
    shard_m_.resize(static_cast<size_t>(sh.owned()));
    shard_v_.resize(shard_m_.size());
    pack_dense(sh.pieces(), host_opt_->m().data(), shard_m_.data());
    pack_dense(sh.pieces(), host_opt_->v().data(), shard_v_.data());
    return {optimizer_shard_extra(gpu_->layout(), gpu_->shards().ranges(), shard_m_.data(), shard_v_.data(),
                                  nccl_rank(), nccl_world())};
  }
  void load_optimizer(const CheckpointInfo& info, long t) override {
    if (!optimizer_sharded()) return TrainBackend::load_optimizer(info, t);
    ensure_host();  // the pieces of the mirrors; upload_from_host() sends only those
    const LayerShards& sh = gpu_->shards();
    std::vector<float> m(static_cast<size_t>(sh.owned())), v(m.size());
    load_checkpoint_moments(info, gpu_->layout(), sh.ranges(), m.data(), v.data());
    unpack_dense(sh.pieces(), m.data(), host_opt_->m().data());
    unpack_dense(sh.pieces(), v.data(), host_opt_->v().data());
    host_opt_->set_t(t);
  }

  void download_to_host() override {
    settle_gather();
    ensure_host();
    gpu_->get_params(*host_params_);
    if (gpu_->has_moments()) {
      gpu_->get_moments(host_opt_->m(), host_opt_->v());
    } else {
      host_opt_->m().zero();
      host_opt_->v().zero();
    }
    host_opt_->set_t(t_);
#if defined(STRATA_HAVE_NCCL)
    if (optimizer_sharded()) {  // each rank read its pieces: the host gathers the rest (host memory, MPI)
      all_gather_pieces(*host_params_);
      all_gather_pieces(host_opt_->m());
      all_gather_pieces(host_opt_->v());
    }
#endif
  }
  void upload_from_host() override {
    settle_gather();
    ensure_host();
    gpu_->set_params(*host_params_);
    gpu_->set_moments(host_opt_->m(), host_opt_->v());
    t_ = host_opt_->t();
  }
  ParamBuffer& host_params() override {
    ensure_host();
    return *host_params_;
  }
  AdamW& host_optimizer() override {
    ensure_host();
    return *host_opt_;
  }

  ParamBuffer* host_grads() override {
    return nullptr;
  }

  // The growth phases on the device (engine/cuda_growth.h); the mixing state's Adam runs on the host.
  void set_growth_mask(const growth::GrowthMask& mask) override {
    mask_.reset();
    mask_ = std::make_unique<CudaGrowthMask>(*gpu_, mask);
  }
  void mask_begin(long steps_done) override {
    settle_gather();
    STRATA_CHECK(mask_ != nullptr, "mask_begin: no growth mask set");
    mask_->begin(steps_done);
    masked_ = true;
  }
  void mask_end(bool grads) override {
    STRATA_CHECK(mask_ != nullptr, "mask_end: no growth mask set");
    mask_->end(grads);
    masked_ = false;
  }
  // G_learn in depth runs on the device (CudaLearnedDepth: the frozen small layers and D's products there).
  // In width the expansion products run on the host (growth/learned_width.h, OpenBLAS): a step downloads the
  // reduced gradient (this rank's pieces under ZeRO-1), and materialising uploads the grown weights (every
  // bf16 weight rounded to nearest, the fp32 master weights of this rank's pieces).
  void begin_learned_growth(const growth::LearnedGrowth& lg) override {
    learned_.reset();
    if (const auto* ld = dynamic_cast<const growth::LearnedDepth*>(&lg))
      learned_ = std::make_unique<CudaLearnedDepth>(*gpu_, *ld);
  }
  void end_learned_growth() override {
    learned_.reset();
  }
  void materialise_learned_growth(const growth::LearnedGrowth& lg) override {
    settle_gather();
    if (const auto* ld = dynamic_cast<const growth::LearnedDepth*>(&lg)) {
      STRATA_CHECK(learned_ != nullptr, "materialise_learned_growth: no G_learn phase begun");
      learned_->materialise(*ld);
      return;
    }
    ensure_host();
    lg.materialise(*host_params_);
    gpu_->set_params(*host_params_);
  }
  void learned_growth_step(growth::LearnedGrowth& lg, double lr) override {
#if defined(STRATA_HAVE_NCCL)
    if (nccl_ && !reduced_) finish_reduction({});  // grad_norm() not called: the mixing reads reduced gradients
#endif
    std::vector<double> dots;
    if (dynamic_cast<const growth::LearnedDepth*>(&lg) != nullptr) {
      STRATA_CHECK(learned_ != nullptr, "learned_growth_step: no G_learn phase begun");
      dots = learned_->dots();
    } else {
      ParamBuffer grads(gpu_->layout());
      gpu_->get_reduced_grads(grads);
      dots = lg.dots(grads);
    }
#if defined(STRATA_HAVE_NCCL)
    // ZeRO-1: each rank computed its pieces' share of the reduced gradient; the shares are gathered exactly
    // and added in rank order (as the CPU backend does), so every rank takes the same step.
    if (optimizer_sharded()) dots = nccl_->host().sum_in_rank_order(dots);
#endif
    lg.step_from_dots(dots, lr);
  }

  void op_timing_start() override {
    cuda::op_timer_start();
  }
  std::vector<OpTiming> op_timing_stop() override {
    std::vector<OpTiming> out;
    for (cuda::OpTime& t : cuda::op_timer_stop()) out.push_back({std::move(t.op), t.calls, t.ms});
    return out;
  }

#if !defined(STRATA_CUDA_EMU)
  void profiler_start() override {
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaProfilerStart());
  }
  void profiler_stop() override {
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaProfilerStop());
  }
#endif

  std::vector<CheckpointExtra> checkpoint_extras() override {
    settle_gather();
    weights_bits_ = gpu_->get_weights_bf16();
    CheckpointExtra e;
    e.file = kWeightsFile;
    e.tensors.push_back(
        {"weights", DType::kBF16, {static_cast<int64_t>(weights_bits_.size())}, weights_bits_.data()});
    e.metadata = {{"content", "the CUDA backend's bf16 weights (the parameter layout, flat)"}};
    return {e};
  }
  void load_checkpoint_extras(const std::string& ckpt_dir, const CheckpointInfo& info) override {
    settle_gather();
    if (info.files.count(kWeightsFile) == 0)
      return;  // another backend's checkpoint: weights rounded to nearest
    const SafetensorsFile f = open_checkpoint_file(ckpt_dir, kWeightsFile);
    const SafeTensor* t = f.find("weights");
    const int64_t n = gpu_->layout().numel();
    STRATA_REQUIRE(t != nullptr && t->dtype == DType::kBF16 && t->numel() == n, ckpt_dir, "/", kWeightsFile,
                   ": expected a bf16 tensor 'weights' of ", n, " elements");
    std::vector<uint16_t> bits(static_cast<size_t>(n));
    std::memcpy(bits.data(), t->data, bits.size() * sizeof(uint16_t));
    gpu_->set_weights_bf16(bits.data());
  }

  void grow(const growth::GrowthPlan& plan, uint64_t seed) override {
    settle_gather();
    mask_.reset();  // both address the old runner
    learned_.reset();
    // On the device (CudaModel::grown): any plan on one runner or under ZeRO-0; under ZeRO-1 the plans
    // made of layer copies (G_stack, interpolation, G_zero), as each rank owns the same parts of a copied
    // layer and of its source. A sharded runner widening (or drawing new layers, or adding noise): gather,
    // grow on the host, re-shard (the new runner takes its shard on upload).
    if (gpu_->can_grow(plan)) {
      const bool map = plan.stage.optimizer == growth::OptimizerPolicy::kMap;
      std::unique_ptr<CudaModel> next = gpu_->grown(plan, map, seed);
      gpu_ = std::move(next);
      host_params_.reset();  // the host mirrors are re-made in the new layout at the next download
      host_opt_.reset();
      if (!map) t_ = 0;
      return;
    }
    download_to_host();
    ParamBuffer grown = growth::grow_state(plan, *host_params_, *host_opt_, seed);
    gpu_.reset();  // the old device state goes before the new one is allocated
    host_params_ = std::move(grown);
    gpu_ = std::make_unique<CudaModel>(plan.to, B_, T_, model_options());
    upload_from_host();
  }

 private:
  // ZeRO-1's all-gather of the updated bf16 weights, overlapped with the next forward pass. adamw_step()
  // leaves it on the communication stream as one NCCL group per stage of the forward pass, in its order (the
  // global tensors stored before the layers: the embeddings; each layer; the global tensors after them: the
  // final norm and an untied head), each followed by an event; the next forward pass waits for a stage's
  // event just before it reads those weights (CudaModel::set_layer_forward_hook), so the later layers'
  // gathers run under the earlier layers' work. Anything else that reads or writes the bf16 weights first
  // makes the runner's stream wait for all of them (settle_gather).
  void issue_gather() {
#if defined(STRATA_HAVE_NCCL)
    ensure_comm_stream();
    const int L = gpu_->config().n_layer;
    while (static_cast<int>(gathered_.size()) < L + 2) {
      cudaEvent_t e = nullptr;
      CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
      gathered_.push_back(e);
    }
    const auto main = static_cast<cudaStream_t>(gpu_->stream());
    CUDA_CHECK(cudaEventRecord(updated_event_, main));  // the optimizer wrote this rank's pieces
    CUDA_CHECK(cudaStreamWaitEvent(comm_stream_, updated_event_, 0));
    auto* w = static_cast<uint16_t*>(gpu_->weights_device());  // bf16 elements
    const int R = nccl_->world();
    const std::vector<ShardSegment>& segments = gpu_->shards().segments();
    int64_t first_layer = gpu_->layout().numel();  // where the per-layer kinds start in the flat layout
    for (const ShardSegment& g : segments)
      if (g.layer >= 0) first_layer = std::min(first_layer, g.offset);
    const auto stage = [&](const ShardSegment& g) {
      return g.layer >= 0 ? g.layer : g.offset < first_layer ? -1 : L;
    };
    for (int l = -1; l <= L; ++l) {
      // Each segment's body all-gathered in place, its tail broadcast from the last rank.
      nccl_->group_start();
      for (const ShardSegment& g : segments) {
        if (stage(g) != l) continue;
        nccl_->all_gather(w + g.offset, g.chunk, DeviceDType::kBF16, comm_stream_);
        nccl_->broadcast(w + g.offset + g.body, g.tail(), R - 1, DeviceDType::kBF16, comm_stream_);
      }
      nccl_->group_end();
      CUDA_CHECK(cudaEventRecord(gathered_[static_cast<size_t>(l + 1)], comm_stream_));
    }
    gather_layers_ = L;
#endif
  }
  // The runner's stream waits for the whole pending all-gather (nothing when none is pending).
  void settle_gather() {
    if (gather_layers_ < 0) return;
    CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(gpu_->stream()),
                                   gathered_[static_cast<size_t>(gather_layers_ + 1)], 0));
    gather_layers_ = -1;
  }
  // forward() with the pending all-gather's waits placed layer by layer. The watchdog covers the wait for the
  // gathers: the forward's loss download synchronises with them.
  float forward_after_gather(const int32_t* inputs, const int32_t* targets, float grad_scale) {
#if defined(STRATA_HAVE_NCCL)
    if (gather_layers_ >= 0) {  // grow() settles first: the pending stages are this runner's
      const Communicator::Guard watch(nccl_->host(), "NCCL all-gather", gpu_->layout().numel() * 2,
                                      /*count=*/false);
      const auto main = static_cast<cudaStream_t>(gpu_->stream());
      gpu_->set_layer_forward_hook([&](int l) {
        CUDA_CHECK(cudaStreamWaitEvent(main, gathered_[static_cast<size_t>(l + 1)], 0));
      });
      float loss = 0.0f;
      try {
        loss = gpu_->forward(inputs, targets, grad_scale);
      } catch (...) {
        gpu_->set_layer_forward_hook(nullptr);
        throw;
      }
      gpu_->set_layer_forward_hook(nullptr);
      settle_gather();  // every layer waited already; this clears the pending state
      return loss;
    }
#endif
    settle_gather();
    return gpu_->forward(inputs, targets, grad_scale);
  }

  // Host mirrors in the current layout, allocated at first use (grow() replaces them with the grown ones).
  void ensure_host() {
    if (host_params_) return;
    host_params_.emplace(gpu_->layout());
    host_opt_.emplace(gpu_->layout(), adamw_);
    host_opt_->set_t(t_);
  }

#if defined(STRATA_HAVE_NCCL)
  // ZeRO-0's overlapped reduction. The communication stream waits for the runner's stream up to the point
  // where a layer's gradients are final, then all-reduces that layer's slice of every per-layer tensor kind
  // (one NCCL group); the global tensors (embeddings, final norm, head) follow the whole backward pass; the
  // runner's stream then waits for the communication stream, so the norm and the optimizer see the sums.
  void ensure_comm_stream() {
    if (comm_stream_ != nullptr) return;
    CUDA_CHECK(cudaStreamCreateWithFlags(&comm_stream_, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&grads_ready_, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&reduced_event_, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&updated_event_, cudaEventDisableTiming));
  }
  // Reduces, on the communication stream once the runner's stream has reached this point, layer l's slice of
  // every per-layer tensor kind, or with l < 0 every global tensor, in one NCCL group. ZeRO-0 all-reduces
  // them in place; ZeRO-1 reduce-scatters each segment's body (engine/shard_map.h) into the owners' compact
  // gradient pieces and reduces its tail to the last rank.
  void reduce_tensors(int l) {
    ensure_comm_stream();
    CUDA_CHECK(cudaEventRecord(grads_ready_, static_cast<cudaStream_t>(gpu_->stream())));
    CUDA_CHECK(cudaStreamWaitEvent(comm_stream_, grads_ready_, 0));
    auto* grads = static_cast<uint16_t*>(gpu_->grads_device());  // bf16 elements
    nccl_->group_start();
    if (zero_ == 0) {
      for (const ParamEntry& e : gpu_->layout().entries()) {
        if (e.spec.per_layer != (l >= 0)) continue;
        const int64_t n = l >= 0 ? e.spec.numel_per_layer() : e.numel();
        nccl_->all_reduce_sum(grads + e.offset + (l >= 0 ? int64_t{l} * n : 0), n, DeviceDType::kBF16,
                              comm_stream_);
      }
    } else {
      auto* shard = static_cast<uint16_t*>(gpu_->grad_shard_device());
      const int R = nccl_->world();
      for (const ShardSegment& g : gpu_->shards().segments()) {
        if (g.layer != l) continue;
        if (g.chunk > 0)
          nccl_->reduce_scatter_sum(grads + g.offset, shard + g.body_compact, g.chunk, DeviceDType::kBF16,
                                    comm_stream_);
        if (g.tail() > 0)  // the output matters on the last rank only
          nccl_->reduce_sum(grads + g.offset + g.body, shard + std::max<int64_t>(g.tail_compact, 0), g.tail(),
                            R - 1, DeviceDType::kBF16, comm_stream_);
      }
    }
    nccl_->group_end();
  }
  // ZeRO-1: every rank's pieces of a host buffer (each rank holds its own) to every rank, over the host
  // communicator: each rank's pieces packed into an equal slot, all-gathered, unpacked.
  void all_gather_pieces(ParamBuffer& buf) {
    const LayerShards& sh = gpu_->shards();
    const int R = sh.world();
    std::vector<std::vector<ShardPiece>> pieces(static_cast<size_t>(R));
    int64_t slot = 0;
    for (int r = 0; r < R; ++r) {
      pieces[size_t(r)] = sh.pieces_of(r);
      slot = std::max(slot, pieces_size(pieces[size_t(r)]));
    }
    slot = (slot + 15) / 16 * 16;  // shard_range(R x slot, R, r) is then exactly slot r
    std::vector<float> all(static_cast<size_t>(slot * R), 0.0f);
    const auto at = [&](int r) { return all.data() + static_cast<size_t>(r) * static_cast<size_t>(slot); };
    pack_dense(sh.pieces(), buf.data(), at(sh.rank()));
    nccl_->host().all_gather(all.data(), slot * R);
    for (int r = 0; r < R; ++r)
      if (r != sh.rank()) unpack_dense(pieces[size_t(r)], at(r), buf.data());
  }
  // Reduces the layers not in `issued` (all of them when it is empty), then the global tensors; the runner's
  // stream then waits for the communication stream.
  void finish_reduction(const std::vector<bool>& issued) {
    for (int l = 0; l < gpu_->config().n_layer; ++l)
      if (issued.empty() || !issued[static_cast<size_t>(l)]) reduce_tensors(l);
    reduce_tensors(-1);
    CUDA_CHECK(cudaEventRecord(reduced_event_, comm_stream_));
    CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(gpu_->stream()), reduced_event_, 0));
    reduced_ = true;
  }
#endif

  CudaModelOptions model_options() const {
    CudaModelOptions o;
    o.recompute = run_.recompute;
    o.cudnn_attention = run_.cudnn_attention;
#if defined(STRATA_HAVE_NCCL)
    if (nccl_ && zero_ == 1) {
      o.shard_world = nccl_->world();
      o.shard_rank = nccl_->rank();
    }
#endif
    return o;
  }
  int nccl_rank() const {
#if defined(STRATA_HAVE_NCCL)
    if (nccl_) return nccl_->rank();
#endif
    return 0;
  }
  int nccl_world() const {
#if defined(STRATA_HAVE_NCCL)
    if (nccl_) return nccl_->world();
#endif
    return 1;
  }

  int B_, T_;
  int zero_ = 0;
  bool last_micro_ = true, reduced_ = false;
  bool masked_ = false;  // between mask_begin() and mask_end()
  cudaStream_t comm_stream_ = nullptr;
  cudaEvent_t grads_ready_ = nullptr, reduced_event_ = nullptr, updated_event_ = nullptr;
  std::vector<cudaEvent_t> gathered_;  // ZeRO-1: the all-gather's event per stage (-1, 0..L-1, L) at l + 1
  int gather_layers_ = -1;             // a pending all-gather's layer count; -1: none pending
#if defined(STRATA_HAVE_NCCL)
  std::unique_ptr<NcclCommunicator> nccl_;
#endif
  AdamWConfig adamw_;
  uint64_t seed_;
  CudaRunOptions run_;
  long t_ = 0;
  std::unique_ptr<CudaModel> gpu_;
  std::optional<ParamBuffer> host_params_;
  std::optional<AdamW> host_opt_;
  std::vector<uint16_t> weights_bits_;  // kept alive while a checkpoint writes them
  std::vector<float> shard_m_, shard_v_;  // likewise this rank's moments (ZeRO-1)
  // Growth phases on gpu_ (declared after it: destroyed first).
  std::unique_ptr<CudaGrowthMask> mask_;
  std::unique_ptr<CudaLearnedDepth> learned_;
};

}  // namespace

std::unique_ptr<TrainBackend> make_cuda_backend(const models::ModelConfig& cfg, int B, int T,
                                                const AdamWConfig& adamw, uint64_t seed,
                                                const DataParallelSetup& dp, const CudaRunOptions& run) {
#if !defined(STRATA_CUDA_EMU)
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) cudaGetLastError();
  STRATA_REQUIRE(err == cudaSuccess && n > 0, "--device cuda: no usable GPU (",
                 err != cudaSuccess ? cudaGetErrorString(err) : "no CUDA device", ")");
  // One GPU per rank on a host: local rank r takes device r (CUDA_VISIBLE_DEVICES may narrow the list).
  const Communicator& world = world_communicator();
  STRATA_REQUIRE(world.local_world() <= n, "--device cuda: ", world.local_world(),
                 " ranks on this host but only ", n, " GPU", n == 1 ? "" : "s",
                 " visible: start at most one rank per GPU");
  CUDA_CHECK(cudaSetDevice(world.local_rank()));
  process_context().device = world.local_rank();
#endif
  return std::make_unique<CudaBackend>(cfg, B, T, adamw, seed, dp, run);
}

}  // namespace strata
