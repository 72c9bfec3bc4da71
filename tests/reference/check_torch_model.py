"""tests/reference/check_torch_model.py: self-checks of the PyTorch reference, run by regenerate.sh.

  1. The whole forward of both families against a naive per-token, per-head loop in numpy float64 (RoPE from
     the formula in kernels/ops.h element by element, GQA by the kv-head index h // (NH/KVH), softmax over
     s <= t), with random weights, and the loss against a per-position loop.
  2. Autograd in float64 against central finite differences on a few entries of every tensor.
  3. A few AdamW steps on one batch lower the loss; the schedule formulas at known points.

Usage: /usr/bin/python3 tests/reference/check_torch_model.py
"""

import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_model as tm  # noqa: E402


def naive_forward(cfg, P, inputs, targets):
    """Per-token loops in numpy float64. P: name -> np.ndarray (layer-indexed)."""
    B, T = inputs.shape
    C, NH, KVH, HS, V = cfg.d_model, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.vocab_size
    llama = cfg.family == "llama"

    def norm(x, w, b):
        if llama:
            return x / math.sqrt(np.mean(x * x) + cfg.norm_eps) * w
        mu = np.mean(x)
        var = np.mean((x - mu) ** 2)
        return (x - mu) / math.sqrt(var + cfg.norm_eps) * w + b

    def gelu(x):
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))

    def rope(vec, p):
        out = vec.copy()
        for i in range(HS // 2):
            th = p * cfg.rope_base ** (-2.0 * i / HS)
            c, s = math.cos(th), math.sin(th)
            out[i] = vec[i] * c - vec[i + HS // 2] * s
            out[i + HS // 2] = vec[i + HS // 2] * c + vec[i] * s
        return out

    logits = np.zeros((B, T, V))
    for b in range(B):
        x = np.zeros((T, C))
        for t in range(T):
            x[t] = P["tok_embedding"][inputs[b, t]]
            if not llama:
                x[t] += P["pos_embedding"][t]
        for l in range(cfg.n_layer):
            qs, ks, vs = np.zeros((T, NH, HS)), np.zeros((T, KVH, HS)), np.zeros((T, KVH, HS))
            for t in range(T):
                h = norm(x[t], P["attn_norm"][l], None if llama else P["attn_norm_bias"][l])
                qkv = P["attn_qkv"][l] @ h + (0 if llama else P["attn_qkv_bias"][l])
                for hh in range(NH):
                    qs[t, hh] = qkv[hh * HS : (hh + 1) * HS]
                for hh in range(KVH):
                    ks[t, hh] = qkv[NH * HS + hh * HS : NH * HS + (hh + 1) * HS]
                    vs[t, hh] = qkv[(NH + KVH) * HS + hh * HS : (NH + KVH) * HS + (hh + 1) * HS]
                if llama:
                    for hh in range(NH):
                        qs[t, hh] = rope(qs[t, hh], t)
                    for hh in range(KVH):
                        ks[t, hh] = rope(ks[t, hh], t)
            y = np.zeros((T, NH * HS))
            for t in range(T):
                for hh in range(NH):
                    kv = hh // (NH // KVH)
                    sc = np.array([qs[t, hh] @ ks[s, kv] / math.sqrt(HS) for s in range(t + 1)])
                    w = np.exp(sc - sc.max())
                    w /= w.sum()
                    y[t, hh * HS : (hh + 1) * HS] = sum(w[s] * vs[s, kv] for s in range(t + 1))
            for t in range(T):
                x[t] += P["attn_out"][l] @ y[t] + (0 if llama else P["attn_out_bias"][l])
                h = norm(x[t], P["mlp_norm"][l], None if llama else P["mlp_norm_bias"][l])
                if llama:
                    gu = P["mlp_gate_up"][l] @ h
                    g, u = gu[: cfg.d_ff], gu[cfg.d_ff :]
                    a = g / (1.0 + np.exp(-g)) * u
                    x[t] += P["mlp_down"][l] @ a
                else:
                    a = gelu(P["mlp_up"][l] @ h + P["mlp_up_bias"][l])
                    x[t] += P["mlp_down"][l] @ a + P["mlp_down_bias"][l]
        for t in range(T):
            h = norm(x[t], P["final_norm"], None if llama else P["final_norm_bias"])
            logits[b, t] = (P["lm_head"] if llama else P["tok_embedding"]) @ h
    tot, n = 0.0, 0
    for b in range(B):
        for t in range(T):
            y = targets[b, t]
            if y == tm.IGNORE_INDEX:
                continue
            z = logits[b, t]
            tot += math.log(np.sum(np.exp(z - z.max()))) + z.max() - z[y]
            n += 1
    return logits, tot / n


def perturb(cfg, params, gen):
    """Random gains and biases too (the init's ones and zeros would hide a swapped weight/bias)."""
    out = {}
    for s in tm.tensor_table(cfg):
        t = params[s.name]
        if s.std == 0:
            t = t + 0.3 * torch.randn(t.shape, generator=gen, dtype=t.dtype)
        out[s.name] = t
    return out


def batch(cfg, B, T, gen):
    inputs = torch.randint(0, cfg.vocab_size, (B, T), generator=gen)
    targets = torch.randint(0, cfg.vocab_size, (B, T), generator=gen)
    targets[0, 1] = tm.IGNORE_INDEX
    targets[B - 1, T - 1] = tm.IGNORE_INDEX
    return inputs, targets


def check_forward(cfg, gen):
    params = perturb(cfg, tm.random_params(cfg, gen, torch.float64), gen)
    # Larger weights than the init so attention is far from uniform and RoPE matters.
    params = {k: v * (3.0 if v.dim() >= 2 else 1.0) for k, v in params.items()}
    inputs, targets = batch(cfg, 2, 7, gen)
    m = tm.TorchModel(cfg, params, torch.float64)
    logits, loss = m.forward(inputs, targets)
    P = {k: v.numpy() for k, v in params.items()}
    ref_logits, ref_loss = naive_forward(cfg, P, inputs.numpy(), targets.numpy())
    err = np.abs(logits.detach().numpy() - ref_logits).max() / np.abs(ref_logits).max()
    lerr = abs(loss.item() - ref_loss) / abs(ref_loss)
    print(f"  {cfg.family}: forward vs naive loops: logits rel err {err:.2e}, loss rel err {lerr:.2e}")
    assert err < 1e-12 and lerr < 1e-12, (err, lerr)
    return m, inputs, targets


def check_grads(m, inputs, targets, gen):
    _, loss = m.forward(inputs, targets)
    loss.backward()
    worst = 0.0
    h = 1e-6
    for s in m.specs:
        p = m.p[s.name]
        flat = p.detach().view(-1)
        idx = torch.randint(0, flat.numel(), (4,), generator=gen).tolist()
        gmax = p.grad.abs().max().item()
        assert gmax > 0, s.name
        for i in idx:
            old = flat[i].item()
            with torch.no_grad():
                flat[i] = old + h
                lp = m.forward(inputs, targets)[1].item()
                flat[i] = old - h
                lm = m.forward(inputs, targets)[1].item()
                flat[i] = old
            fd = (lp - lm) / (2 * h)
            worst = max(worst, abs(fd - p.grad.view(-1)[i].item()) / gmax)
    print(f"  {m.cfg.family}: autograd vs central differences: max err / max |grad| {worst:.2e}")
    assert worst < 1e-5, worst  # roundoff of the differences: 1e-16 * loss / h, over max |grad|


def check_training(cfg, gen):
    m = tm.TorchModel(cfg, tm.random_params(cfg, gen, torch.float64), torch.float64)
    inputs, targets = batch(cfg, 3, 8, gen)
    opt = tm.make_adamw(m, (0.9, 0.95), 1e-8, 0.1)
    sched = tm.ScheduleConfig("cosine", 1e-2, 0.1, 2, 10)
    losses = [tm.train_step(m, opt, inputs, targets, tm.schedule_lr(sched, s), 1.0)[0].item() for s in range(10)]
    print(f"  {cfg.family}: 10 AdamW steps on one batch: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.8 * losses[0], losses


def check_layer_leaves(cfg, gen):
    """The per-layer-leaf layout (used by the benchmark) computes the same loss and gradients."""
    params = tm.random_params(cfg, gen, torch.float64)
    inputs, targets = batch(cfg, 2, 6, gen)
    a = tm.TorchModel(cfg, params, torch.float64)
    b = tm.TorchModel(cfg, params, torch.float64, layer_leaves=True)
    la, lb = a.forward(inputs, targets)[1], b.forward(inputs, targets)[1]
    la.backward()
    lb.backward()
    assert abs(la.item() - lb.item()) < 1e-14
    for s in a.specs:
        gb = torch.stack([x.grad for x in b.leaves(s)]) if s.per_layer else b.p[s.name].grad
        assert torch.allclose(a.p[s.name].grad, gb, rtol=0, atol=1e-15), s.name
    print(f"  {cfg.family}: per-layer leaves = layer-indexed leaves (loss, every gradient)")


def check_schedule():
    s = tm.ScheduleConfig("cosine", 1.0, 0.1, 2, 4)
    got = [tm.schedule_lr(s, i) for i in range(5)]
    # warmup 0.5, 1; cosine p = 0, 1/2; past the end keeps the last rate
    assert np.allclose(got, [0.5, 1.0, 1.0, 0.55, 0.55]), got
    w = tm.ScheduleConfig("wsd", 1.0, 0.1, 1, 10, 0.2)
    got = [tm.schedule_lr(w, i) for i in range(10)]
    assert np.allclose(got, [1.0] * 8 + [0.55, 0.1]), got
    print("  schedules: cosine and wsd at known points")


def main():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    cases = [
        tm.ModelConfig("llama", 2, 16, 4, 2, 24, 13, 8, 1e-5, 100.0),
        tm.ModelConfig("gpt2", 2, 16, 4, 4, 64, 13, 8),
    ]
    for cfg in cases:
        m, inputs, targets = check_forward(cfg, gen)
        check_grads(m, inputs, targets, gen)
        check_training(cfg, gen)
        check_layer_leaves(cfg, gen)
    check_schedule()
    print("torch_model self-checks: OK")


if __name__ == "__main__":
    main()
