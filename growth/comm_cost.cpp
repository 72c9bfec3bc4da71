// growth/comm_cost.cpp: the data-parallel communication-cost calculator (see comm_cost.h for the model).
#include "growth/comm_cost.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "engine/check.h"
#include "growth/guideline.h"

namespace strata::growth {
namespace {

constexpr double kBitsPerByte = 8.0;
constexpr double kGiga = 1e9;
constexpr double kTera = 1e12;
constexpr double kMicro = 1e-6;
constexpr double kBackwardShare = 2.0 / 3.0;  // backward = 2x forward: 2/3 of the training FLOPs
constexpr double kForwardShare = 1.0 / 3.0;
constexpr double kTargetEfficiency = 0.9;
constexpr int kMinTableGpus = 64;
// The 90% search: bisection in log(bandwidth) over [1e-9, 1e12] Gbit/s, far beyond any interconnect.
constexpr double kSearchLowGbps = 1e-9;
constexpr double kSearchHighGbps = 1e12;
constexpr int kSearchIterations = 200;

bool positive(double x) {
  return std::isfinite(x) && x > 0.0;
}

int resolved_seq_len(const CommCostInput& in) {
  return in.seq_len > 0 ? in.seq_len : in.model.max_seq_len;
}

double bytes_per_s(double gbps) {
  return gbps * kGiga / kBitsPerByte;
}

bool inter_node(const CommCostInput& in, int gpus) {
  return gpus > in.gpus_per_node;
}

// Decimal units: 466.5 MB, 1.10 GB.
std::string bytes_text(double b) {
  char buf[32];
  if (b >= 1e9)
    std::snprintf(buf, sizeof(buf), "%.2f GB", b / 1e9);
  else if (b >= 1e6)
    std::snprintf(buf, sizeof(buf), "%.1f MB", b / 1e6);
  else if (b >= 1e3)
    std::snprintf(buf, sizeof(buf), "%.1f KB", b / 1e3);
  else
    std::snprintf(buf, sizeof(buf), "%.0f B", b);
  return buf;
}

std::string ms(double s) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f ms", s * 1e3);
  return buf;
}

std::string percent(double x) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f%%", 100.0 * x);
  return buf;
}

// A number with `digits` significant digits, without an exponent below 10^digits: 0.9375, 3600, 524288.
std::string num(double x, int digits = 4) {
  char buf[48];
  std::snprintf(buf, sizeof(buf), "%.*g", digits, x);
  return buf;
}

// The model at `gpus` GPUs and bottleneck bandwidth `gbps`, for a validated input.
StepEstimate estimate_step(const CommCostInput& in, double n_params, double front_share, double flops_per_token,
                           int gpus, double gbps) {
  StepEstimate e;
  e.gpus = gpus;
  e.inter_node = inter_node(in, gpus);
  e.bandwidth_gbps = gbps;
  e.volume = dp_bytes_per_rank(n_params, gpus, in.zero_stage, in.grad_bytes, in.param_bytes);
  const double bw = bytes_per_s(gbps);
  const double hop = in.latency_us * kMicro;
  const double ring_hops = gpus - 1;  // one reduce-scatter or all-gather; an all-reduce is both
  if (gpus > 1) {
    if (in.zero_stage == 0) {
      e.grad_comm_s = e.volume.all_reduce / bw + 2.0 * ring_hops * hop;
    } else {
      e.grad_comm_s = e.volume.reduce_scatter / bw + ring_hops * hop;
      e.gather_comm_s = e.volume.all_gather / bw + ring_hops * hop;
    }
  }
  e.compute_s = flops_per_token * in.global_batch_tokens / (gpus * in.peak_tflops * kTera * in.mfu);
  e.hidden_s = in.overlap ? std::min(e.grad_comm_s, kBackwardShare * e.compute_s) : 0.0;
  e.gather_hidden_s =
      in.overlap ? std::min((1.0 - front_share) * e.gather_comm_s, kForwardShare * e.compute_s) : 0.0;
  e.step_s = e.compute_s + e.exposed_s();
  e.tokens_per_s = in.global_batch_tokens / e.step_s;
  e.efficiency = e.compute_s / e.step_s;
  return e;
}

