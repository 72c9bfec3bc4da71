#!/usr/bin/env python3
"""PyTorch baseline for bench/device_gpu_train.sh: the same models and batches as the `strata train --device cuda`
runs there, trained the way a strong PyTorch user would: torch.compile, scaled_dot_product_attention (flash),
bf16 autocast over fp32 parameters, fused AdamW (betas 0.9/0.95, weight decay 0.1 on matrices and embeddings).
Random tokens (the speed does not depend on them). Reports tokens/s over --steps steps after --warmup steps
(the first ones compile), and MFU with Strata's model FLOPs per token (models::train_flops_per_token: 6 x the
matrix parameters incl. the LM head, plus 12 L C T) against the H200/H100 SXM datasheet peak 989.4 TFLOP/s.
Prints one JSON object per run.

  python3 bench/torch_gpu_train_bench.py --model gpt2-124m --batch 16 --seq 1024
  python3 bench/torch_gpu_train_bench.py --model llama-1.1b --layers 4 --vocab 8192 --batch 4 --seq 2048
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {  # name: family, L, C, NH, KVH, F, V
    "gpt2-124m": ("gpt2", 12, 768, 12, 12, 3072, 50257),
    "llama-1.1b": ("llama", 24, 2048, 32, 4, 5632, 32000),
}


class RMSNorm(nn.Module):
    def __init__(self, c, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)


def rope(x, cos, sin):  # (B, H, T, HS), rotate-half layout
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Block(nn.Module):
    def __init__(self, fam, C, NH, KVH, Fd):
        super().__init__()
        self.fam, self.NH, self.KVH, self.HS = fam, NH, KVH, C // NH
        llama = fam == "llama"
        self.n1 = RMSNorm(C) if llama else nn.LayerNorm(C)
        self.n2 = RMSNorm(C) if llama else nn.LayerNorm(C)
        self.qkv = nn.Linear(C, (NH + 2 * KVH) * self.HS, bias=not llama)
        self.out = nn.Linear(C, C, bias=not llama)
        self.up = nn.Linear(C, 2 * Fd if llama else Fd, bias=not llama)
        self.down = nn.Linear(Fd, C, bias=not llama)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q, k, v = self.qkv(self.n1(x)).split([self.NH * self.HS, self.KVH * self.HS, self.KVH * self.HS], dim=-1)
        q = q.view(B, T, self.NH, self.HS).transpose(1, 2)
        k = k.view(B, T, self.KVH, self.HS).transpose(1, 2)
        v = v.view(B, T, self.KVH, self.HS).transpose(1, 2)
        if self.fam == "llama":
            q, k = rope(q, cos, sin), rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.KVH != self.NH)
        x = x + self.out(y.transpose(1, 2).reshape(B, T, C))
        h = self.up(self.n2(x))
        if self.fam == "llama":
            g, u = h.chunk(2, dim=-1)
            h = F.silu(g) * u
        else:
            h = F.gelu(h, approximate="tanh")
        return x + self.down(h)


class Model(nn.Module):
    def __init__(self, fam, L, C, NH, KVH, Fd, V, T):
        super().__init__()
        self.fam = fam
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(T, C) if fam == "gpt2" else None
        self.blocks = nn.ModuleList(Block(fam, C, NH, KVH, Fd) for _ in range(L))
        self.nf = RMSNorm(C) if fam == "llama" else nn.LayerNorm(C)
        self.head = nn.Linear(C, V, bias=False)
        if fam == "gpt2":
            self.head.weight = self.wte.weight  # tied
        HS = C // NH
        inv = 10000.0 ** (-torch.arange(0, HS // 2, dtype=torch.float32) * 2 / HS)
        ang = torch.arange(T, dtype=torch.float32)[:, None] * inv[None, :]
        self.register_buffer("cos", ang.cos(), persistent=False)
        self.register_buffer("sin", ang.sin(), persistent=False)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx, targets):
        B, T = idx.shape
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)
        for b in self.blocks:
            x = b(x, cos, sin)
        logits = self.head(self.nf(x))
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt2-124m", choices=sorted(PRESETS))
    ap.add_argument("--layers", type=int, default=0, help="override the layer count (0 = the preset's)")
    ap.add_argument("--vocab", type=int, default=0, help="override the vocabulary size (0 = the preset's)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    a = ap.parse_args()
    fam, L, C, NH, KVH, Fd, V = PRESETS[a.model]
    L = a.layers or L
    V = a.vocab or V
    torch.manual_seed(0)
    model = Model(fam, L, C, NH, KVH, Fd, V, a.seq).cuda()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    compiled = model if a.no_compile else torch.compile(model)
    idx = torch.randint(0, V, (a.batch, a.seq), device="cuda")
    tgt = torch.randint(0, V, (a.batch, a.seq), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = compiled(idx, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t_compile = time.time()
    for _ in range(a.warmup):
        step()
    torch.cuda.synchronize()
    t_compile = time.time() - t_compile
    t0 = time.time()
    for _ in range(a.steps):
        loss = step()
    torch.cuda.synchronize()
    dt = time.time() - t0
    tps = a.batch * a.seq * a.steps / dt
    n_emb = V * C + (a.seq * C if fam == "gpt2" else 0)
    n_all = sum(p.numel() for p in model.parameters())
    n_head = V * C
    non_emb = n_all - n_emb - (0 if fam == "gpt2" else n_head)
    flops_per_token = 6.0 * (non_emb + n_head) + 12.0 * L * C * a.seq
    print(json.dumps({"model": a.model, "layers": L, "batch": a.batch, "seq": a.seq, "compile": not a.no_compile,
                      "torch": torch.__version__, "device": torch.cuda.get_device_name(0), "tokens_per_s": tps,
                      "mfu": flops_per_token * tps / 989.4e12, "flops_per_token": flops_per_token,
                      "warmup_s": t_compile, "loss": float(loss), "loss_finite": math.isfinite(float(loss))}))


if __name__ == "__main__":
    main()
