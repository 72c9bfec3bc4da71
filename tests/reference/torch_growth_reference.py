"""tests/reference/torch_growth_reference.py CASE_DIR [--fp32-report]: golden values of depth growth.

Takes the small model of a reference case (CASE_DIR/case.json, grow_small.safetensors: the small model as
the engine wrote it, make_case's init with its gains and biases moved off 1 and 0 so that every tensor differs
between layers; batch.safetensors), grows it in PyTorch by the paper's definitions (Du et al. 2024,
/work/shared/PAPER.md), written here without reference to the engine's growth code:

  G_stack  the grown model's layer l is a copy of the small model's layer layers[l], every per-layer tensor
           copied exactly (norm gains, fused QKV, attention output, MLP, and GPT-2's biases); embeddings,
           final norm and LM head are kept once, unchanged. g=G: layers = [0..L-1] repeated G times; a layer
           list (partial stacking) names the source of each target layer directly.
  G_zero   as G_stack, but a target layer that is not the first occurrence of its source layer in the list
           gets a zero attention output projection and a zero MLP down projection (weights and, for GPT-2,
           their biases): each such block adds nothing to the residual stream, so the grown model computes
           the small model's function (checked here).

then writes, for every growth case of that model (GROWTH_CASES), CASE_DIR/grown_<name>.safetensors with the
grown model's float64 results, stored as F32:

  logits (B,T,V)     forward of the grown model on the case's batch
  loss [1]           mean cross-entropy over non-ignored targets
  grad.<name>        d loss / d parameter of the grown model (layer-indexed, L' layers), every parameter

and metadata: "stage" (the spec the engine's test grows with, growth/spec.h syntax), "op", "layers" (this
script's target layer list), "new_layers" (the targets that are not first occurrences), "n_layer".
tests/growth/reference_growth_test.cpp grows the engine's model from the same grow_small.safetensors by "stage"
and compares. --fp32-report also prints the error float32 torch makes on the grown model (the scale the
C++ test's tolerances are set above).
"""

import argparse
import dataclasses
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np  # noqa: E402
import torch_model as tm  # noqa: E402
from torch_reference import load_case  # noqa: E402


@dataclasses.dataclass
class GrowthCase:
    name: str  # file grown_<name>.safetensors
    op: str  # "stack" | "zero"
    layers: list  # the target layer list, written out here (not parsed from `stage`)
    stage: str  # what the engine's test grows with (growth/spec.h syntax); must say the same thing


# Per small case (2 layers each): G_stack [0,1] x 2 on both families, a partial layer list that repeats the
# back layer and reuses layer 0 out of order, G_zero on both families, once with the new layers at the end
# (g=2) and once interleaved (the interpolation order [0,0,1,1]: new layers at 1 and 3).
GROWTH_CASES = {
    "llama_gqa": [
        GrowthCase("stack_g2", "stack", [0, 1] * 2, "at=1 steps,op=stack,g=2"),
        GrowthCase("stack_0110", "stack", [0, 1, 1, 0], "at=1 steps,op=stack,layers=0,1,1,0"),
        GrowthCase("zero_0011", "zero", [0, 0, 1, 1], "at=1 steps,op=zero,layers=0,0,1,1"),
    ],
    "gpt2": [
        GrowthCase("stack_g2", "stack", [0, 1] * 2, "at=1 steps,op=stack,g=2"),
        GrowthCase("zero_g2", "zero", [0, 1] * 2, "at=1 steps,op=zero,g=2"),
    ],
}

# The residual-branch outputs of a block: attention output projection and MLP down projection (+ biases).
ZEROED_BY_G_ZERO = ("attn_out", "attn_out_bias", "mlp_down", "mlp_down_bias")


def new_layers(layers):
    """Targets whose source already appeared earlier in the list (the copies G_zero zeroes)."""
    seen, out = set(), []
    for t, s in enumerate(layers):
        if s in seen:
            out.append(t)
        seen.add(s)
    return out