void validate(const CommCostInput& in) {
  STRATA_REQUIRE(in.gpus >= 1, "--gpus ", in.gpus, ": must be at least 1");
  STRATA_REQUIRE(in.gpus_per_node >= 1, "--gpus-per-node ", in.gpus_per_node, ": must be at least 1");
  if (in.link_gbps)
    STRATA_REQUIRE(positive(*in.link_gbps), "--link-gbps ", *in.link_gbps,
                   ": must be a positive bandwidth in Gbit/s per GPU");
  STRATA_REQUIRE(in.link_gbps || !inter_node(in, in.gpus), "--link-gbps: needed for --gpus ", in.gpus,
                 " (more than the ", in.gpus_per_node,
                 " GPUs of one node, --gpus-per-node): the inter-node bandwidth per GPU in Gbit/s, e.g. 400");
  STRATA_REQUIRE(positive(in.intra_gbps), "--intra-gbps ", in.intra_gbps,
                 ": must be a positive bandwidth in Gbit/s per GPU");
  STRATA_REQUIRE(in.zero_stage == 0 || in.zero_stage == 1, "--zero ", in.zero_stage,
                 ": the ZeRO stage must be 0 (all-reduce) or 1 (reduce-scatter + all-gather)");
  STRATA_REQUIRE(positive(in.grad_bytes), "--grad-bytes ", in.grad_bytes, ": must be a positive byte count");
  STRATA_REQUIRE(positive(in.param_bytes), "--param-bytes ", in.param_bytes,
                 ": must be a positive byte count");
  STRATA_REQUIRE(in.seq_len >= 0, "--seq-len ", in.seq_len, ": must be positive");
  const int seq_len = resolved_seq_len(in);
  STRATA_REQUIRE(seq_len <= in.model.max_seq_len, "--seq-len ", seq_len, " exceeds the model's max_seq_len ",
                 in.model.max_seq_len);
  STRATA_REQUIRE(positive(in.global_batch_tokens), "--global-batch-tokens ", num(in.global_batch_tokens, 15),
                 ": must be a positive number of tokens");
  STRATA_REQUIRE(in.global_batch_tokens >= static_cast<double>(seq_len) * in.gpus, "--global-batch-tokens ",
                 num(in.global_batch_tokens, 15), ": less than one sequence of ", seq_len,
                 " tokens per GPU (needs >= ", static_cast<long long>(seq_len) * in.gpus, " for ", in.gpus,
                 " GPUs)");
  STRATA_REQUIRE(positive(in.peak_tflops), "--peak-tflops ", in.peak_tflops,
                 ": must be a positive number of TFLOP/s");
  STRATA_REQUIRE(std::isfinite(in.mfu) && in.mfu > 0.0 && in.mfu <= 1.0, "--mfu ", in.mfu,
                 ": must be a fraction in (0, 1]");
  STRATA_REQUIRE(std::isfinite(in.latency_us) && in.latency_us >= 0.0, "--latency-us ", in.latency_us,
                 ": must be a non-negative number of microseconds");
}

}  // namespace

CommVolume dp_bytes_per_rank(double n_params, int world, int zero_stage, double grad_bytes,
                             double param_bytes) {
  STRATA_REQUIRE(world >= 1, "--gpus ", world, ": the world size must be at least 1");
  STRATA_REQUIRE(zero_stage == 0 || zero_stage == 1, "--zero ", zero_stage,
                 ": the ZeRO stage must be 0 (all-reduce) or 1 (reduce-scatter + all-gather)");
  STRATA_REQUIRE(positive(n_params), "parameter count ", n_params, ": must be positive");
  STRATA_REQUIRE(positive(grad_bytes), "--grad-bytes ", grad_bytes, ": must be a positive byte count");
  STRATA_REQUIRE(positive(param_bytes), "--param-bytes ", param_bytes, ": must be a positive byte count");
  CommVolume v;
  const double share = static_cast<double>(world - 1) / world;  // (R-1)/R
  if (zero_stage == 0) {
    v.all_reduce = 2.0 * share * n_params * grad_bytes;
  } else {
    v.reduce_scatter = share * n_params * grad_bytes;
    v.all_gather = share * n_params * param_bytes;
  }
  return v;
}

