// `strata model`: prints a model's architecture, its parameter tensors and counts, and its training FLOPs.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>

#include "engine/check.h"
#include "models/cli.h"

namespace strata::models {
namespace {

std::string shape_text(const TensorSpec& s, int layers) {
  std::string t = "(";
  if (s.per_layer) t += cat(layers, ", ");
  for (size_t i = 0; i < s.shape.size(); ++i) t += cat(i ? ", " : "", s.shape[i]);
  return t + ")";
}

std::string init_text(const InitRule& r) {
  switch (r.kind) {
    case InitKind::kOnes:
      return "ones";
    case InitKind::kZeros:
      return "zeros";
    case InitKind::kNormal: {
      char buf[48];
      std::snprintf(buf, sizeof(buf), "N(0, %.4g)", r.std);
      return buf;
    }
  }
  return "?";
}

double millions(int64_t n) {
  return static_cast<double>(n) / 1e6;
}

void print_presets() {
  std::printf("%-12s %-6s %4s %6s %4s %4s %6s %6s %6s %11s %11s %11s\n", "preset", "family", "L", "C", "NH",
              "KVH", "F", "V", "Tmax", "embed (M)", "non-emb (M)", "total (M)");
  for (const ModelConfig& c : presets()) {
    const ParamCount p = count_parameters(c);
    std::printf("%-12s %-6s %4d %6d %4d %4d %6d %6d %6d %11.2f %11.2f %11.2f\n", c.name.c_str(),
                family_name(c.family), c.n_layer, c.d_model, c.n_head, c.n_kv_head, c.d_ff, c.vocab_size,
                c.max_seq_len, millions(p.embedding), millions(p.non_embedding), millions(p.total()));
  }
}

void print_model(const ModelConfig& c) {
  std::printf("model %s (%s): L=%d C=%d NH=%d KVH=%d HS=%d F=%d V=%d Tmax=%d norm_eps=%g%s\n", c.name.c_str(),
              family_name(c.family), c.n_layer, c.d_model, c.n_head, c.n_kv_head, c.head_dim(), c.d_ff,
              c.vocab_size, c.max_seq_len, static_cast<double>(c.norm_eps),
              c.family == Family::kLlama ? cat(" rope_base=", c.rope_base).c_str() : " tied embeddings");
  std::printf("\n%-16s %-22s %-16s %-6s %14s\n", "tensor", "shape", "init", "decay", "parameters");
  for (const TensorSpec& s : tensor_table(c)) {
    const int64_t n = s.numel_per_layer() * (s.per_layer ? c.n_layer : 1);
    std::printf("%-16s %-22s %-16s %-6s %14lld\n", s.name.c_str(), shape_text(s, c.n_layer).c_str(),
                init_text(s.init).c_str(), s.weight_decay ? "yes" : "no", static_cast<long long>(n));
  }
  const ParamCount p = count_parameters(c);
  std::printf("\nparameters: embedding %lld (%.2f M), non-embedding %lld (%.2f M), total %lld (%.2f M)\n",
              static_cast<long long>(p.embedding), millions(p.embedding),
              static_cast<long long>(p.non_embedding), millions(p.non_embedding),
              static_cast<long long>(p.total()), millions(p.total()));
  std::printf("training FLOPs per token at T=%d: %.4g (6 N_matmul + 12 L C T)\n", c.max_seq_len,
              train_flops_per_token(c, c.max_seq_len));
}

}  // namespace

void add_model_options(CLI::App& cmd, ModelOptions& o) {
  cmd.add_option("--model", o.preset, "Model preset (strata model --list shows them)");
  cmd.add_option("--n-layer", o.n_layer, "Override the preset's number of layers (L)");
  cmd.add_option("--d-model", o.d_model, "Override the preset's width (C)");
  cmd.add_option("--n-head", o.n_head, "Override the preset's attention heads (NH)");
  cmd.add_option("--n-kv-head", o.n_kv_head, "Override the preset's key/value heads (KVH, LLaMA only)");
  cmd.add_option("--d-ff", o.d_ff, "Override the preset's MLP hidden size (F)");
  cmd.add_option("--vocab-size", o.vocab_size, "Override the preset's vocabulary size (V)");
  cmd.add_option("--max-seq-len", o.max_seq_len, "Override the preset's context length (Tmax)");
  cmd.add_option("--norm-eps", o.norm_eps, "Override the norm epsilon");
  cmd.add_option("--rope-base", o.rope_base, "Override the RoPE base (LLaMA only)");
}

ModelConfig resolve_model(const ModelOptions& o) {
  ModelConfig c = preset(o.preset);
  bool changed = false;
  auto apply = [&](auto& field, const auto& value) {
    if (value) {
      field = *value;
      changed = true;
    }
  };
  apply(c.n_layer, o.n_layer);
  apply(c.d_model, o.d_model);
  apply(c.n_head, o.n_head);
  apply(c.n_kv_head, o.n_kv_head);
  apply(c.d_ff, o.d_ff);
  apply(c.vocab_size, o.vocab_size);
  apply(c.max_seq_len, o.max_seq_len);
  apply(c.norm_eps, o.norm_eps);
  apply(c.rope_base, o.rope_base);
  // GPT-2 has no grouped-query attention: overriding its heads moves the KV heads along.
  if (c.family == Family::kGpt2 && o.n_head && !o.n_kv_head) c.n_kv_head = c.n_head;
  if (changed) c.name += "+overrides";
  c.validate();
  return c;
}

void add_model_command(CLI::App& app) {
  auto opts = std::make_shared<ModelOptions>();
  auto list = std::make_shared<bool>(false);
  CLI::App* cmd = app.add_subcommand(
      "model",
      "Print a model's architecture, parameter tensors (shape, init, weight decay), counts and FLOPs");
  add_model_options(*cmd, *opts);
  cmd->add_flag("--list", *list, "List every preset with its shape and parameter counts");
  cmd->callback([opts, list] {
    if (*list)
      print_presets();
    else
      print_model(resolve_model(*opts));
  });
}

}  // namespace strata::models