def grow(cfg, params, op, layers):
    """(grown config, grown parameters: name -> tensor) by G_stack or G_zero (see the top of this file)."""
    assert op in ("stack", "zero"), op
    assert all(0 <= s < cfg.n_layer for s in layers) and len(layers) > cfg.n_layer, layers
    grown_cfg = dataclasses.replace(cfg, n_layer=len(layers))
    fresh = set(new_layers(layers))
    out = {}
    for spec in tm.tensor_table(cfg):
        w = params[spec.name]
        if not spec.per_layer:
            out[spec.name] = w.clone()
            continue
        blocks = []
        for t, s in enumerate(layers):
            block = w[s].clone()
            if op == "zero" and t in fresh and spec.name in ZEROED_BY_G_ZERO:
                block = torch.zeros_like(block)
            blocks.append(block)
        out[spec.name] = torch.stack(blocks)
    return grown_cfg, out


def run(cfg, params, batch, dtype):
    """logits, loss and every gradient of the model `params` on the batch, as float64 numpy arrays."""
    inputs = torch.from_numpy(batch["inputs"].astype(np.int64))
    targets = torch.from_numpy(batch["targets"].astype(np.int64))
    model = tm.TorchModel(cfg, params, dtype)
    logits, loss = model.forward(inputs, targets)
    loss.backward()
    out = {"logits": logits.detach(), "loss": loss.detach().reshape(1)}
    for s in model.specs:
        out["grad." + s.name] = model.p[s.name].grad.detach().clone()
    return {k: v.to(torch.float64).numpy() for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("case_dir")
    ap.add_argument("--fp32-report", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)  # deterministic reductions

    case, cfg, _, batch = load_case(args.case_dir)
    base, _ = safetensors_np.read(os.path.join(args.case_dir, "grow_small.safetensors"))
    small = {k: torch.from_numpy(v).to(torch.float64) for k, v in base.items()}
    small_ref = run(cfg, small, batch, torch.float64)
    for gc in GROWTH_CASES[case["name"]]:
        grown_cfg, grown = grow(cfg, small, gc.op, gc.layers)
        ref = run(grown_cfg, grown, batch, torch.float64)
        fresh = new_layers(gc.layers)
        dlogits = np.abs(ref["logits"] - small_ref["logits"]).max()
        print(
            f"{case['name']}/{gc.name}: {gc.op} layers {gc.layers} (new {fresh}), loss {ref['loss'][0]:.6f} "
            f"(small model {small_ref['loss'][0]:.6f}), max |logits - small logits| {dlogits:.2e}"
        )
        if gc.op == "zero":
            # Function preserving: the grown model's forward is the small model's, to float64 rounding.
            assert fresh and dlogits <= 1e-12, dlogits
            # The new blocks' inner tensors feed only the zeroed projections: their gradients are exactly 0.
            inner = ("attn_norm", "attn_qkv", "mlp_norm", "mlp_gate_up", "mlp_up")
            for name in inner + tuple(n + "_bias" for n in inner):
                if "grad." + name in ref:
                    g = ref["grad." + name]
                    assert all(np.all(g[t] == 0) for t in fresh), name
                    assert all(np.any(g[t] != 0) for t in range(len(gc.layers)) if t not in fresh), name
        else:
            assert dlogits > 1e-3, "G_stack left the function unchanged: the case would not test the copies"
        meta = {
            "case": case["name"],
            "growth": gc.name,
            "stage": gc.stage,
            "op": gc.op,
            "layers": ",".join(map(str, gc.layers)),
            "new_layers": ",".join(map(str, fresh)),
            "n_layer": str(grown_cfg.n_layer),
            "computed": "torch %s, float64; stored as F32" % torch.__version__,
            "generator": "tests/reference/torch_growth_reference.py",
        }
        safetensors_np.write(
            os.path.join(args.case_dir, f"grown_{gc.name}.safetensors"),
            {k: v.astype(np.float32) for k, v in ref.items()},
            meta,
        )
        if args.fp32_report:
            f32 = run(grown_cfg, grown, batch, torch.float32)
            print("  float32 torch vs float64 torch, max |err| / max |ref|:")
            for k, r in ref.items():
                scale = np.abs(r).max()
                err = np.abs(f32[k] - r).max() / scale if scale > 0 else np.abs(f32[k]).max()
                print(f"    {k:28s} {err:.2e}   (max |ref| {scale:.3e})")


if __name__ == "__main__":
    main()
