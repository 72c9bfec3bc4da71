"""bench/torch_train_bench.py: PyTorch's CPU training throughput on the step bench/train_bench.cpp times.

The model is tests/reference/torch_model.py in float32 (the reference the engine is tested against), with
PyTorch's usual parameter layout of one leaf per layer (see TorchModel, layer_leaves), random init by the
preset's rules, one fixed random (B,T) batch over the preset's vocabulary. One step = zero_grad, forward with
loss, backward, clip_grad_norm_(1.0), torch.optim.AdamW step (lr 1e-4; weight decay 0.1 on matrices and
embeddings). --warmup untimed steps, then --steps timed ones; prints tokens/s (median and best step), phase
medians and the peak resident set (resource.getrusage ru_maxrss, the whole process).

Usage: /usr/bin/python3 bench/torch_train_bench.py --model llama-mini --batch 4 --seq 64 --threads 2 [--json]
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import torch_model as tm  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-mini", choices=sorted(tm.PRESETS))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: all cores)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    cfg = tm.PRESETS[args.model]
    B, T = args.batch, args.seq
    assert T <= cfg.max_seq_len

    t0 = time.perf_counter()
    model = tm.TorchModel(cfg, tm.random_params(cfg), torch.float32, layer_leaves=True)
    opt = tm.make_adamw(model, (0.9, 0.95), 1e-8, 0.1, lr=1e-4)
    build_s = time.perf_counter() - t0
    inputs = torch.randint(0, cfg.vocab_size, (B, T))
    targets = torch.randint(0, cfg.vocab_size, (B, T))
    params = model.parameters()

    step_s, fwd_s, bwd_s, opt_s, losses = [], [], [], [], []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        _, loss = model.forward(inputs, targets)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        t3 = time.perf_counter()
        losses.append(loss.item())
        if i < args.warmup:
            continue
        step_s.append(t3 - t0)
        fwd_s.append(t1 - t0)
        bwd_s.append(t2 - t1)
        opt_s.append(t3 - t2)

    tokens = B * T
    med = statistics.median(step_s)
    n_params = sum(p.numel() for p in params)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    res = {
        "impl": "torch",
        "torch": torch.__version__,
        "model": args.model,
        "params": n_params,
        "B": B,
        "T": T,
        "threads": threads,
        "warmup": args.warmup,
        "steps": args.steps,
        "tokens_per_s": tokens / med,
        "tokens_per_s_best": tokens / min(step_s),
        "step_ms": 1e3 * med,
        "forward_ms": 1e3 * statistics.median(fwd_s),
        "backward_ms": 1e3 * statistics.median(bwd_s),
        "optimizer_ms": 1e3 * statistics.median(opt_s),
        "build_s": build_s,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "peak_rss_mb": rss_mb,
    }
    if args.json:
        print(json.dumps(res))
        return
    print(f"torch {torch.__version__} {args.model} ({n_params / 1e6:.1f} M params), B={B} T={T}, {threads} threads")
    print(f"  {res['tokens_per_s']:.0f} tokens/s (median step {res['step_ms']:.1f} ms; best {res['tokens_per_s_best']:.0f})")
    print(
        f"  forward {res['forward_ms']:.1f} ms, backward {res['backward_ms']:.1f} ms, "
        f"clip + AdamW {res['optimizer_ms']:.1f} ms (medians)"
    )
    print(f"  loss {losses[0]:.4f} -> {losses[-1]:.4f}, peak RSS {rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
