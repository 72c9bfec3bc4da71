"""tests/reference/torch_learned_width_reference.py CASE_DIR [--fp32-report]: golden values of width G_learn.

Takes the small model of a reference case (CASE_DIR/case.json, grow_small.safetensors, batch.safetensors) and
grows it in width by learned expansion matrices (LiGO-style, the specification in growth/learned_width.h's
header), written here without reference to the engine's growth code. Every axis the stage grows gets a
matrix B (n' x n); every tensor of the grown model is W' = B_rows W B_cols^T (a 1-D tensor: w' = B_rows w):

  "resid"        (C' x C)     the residual stream: the columns of tok_embedding, pos_embedding and lm_head,
                              every norm gain and bias, the columns of attn_qkv, mlp_gate_up and mlp_up, the
                              rows of attn_out and mlp_down and their biases;
  "heads.<l>"    (NH' x NH)   per head, i.e. kron(B, I_hs): layer l's query rows of attn_qkv (and its bias)
                              and the columns of attn_out; under multi-head attention (NH = KVH before and
                              after: GPT-2) also the K and V rows;
  "kv_heads.<l>" (KVH' x KVH) kron(B, I_hs) on layer l's K rows and V rows of attn_qkv (grouped-query
                              attention);
  "ffn.<l>"      (F' x F)     the rows of mlp_up and mlp_up_bias (GPT-2), the gate rows and the up rows of
                              mlp_gate_up (LLaMA: [gate F; up F] -> [gate F'; up F'], one matrix for
                              both), the columns of mlp_down.

An axis the stage keeps has no matrix (identity), nor have the vocabulary and position axes. attn_qkv's rows
are [Q (NH hs); K (KVH hs); V (KVH hs)], so its row operator is blockdiag(Q heads, K heads, V heads). Each B
is [I; R] with R ~ N(0, 1/n') drawn here with torch's generator as float32 (the values the engine loads).

For every width case of the model (WIDTH_CASES) it builds W' from the small model in float64, runs the grown
model (torch_model.py) on the case's batch and writes CASE_DIR/learned_<name>.safetensors, stored as F32:

  B.<m>, mB.<m>, vB.<m>   (n' x n) the drawn matrices and zero Adam moments (LearnedWidth's checkpoint form)
  src.<tensor>            the small model's tensors in stored shapes (per-layer tensors (L, ...))
  logits (B,T,V), loss [1] of the grown model
  grad.<name>             d loss / d W' (layer-indexed), every parameter of the grown model
  dB.<m>                  d loss / d B (n' x n), by autograd through W' = f(B): the grown model's backward
                          gives d loss / d W', which is then back-propagated through the expansion

and metadata "stage" (the spec the engine's test builds its plan from), "matrices" (names in this script's
order), "seed" and the target sizes. tests/growth/reference_learned_width_test.cpp loads the file into the
engine's LearnedWidth, materialises, and compares. Self-checks here: dB against central differences of the
float64 loss, the small model bit for bit in each grown tensor's old block, and a grown function that differs
from the small model's (so the new rows are exercised). --fp32-report prints the error float32 torch makes on
the same computation.
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
class WidthCase:
    name: str  # file learned_<name>.safetensors
    d_model: int  # target sizes, written out here (not parsed from `stage`)
    n_head: int
    n_kv_head: int
    d_ff: int
    stage: str  # what the engine's test plans with (growth/spec.h syntax); must say the same thing
    seed: int  # torch.Generator seed of the R draws


# Per small case (2 layers, head dim 8): every axis grows. LLaMA GQA C 32 -> 48 (NH 4 -> 6), KVH 2 -> 3 (the
# query group of 2 kept), F 40 -> 60; GPT-2 C 32 -> 40 (NH = KVH 4 -> 5, one head matrix for Q, K and V),
# F 128 -> 132 (few new neurons: the ffn matrices are F' x F, the bulk of the file).
WIDTH_CASES = {
    "llama_gqa": [
        WidthCase("width_c48_f60", 48, 6, 3, 60, "at=1 steps,op=learn,d_model=48,n_kv_head=3,d_ff=60", 4001),
    ],
    "gpt2": [
        WidthCase("width_c40_f132", 40, 5, 5, 132, "at=1 steps,op=learn,d_model=40,d_ff=132", 4002),
    ],
}

# Central-difference step on B entries (O(0.1..1)): truncation h^2 |f'''| ~ 1e-12, rounding 1e-16 / h ~ 1e-11.
FD_STEP = 1e-5
FD_TOL = 1e-6  # relative to max |dB| of the matrix


def target_config(cfg, wc):
    to = dataclasses.replace(cfg, d_model=wc.d_model, n_head=wc.n_head, n_kv_head=wc.n_kv_head, d_ff=wc.d_ff)
    to.validate()
    assert to.head_dim == cfg.head_dim, "width growth keeps the head dim"
    assert to.n_head // to.n_kv_head == cfg.n_head // cfg.n_kv_head, "the query group size is kept"
    return to


def multi_head(cfg, to):
    """Whether K/V heads follow the query heads (one matrix for Q, K, V): MHA before and after."""
    return cfg.n_kv_head == cfg.n_head and to.n_kv_head == to.n_head


def matrix_shapes(cfg, to):
    """name -> (n', n) of every learned matrix, in order: resid, then per layer heads, kv_heads, ffn."""
    out = {}
    if to.d_model != cfg.d_model:
        out["resid"] = (to.d_model, cfg.d_model)
    for l in range(cfg.n_layer):
        if to.n_head != cfg.n_head:
            out[f"heads.{l}"] = (to.n_head, cfg.n_head)
        if not multi_head(cfg, to) and to.n_kv_head != cfg.n_kv_head:
            out[f"kv_heads.{l}"] = (to.n_kv_head, cfg.n_kv_head)
        if to.d_ff != cfg.d_ff:
            out[f"ffn.{l}"] = (to.d_ff, cfg.d_ff)
    return out


def draw_matrices(shapes, seed):
    """[I; R] with R ~ N(0, 1/n') in float32, one generator over the matrices in order."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, (n2, n) in shapes.items():
        r = torch.randn((n2 - n, n), generator=g, dtype=torch.float32) * np.float32(1.0 / np.sqrt(n2))
        out[name] = torch.cat((torch.eye(n, dtype=torch.float32), r)).numpy()
    return out


def grow(cfg, to, small, B):
    """The grown model's tensors W' = B_rows W B_cols^T (stored shapes of `to`), differentiable in B."""
    dtype = next(iter(small.values())).dtype
    HS, mha = cfg.head_dim, multi_head(cfg, to)

    def axis(name, n, width=1):
        m = B.get(name)
        m = torch.eye(n, dtype=dtype) if m is None else m
        return torch.kron(m, torch.eye(width, dtype=dtype)) if width > 1 else m

    resid = axis("resid", cfg.d_model)

    def ops(name, l):
        """(row operator, column operator or None) of tensor `name` in layer l (None for global tensors)."""
        if name in ("tok_embedding", "pos_embedding", "lm_head"):
            return None, resid  # vocabulary / positions: identity rows
        if name in ("mlp_up", "mlp_gate_up", "mlp_down", "mlp_up_bias"):
            ffn = axis(f"ffn.{l}", cfg.d_ff)
            return {
                "mlp_up": (ffn, resid),
                "mlp_up_bias": (ffn, None),
                "mlp_gate_up": (torch.block_diag(ffn, ffn), resid),
                "mlp_down": (resid, ffn),
            }[name]
        if name.startswith("attn_qkv") or name == "attn_out":
            q = axis(f"heads.{l}", cfg.n_head, HS)
            kv = axis(f"heads.{l}" if mha else f"kv_heads.{l}", cfg.n_kv_head, HS)
            if name == "attn_out":
                return resid, q
            rows = torch.block_diag(q, kv, kv)
            return (rows, resid) if name == "attn_qkv" else (rows, None)
        # Norm gains and biases, attn_out_bias, mlp_down_bias: the stream.
        assert name.endswith("_norm") or name.endswith("_norm_bias") or name.endswith("_bias"), name
        return resid, None

    def expand(w, rows, cols):
        if w.dim() == 1:
            return rows @ w
        if rows is not None:
            w = rows @ w
        return w @ cols.T

    out = {}
    for spec in tm.tensor_table(cfg):
        w = small[spec.name]
        if spec.per_layer:
            out[spec.name] = torch.stack([expand(w[l], *ops(spec.name, l)) for l in range(cfg.n_layer)])
        else:
            out[spec.name] = expand(w, *ops(spec.name, None))
    for spec in tm.tensor_table(to):
        assert tuple(out[spec.name].shape) == tm.stored_shape(to, spec), spec.name
    return out


def run(cfg, to, small_np, B_np, batch, dtype):
    """logits, loss, grad.<name> (d loss / d W') and dB.<m> (d loss / d B), as float64 numpy arrays."""
    inputs = torch.from_numpy(batch["inputs"].astype(np.int64))
    targets = torch.from_numpy(batch["targets"].astype(np.int64))
    small = {k: torch.from_numpy(v).to(dtype) for k, v in small_np.items()}
    B = {k: torch.from_numpy(v).to(dtype).requires_grad_(True) for k, v in B_np.items()}
    grown = grow(cfg, to, small, B)
    model = tm.TorchModel(to, {k: v.detach() for k, v in grown.items()}, dtype)
    logits, loss = model.forward(inputs, targets)
    loss.backward()
    out = {"logits": logits.detach(), "loss": loss.detach().reshape(1)}
    names = [s.name for s in model.specs]
    for n in names:
        out["grad." + n] = model.p[n].grad.detach().clone()
    # The chain rule's second half: d loss / d B = backward of W' = f(B) with d loss / d W' as its seed.
    torch.autograd.backward([grown[n] for n in names], [out["grad." + n] for n in names])
    for k, b in B.items():
        out["dB." + k] = b.grad.detach().clone()
    return {k: v.to(torch.float64).numpy() for k, v in out.items()}


def loss_only(cfg, to, small64, B_np, batch):
    inputs = torch.from_numpy(batch["inputs"].astype(np.int64))
    targets = torch.from_numpy(batch["targets"].astype(np.int64))
    B = {k: torch.from_numpy(v).to(torch.float64) for k, v in B_np.items()}
    model = tm.TorchModel(to, grow(cfg, to, small64, B), torch.float64, requires_grad=False)
    return model.forward(inputs, targets)[1].item()


def self_check(cfg, to, small_np, B_np, batch, ref, small_logits, tag):
    small64 = {k: torch.from_numpy(v).to(torch.float64) for k, v in small_np.items()}
    # The grown model is not the small one: the new rows and columns change the function.
    dlogits = np.abs(ref["logits"] - small_logits).max()
    assert dlogits > 1e-3, f"{tag}: the grown model computes the small one's function ({dlogits:.1e})"
    # B = [I; R] keeps the small model in each grown tensor's old block, bit for bit (here for the tensors
    # without a fused row layout).
    B64 = {k: torch.from_numpy(v).to(torch.float64) for k, v in B_np.items()}
    grown = grow(cfg, to, small64, B64)
    for spec in tm.tensor_table(cfg):
        if spec.name in ("attn_qkv", "attn_qkv_bias", "mlp_gate_up"):
            continue
        w, g = small64[spec.name], grown[spec.name]
        block = g[tuple(slice(0, n) for n in w.shape)]
        assert torch.equal(block, w), f"{tag}: {spec.name}'s old block is not the small model's"
    # dB against central differences of the float64 loss, at the largest entry of each matrix, one entry of
    # its identity block and one of its random rows.
    for k, b in B_np.items():
        d = ref["dB." + k]
        assert np.abs(d).max() > 0, f"{tag}: dB.{k} is zero"
        n = b.shape[1]
        for ij in (np.unravel_index(np.abs(d).argmax(), d.shape), (0, n - 1), (b.shape[0] - 1, 0)):
            hi, lo = dict(B_np), dict(B_np)
            hi[k], lo[k] = b.astype(np.float64), b.astype(np.float64)  # copies
            hi[k][ij] += FD_STEP
            lo[k][ij] -= FD_STEP
            up, down = loss_only(cfg, to, small64, hi, batch), loss_only(cfg, to, small64, lo, batch)
            fd = (up - down) / (2 * FD_STEP)
            err = abs(fd - d[ij]) / np.abs(d).max()
            assert err <= FD_TOL, f"{tag}: dB.{k}{tuple(ij)} autograd {d[ij]:.6e} vs central diff. {fd:.6e}"
    return dlogits


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("case_dir")
    ap.add_argument("--fp32-report", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)  # deterministic reductions

    case, cfg, _, batch = load_case(args.case_dir)
    small_np, _ = safetensors_np.read(os.path.join(args.case_dir, "grow_small.safetensors"))
    small_model = tm.TorchModel(cfg, small_np, torch.float64, requires_grad=False)
    inputs = torch.from_numpy(batch["inputs"].astype(np.int64))
    small_logits = small_model.forward(inputs)[0].detach().numpy()
    for wc in WIDTH_CASES[case["name"]]:
        tag = f"{case['name']}/{wc.name}"
        to = target_config(cfg, wc)
        shapes = matrix_shapes(cfg, to)
        B_np = draw_matrices(shapes, wc.seed)
        ref = run(cfg, to, small_np, B_np, batch, torch.float64)
        dlogits = self_check(cfg, to, small_np, B_np, batch, ref, small_logits, tag)
        print(
            f"{tag}: C {cfg.d_model}->{to.d_model} NH {cfg.n_head}->{to.n_head} KVH {cfg.n_kv_head}->"
            f"{to.n_kv_head} F {cfg.d_ff}->{to.d_ff}, matrices {' '.join(shapes)}; "
            f"loss {ref['loss'][0]:.6f}, "
            f"max |logits - small logits| {dlogits:.2e}; dB matches central differences"
        )
        tensors = {}
        for k, b in B_np.items():
            tensors["B." + k] = b
        for k, b in B_np.items():
            tensors["mB." + k] = np.zeros_like(b)
            tensors["vB." + k] = np.zeros_like(b)
        for spec in tm.tensor_table(cfg):
            tensors["src." + spec.name] = small_np[spec.name].astype(np.float32)
        tensors.update({k: v.astype(np.float32) for k, v in ref.items()})
        meta = {
            "case": case["name"],
            "growth": wc.name,
            "stage": wc.stage,
            "matrices": ",".join(shapes),
            "seed": str(wc.seed),
            "d_model": str(to.d_model),
            "n_head": str(to.n_head),
            "n_kv_head": str(to.n_kv_head),
            "d_ff": str(to.d_ff),
            "computed": "torch %s, float64 from the F32 B and src; stored as F32" % torch.__version__,
            "generator": "tests/reference/torch_learned_width_reference.py",
        }
        safetensors_np.write(os.path.join(args.case_dir, f"learned_{wc.name}.safetensors"), tensors, meta)
        if args.fp32_report:
            f32 = run(cfg, to, small_np, B_np, batch, torch.float32)
            print("  float32 torch vs float64 torch, max |err| / max |ref|:")
            for k, r in ref.items():
                scale = np.abs(r).max()
                err = np.abs(f32[k] - r).max() / scale if scale > 0 else np.abs(f32[k]).max()
                print(f"    {k:28s} {err:.2e}   (max |ref| {scale:.3e})")


if __name__ == "__main__":
    main()