CommCostPlan make_comm_cost_plan(const CommCostInput& in) {
  validate(in);
  CommCostPlan p;
  p.input = in;
  p.input.seq_len = resolved_seq_len(in);
  p.n_params = static_cast<double>(models::count_parameters(in.model).total());
  p.flops_per_token = models::train_flops_per_token(in.model, p.input.seq_len);
  double front = 0.0;  // the global tensors stored before the first per-layer kind
  for (const models::TensorSpec& t : models::tensor_table(in.model)) {
    if (t.per_layer) break;
    front += static_cast<double>(t.numel_per_layer());
  }
  p.front_share = front / p.n_params;
  const CommCostInput& c = p.input;

  auto bandwidth_at = [&](int gpus) { return inter_node(c, gpus) ? *c.link_gbps : c.intra_gbps; };
  auto at = [&](int gpus, double gbps) {
    return estimate_step(c, p.n_params, p.front_share, p.flops_per_token, gpus, gbps);
  };
  static_cast<StepEstimate&>(p) = at(c.gpus, bandwidth_at(c.gpus));

  // The bandwidth for 90%: efficiency rises monotonically with the bandwidth (every comm time falls), so
  // bisect in log(bandwidth) between a bound where it is below 90% and one where it is above.
  if (c.gpus > 1) {
    auto eff = [&](double gbps) { return at(c.gpus, gbps).efficiency; };
    double lo = kSearchLowGbps, hi = kSearchHighGbps;
    if (eff(hi) >= kTargetEfficiency) {
      if (eff(lo) >= kTargetEfficiency) {
        p.gbps_for_90 = lo;
      } else {
        for (int i = 0; i < kSearchIterations; ++i) {
          const double mid = std::sqrt(lo * hi);
          (eff(mid) >= kTargetEfficiency ? hi : lo) = mid;
        }
        p.gbps_for_90 = hi;
      }
    }
  }

  // The scaling table: powers of two up to max(gpus, 64), and gpus itself.
  std::vector<int> counts;
  for (int g = 1; g <= std::max(c.gpus, kMinTableGpus); g *= 2) {
    counts.push_back(g);
    if (g > std::max(c.gpus, kMinTableGpus) / 2) break;  // no overflow past the bound
  }
  if (std::find(counts.begin(), counts.end(), c.gpus) == counts.end()) counts.push_back(c.gpus);
  std::sort(counts.begin(), counts.end());
  for (int g : counts) {
    if (inter_node(c, g) && !c.link_gbps) {
      p.scaling_note = "more GPUs cross nodes: give --link-gbps for those rows";
      break;
    }
    if (c.global_batch_tokens < static_cast<double>(c.seq_len) * g) {
      p.scaling_note = cat("more GPUs would get less than one sequence of ", c.seq_len,
                           " tokens each: raise --global-batch-tokens");
      break;
    }
    p.scaling.push_back(at(g, bandwidth_at(g)));
  }
  return p;
}

