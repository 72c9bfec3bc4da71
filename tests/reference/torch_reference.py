"""tests/reference/torch_reference.py CASE_DIR [--fp32-report]: the golden values of one reference case.

Reads CASE_DIR/case.json (written by make_case), CASE_DIR/init.safetensors (the engine's initial parameters)
and CASE_DIR/batch.safetensors (inputs, targets I32 (B,T); -1 = ignored), runs tests/reference/torch_model.py
in float64 and writes CASE_DIR/golden.safetensors, every tensor stored as F32:

  logits (B,T,V)          forward without update
  loss [1]                mean cross-entropy over non-ignored targets
  grad.<name>             d loss / d parameter, layer-indexed shapes, for every parameter
  step_losses [steps]     loss before each AdamW step (all steps on the same batch)
  grad_norms [steps]      global gradient L2 norm before clipping
  lrs [steps]             the learning rate of each step (engine/schedule.h)
  final.<name>            parameters after the steps

--fp32-report also runs the same case in float32 torch and prints, per compared quantity, max |err| / max |ref|
against the float64 result: the error a correct float32 implementation shows, which the C++ test's tolerances
are set above.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np  # noqa: E402
import torch_model as tm  # noqa: E402


def load_case(case_dir):
    with open(os.path.join(case_dir, "case.json")) as f:
        case = json.load(f)
    cfg = tm.ModelConfig.from_dict(case["model"])
    init, _ = safetensors_np.read(os.path.join(case_dir, "init.safetensors"))
    batch, _ = safetensors_np.read(os.path.join(case_dir, "batch.safetensors"))
    return case, cfg, init, batch


def run(case, cfg, init, batch, dtype):
    """Everything the golden file holds, as float64 numpy arrays."""
    inputs = torch.from_numpy(batch["inputs"].astype(np.int64))
    targets = torch.from_numpy(batch["targets"].astype(np.int64))
    params = {k: torch.from_numpy(v) for k, v in init.items()}
    model = tm.TorchModel(cfg, params, dtype)
    out = {}

    logits, loss = model.forward(inputs, targets)
    loss.backward()
    out["logits"] = logits.detach()
    out["loss"] = loss.detach().reshape(1)
    for s in model.specs:
        out["grad." + s.name] = model.p[s.name].grad.detach().clone()

    opt_cfg, sch = case["optimizer"], case["schedule"]
    opt = tm.make_adamw(model, (opt_cfg["beta1"], opt_cfg["beta2"]), opt_cfg["eps"], opt_cfg["weight_decay"])
    sched = tm.ScheduleConfig(
        sch["kind"], sch["max_lr"], sch["min_lr_frac"], sch["warmup_steps"], sch["total_steps"], sch["decay_frac"]
    )
    losses, norms, lrs = [], [], []
    for step in range(case["steps"]):
        lr = tm.schedule_lr(sched, step)
        l, n = tm.train_step(model, opt, inputs, targets, lr, opt_cfg["grad_clip"])
        losses.append(l.item())
        norms.append(n.item())
        lrs.append(lr)
    out["step_losses"] = torch.tensor(losses, dtype=torch.float64)
    out["grad_norms"] = torch.tensor(norms, dtype=torch.float64)
    out["lrs"] = torch.tensor(lrs, dtype=torch.float64)
    for s in model.specs:
        out["final." + s.name] = model.p[s.name].detach().clone()
    return {k: v.to(torch.float64).numpy() for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("case_dir")
    ap.add_argument("--fp32-report", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)  # deterministic reductions

    case, cfg, init, batch = load_case(args.case_dir)
    ref = run(case, cfg, init, batch, torch.float64)
    clip = case["optimizer"]["grad_clip"]
    clipped = sum(1 for n in ref["grad_norms"] if n > clip)
    print(
        f"{case['name']}: loss {ref['loss'][0]:.6f}, step losses {np.round(ref['step_losses'], 6).tolist()}, "
        f"grad norms {np.round(ref['grad_norms'], 6).tolist()} (clip {clip}: {clipped} clipped), "
        f"lrs {ref['lrs'].tolist()}"
    )
    assert clipped >= 1, "clipping never triggers: lower grad_clip in make_case"
    if clipped == len(ref["grad_norms"]):
        print("  note: every step is clipped, so the unclipped branch is not exercised")
    meta = {
        "case": case["name"],
        "computed": "torch %s, float64; stored as F32" % torch.__version__,
        "generator": "tests/reference/torch_reference.py",
    }
    safetensors_np.write(
        os.path.join(args.case_dir, "golden.safetensors"),
        {k: v.astype(np.float32) for k, v in ref.items()},
        meta,
    )

    if args.fp32_report:
        f32 = run(case, cfg, init, batch, torch.float32)
        print(f"  float32 torch vs float64 torch, max |err| / max |ref| (the scale of a correct fp32 result):")
        for k, r in ref.items():
            scale = np.abs(r).max()
            err = np.abs(f32[k] - r).max() / scale if scale > 0 else np.abs(f32[k]).max()
            print(f"    {k:28s} {err:.2e}   (max |ref| {scale:.3e})")


if __name__ == "__main__":
    main()
