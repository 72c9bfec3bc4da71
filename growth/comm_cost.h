// growth/comm_cost.h: the data-parallel communication-cost calculator (`strata plan --gpus N --link-gbps X`):
// from a model and an interconnect, the bytes each rank sends per optimizer step, the step time and the
// scaling efficiency of `mpirun -np N strata train ...` (ZeRO-0: gradient all-reduce; ZeRO-1: gradient
// reduce-scatter, AdamW moments and fp32 master weights sharded, parameter all-gather).
//
// The model, all per optimizer step, R ranks (GPUs), N parameters:
//   Volume (bytes each rank SENDS, ring collectives; dp_bytes_per_rank):
//     ring reduce-scatter and ring all-gather send (R-1)/R of the buffer per rank, a ring all-reduce
//     (reduce-scatter then all-gather) 2 (R-1)/R:
//       ZeRO-0  all_reduce     = 2 (R-1)/R * N * grad_bytes
//       ZeRO-1  reduce_scatter =   (R-1)/R * N * grad_bytes,  all_gather = (R-1)/R * N * param_bytes
//     R = 1: nothing. With grad_bytes == param_bytes both stages send the same total.
//   Bandwidth B: per GPU, Gbit/s (1 Gbit = 1e9 bits, B / 8 * 1e9 bytes/s). One ring through all R GPUs
//     runs at its slowest hop: intra_gbps (NVLink-class) when R <= gpus_per_node, else link_gbps (the
//     inter-node network per GPU).
//   Time of a collective: bytes / B + hops * latency, with R-1 hops for a reduce-scatter or an all-gather and
//     2 for an all-reduce (so both stages pay 2 hop latencies per step).
//   Compute: t_compute = F * tokens / (R * peak * mfu), F = models::train_flops_per_token at seq_len, tokens
//     the global batch; backward = 2/3 t_compute.
//   Overlap: the gradient reduction (all-reduce or reduce-scatter) runs during the backward pass: hidden =
//     min(t_grad, backward), exposed = t_grad - hidden. The ZeRO-1 parameter all-gather, issued after the
//     optimizer step stage by stage in the forward pass's order (engine/cuda_backend.cpp), runs during the
//     next forward pass (forward = 1/3 t_compute), except its first stage, the global tensors stored before
//     the first layer (the embeddings: a share f of N), which the forward pass waits for before it starts:
//     gather_hidden = min((1 - f) t_gather, forward). Without overlap nothing is hidden.
//     The overlap is an upper bound: with gradient accumulation a reduction issued during the last
//     micro-batch's backward can hide only behind that micro-batch (and the all-gather only behind the first
//     micro-batch's forward), and a stage's collective cannot start before the optimizer step ends.
//   Step: t_step = t_compute + exposed (both collectives); tokens/s = tokens / t_step.
//   Efficiency = (t_compute of the same global batch on 1 GPU / R) / t_step = t_compute / t_step (compute is
//     taken to scale perfectly; only communication costs).
// Not modelled: the optimizer step's own time, hierarchical (tree / NVLS) collectives, contention.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "models/model_config.h"

namespace strata::growth {

// Bytes each rank sends per optimizer step, by collective.
struct CommVolume {
  double reduce_scatter = 0.0;
  double all_gather = 0.0;
  double all_reduce = 0.0;
  double total() const { return reduce_scatter + all_gather + all_reduce; }
};

// The ring cost model above, exactly (the engine's communication benchmark checks measured bytes against
// it): world ranks, zero_stage 0 or 1, grad_bytes / param_bytes per element of the gradient / parameter
// buffers that are communicated. One-line strata::Error for world < 1, a stage other than 0 / 1, or a
// non-positive (or non-finite) n_params, grad_bytes or param_bytes.
CommVolume dp_bytes_per_rank(double n_params, int world, int zero_stage, double grad_bytes,
                             double param_bytes);

struct CommCostInput {
  models::ModelConfig model;
  int gpus = 1;
  int gpus_per_node = 8;
  std::optional<double> link_gbps;  // inter-node, per GPU, Gbit/s; required when gpus > gpus_per_node
  double intra_gbps = 3600.0;       // intra-node (NVLink-class), per GPU, Gbit/s (H100 NVLink: 450 GB/s)
  int zero_stage = 1;
  double grad_bytes = 2.0;   // bf16 gradients on the CUDA backend
  double param_bytes = 2.0;  // bf16 parameters gathered
  double global_batch_tokens = 524288.0;
  int seq_len = 0;             // 0 = the model's max_seq_len
  double peak_tflops = 989.4;  // H100 SXM dense bf16 (engine/peak_flops.h)
  double mfu = 0.45;           // single-GPU model FLOPs utilisation assumed
  double latency_us = 10.0;    // per ring hop (--latency-us)
  bool overlap = true;         // the gradient reduction overlaps the backward pass and the ZeRO-1 all-gather
                               // the next forward pass (--no-overlap: false)
};

// One point of the model: R GPUs at bottleneck bandwidth B.
struct StepEstimate {
  int gpus = 1;
  bool inter_node = false;      // gpus > gpus_per_node: the ring crosses the network
  double bandwidth_gbps = 0.0;  // the bottleneck B used
  CommVolume volume;            // bytes per rank per step
  double grad_comm_s = 0.0;     // all-reduce (ZeRO-0) or reduce-scatter (ZeRO-1), latency included
  double gather_comm_s = 0.0;   // ZeRO-1 parameter all-gather, latency included (0 for ZeRO-0)
  double compute_s = 0.0;       // t_compute at this R
  double hidden_s = 0.0;        // the part of grad_comm_s hidden behind the backward pass
  double gather_hidden_s = 0.0; // the part of gather_comm_s hidden behind the next forward pass
  double step_s = 0.0;
  double tokens_per_s = 0.0;
  double efficiency = 1.0;
  double comm_s() const { return grad_comm_s + gather_comm_s; }
  double exposed_s() const { return comm_s() - hidden_s - gather_hidden_s; }
};

struct CommCostPlan : StepEstimate {
  CommCostInput input;           // as given, seq_len resolved
  double n_params = 0.0;         // models::count_parameters(model).total()
  double flops_per_token = 0.0;  // models::train_flops_per_token(model, seq_len)
  double front_share = 0.0;      // f: the share of N in global tensors stored before the first layer
  // The bottleneck bandwidth (inter-node link when inter_node, else intra-node) at which efficiency reaches
  // 90% at these gpus. Absent at 1 GPU (no communication) and when latency alone keeps efficiency below 90%.
  std::optional<double> gbps_for_90;
  // Efficiency at 1, 2, 4, ... GPUs up to max(gpus, 64) (and gpus itself), the same link. Rows that need the
  // inter-node link stop when it was not given; rows with less than one sequence per GPU are left out.
  std::vector<StepEstimate> scaling;
  std::string scaling_note;  // why the table stops before max(gpus, 64); empty when it does not
};

// Validates the input (one-line strata::Errors naming the flag) and computes the plan.
CommCostPlan make_comm_cost_plan(const CommCostInput& in);

// The report `strata plan --gpus N` prints.
std::string format_comm_cost(const CommCostPlan& p);

}  // namespace strata::growth