std::string format_comm_cost(const CommCostPlan& p) {
  const CommCostInput& c = p.input;
  const bool z1 = c.zero_stage == 1;
  const bool single = c.gpus == 1;
  char line[256];
  std::string s;
  // "    name            value       comment"
  auto item = [&](const char* name, const std::string& value, const std::string& comment) {
    std::snprintf(line, sizeof(line), "    %-16s%12s%s%s\n", name, value.c_str(),
                  comment.empty() ? "" : "   ", comment.c_str());
    s += line;
  };

  s += cat("Data-parallel communication per optimizer step: ring collectives, ZeRO-", c.zero_stage,
           z1 ? " (gradient reduce-scatter,\nAdamW state sharded, parameter all-gather)\n\n"
              : " (gradient all-reduce)\n\n");
  const int nodes = (c.gpus + c.gpus_per_node - 1) / c.gpus_per_node;
  s += cat("  model       ", c.model.name, ": N = ", human_number(p.n_params),
           " parameters, F = ", num(p.flops_per_token), " training FLOPs/token at T = ", c.seq_len, "\n");
  s += cat("  setup       R = ", c.gpus, single ? " GPU" : " GPUs", " (", nodes,
           nodes == 1 ? " node" : " nodes", " of ", c.gpus_per_node, "), global batch ",
           num(c.global_batch_tokens, 15), " tokens (",
           num(c.global_batch_tokens / (static_cast<double>(c.seq_len) * c.gpus)), " sequences per GPU)\n");
  s += cat("  ring        B = ", num(p.bandwidth_gbps), " Gbit/s per GPU (",
           p.inter_node ? "the inter-node link, the slowest hop" : "intra-node", ": ",
           bytes_text(bytes_per_s(p.bandwidth_gbps)), "/s), ", num(c.latency_us), " us per hop\n\n");

  s += cat("  volume per rank, bytes sent (MB = 1e6 bytes), (R-1)/R = ",
           num(static_cast<double>(c.gpus - 1) / c.gpus), "\n");
  if (z1) {
    item("reduce-scatter", bytes_text(p.volume.reduce_scatter),
         cat("(R-1)/R x N x grad_bytes (", num(c.grad_bytes), ")"));
    item("all-gather", bytes_text(p.volume.all_gather),
         cat("(R-1)/R x N x param_bytes (", num(c.param_bytes), ")"));
  } else {
    item("all-reduce", bytes_text(p.volume.all_reduce),
         cat("2 (R-1)/R x N x grad_bytes (", num(c.grad_bytes), ")"));
  }
  item("total", bytes_text(p.volume.total()), "");

  s +=
      "\n  time per step: collective = bytes / B + hops x latency, compute = F x tokens / (R x peak x MFU)\n";
  const double backward = kBackwardShare * p.compute_s;
  std::string grad_note = "no communication";
  if (!single)
    grad_note =
        cat(z1 ? c.gpus - 1 : 2 * (c.gpus - 1), " hops; ",
            c.overlap ? cat("overlaps the backward pass (", ms(backward), "): ", ms(p.hidden_s), " hidden")
                      : std::string("not overlapped (--no-overlap)"));
  item(z1 ? "reduce-scatter" : "all-reduce", ms(p.grad_comm_s), grad_note);
  if (z1)
    item("all-gather", ms(p.gather_comm_s),
         single ? std::string("no communication")
                : cat(c.gpus - 1, " hops; ",
                      c.overlap ? cat("overlaps the next forward pass (", ms(kForwardShare * p.compute_s),
                                      ") after its first stage (the embeddings, ", percent(p.front_share),
                                      " of N): ", ms(p.gather_hidden_s), " hidden")
                                : std::string("not overlapped (--no-overlap)")));
  item("compute", ms(p.compute_s), cat(num(c.peak_tflops), " TFLOP/s peak x MFU ", percent(c.mfu)));
  item("step", ms(p.step_s), cat("compute + exposed communication (", ms(p.exposed_s()), ")"));
  item("throughput", human_number(p.tokens_per_s), "tokens/s");
  item("efficiency", percent(p.efficiency), "(1-GPU compute time of the batch / R) / step time");
  const char* which = p.inter_node ? "inter-node link" : "intra-node bandwidth";
  if (single)
    item("90% efficiency", "n/a", "at 1 GPU");
  else if (p.gbps_for_90)
    item("90% efficiency", cat(num(*p.gbps_for_90), " Gbit/s"),
         cat(which, " per GPU needed (now ", num(p.bandwidth_gbps), ")"));
  else
    item("90% efficiency", "unreachable",
         cat("at any bandwidth: ", 2 * (c.gpus - 1), " hop latencies of ", num(c.latency_us),
             " us are too long for this step"));

  s += cat("\n  scaling, the same global batch (",
           c.link_gbps ? cat(num(*c.link_gbps), " Gbit/s inter-node, ") : "", num(c.intra_gbps),
           " Gbit/s intra-node, ", c.gpus_per_node, " GPUs per node)\n");
  std::snprintf(line, sizeof(line), "    %6s %6s %12s %10s %12s %10s %12s %10s\n", "GPUs", "ring",
                "sent/rank", "comm ms", "exposed ms", "step ms", "tokens/s", "efficiency");
  s += line;
  for (const StepEstimate& e : p.scaling) {
    std::snprintf(line, sizeof(line), "    %6d %6s %12s %10.2f %12.2f %10.2f %12s %10s%s\n", e.gpus,
                  e.gpus == 1 ? "-" : (e.inter_node ? "inter" : "intra"),
                  bytes_text(e.volume.total()).c_str(), e.comm_s() * 1e3, e.exposed_s() * 1e3, e.step_s * 1e3,
                  human_number(e.tokens_per_s).c_str(), percent(e.efficiency).c_str(),
                  e.gpus == c.gpus ? "   <- --gpus" : "");
    s += line;
  }
  if (!p.scaling_note.empty()) s += cat("    (", p.scaling_note, ")\n");
  return s;
}

}  // namespace strata::growth
