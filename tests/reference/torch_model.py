"""tests/reference/torch_model.py: an independent PyTorch implementation of Strata's two model families.

Written with whole-tensor torch ops (no per-element loops), from the descriptions in engine/model.h,
models/model_config.h and kernels/ops.h, so it shares no code with the engine:

  LLaMA  RMSNorm (x * rsqrt(mean(x^2) + eps) * w), fused qkv rows [NH*HS query | KVH*HS key | KVH*HS value],
         RoPE in the NeoX "rotate half" layout on the full head dim, grouped-query attention (query head h
         reads kv head h // (NH/KVH)), SwiGLU with mlp_gate_up rows [gate F | up F], untied lm_head.
  GPT-2  LayerNorm with bias, learned position embedding, biases on every linear map, tanh GELU, LM head tied
         to tok_embedding.

Parameters are leaf tensors in the engine's layer-indexed layout: a per-layer kind is ONE tensor (L, ...)
indexed [l] inside the forward, so .grad comes out in the layout the engine and its safetensors files use.

Also here: the tensor table (names, stored shapes, weight decay), the learning-rate schedules of
engine/schedule.h, and the training step as PyTorch does it (AdamW with two param groups,
clip_grad_norm_).

Needs torch >= 1.13 (Debian's python3-torch; run with /usr/bin/python3).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -1


@dataclass
class ModelConfig:
    """The fields of strata::models::ModelConfig, with the same names."""

    family: str  # "llama" | "gpt2"
    n_layer: int
    d_model: int
    n_head: int
    n_kv_head: int
    d_ff: int
    vocab_size: int
    max_seq_len: int
    norm_eps: float = 1e-5
    rope_base: float = 10000.0

    @staticmethod
    def from_dict(d):
        names = ModelConfig.__dataclass_fields__.keys()
        return ModelConfig(**{k: d[k] for k in names if k in d})

    @property
    def head_dim(self):
        return self.d_model // self.n_head

    def validate(self):
        assert self.family in ("llama", "gpt2"), self.family
        assert self.d_model % self.n_head == 0 and self.n_head % self.n_kv_head == 0
        assert self.head_dim % 2 == 0 or self.family == "gpt2"
        if self.family == "gpt2":
            assert self.n_kv_head == self.n_head


# Presets used by the benchmarks (models/model_config.cpp, presets()).
PRESETS = {
    "llama-tiny": ModelConfig("llama", 4, 128, 4, 2, 352, 8192, 256),
    "llama-mini": ModelConfig("llama", 8, 256, 8, 4, 704, 8192, 512),
    "gpt2-tiny": ModelConfig("gpt2", 4, 128, 4, 4, 512, 8192, 256),
    "gpt2-mini": ModelConfig("gpt2", 8, 256, 8, 8, 1024, 8192, 512),
    "gpt2-124m": ModelConfig("gpt2", 12, 768, 12, 12, 3072, 50257, 1024),
}


@dataclass
class Spec:
    name: str
    per_layer: bool
    shape: tuple  # without the L axis
    std: float  # normal init std; 0 for constant tensors
    const: float  # value of constant tensors (ones / zeros)
    decay: bool  # weight decay: matrices and embeddings (rank 2 per layer)


def tensor_table(cfg):
    """The tensors of a configuration in storage order (models/model_config.h, tensor_table)."""
    V, C, L, Fd, HS = cfg.vocab_size, cfg.d_model, cfg.n_layer, cfg.d_ff, cfg.head_dim
    NH, KVH, Tm = cfg.n_head, cfg.n_kv_head, cfg.max_seq_len

    def mat(name, per_layer, shape, std):
        return Spec(name, per_layer, tuple(shape), std, 0.0, True)

    def vec(name, per_layer, shape, value):
        return Spec(name, per_layer, tuple(shape), 0.0, value, False)

    if cfg.family == "llama":
        std = math.sqrt(2.0 / (5.0 * C))
        res = 1.0 / math.sqrt(C) / L
        return [
            mat("tok_embedding", False, (V, C), std),
            vec("attn_norm", True, (C,), 1.0),
            mat("attn_qkv", True, ((NH + 2 * KVH) * HS, C), std),
            mat("attn_out", True, (C, NH * HS), res),
            vec("mlp_norm", True, (C,), 1.0),
            mat("mlp_gate_up", True, (2 * Fd, C), std),
            mat("mlp_down", True, (C, Fd), res),
            vec("final_norm", False, (C,), 1.0),
            mat("lm_head", False, (V, C), std),
        ]
    res = 0.02 / math.sqrt(2.0 * L)
    return [
        mat("tok_embedding", False, (V, C), 0.02),
        mat("pos_embedding", False, (Tm, C), 0.02),
        vec("attn_norm", True, (C,), 1.0),
        vec("attn_norm_bias", True, (C,), 0.0),
        mat("attn_qkv", True, (3 * C, C), 0.02),
        vec("attn_qkv_bias", True, (3 * C,), 0.0),
        mat("attn_out", True, (C, C), res),
        vec("attn_out_bias", True, (C,), 0.0),
        vec("mlp_norm", True, (C,), 1.0),
        vec("mlp_norm_bias", True, (C,), 0.0),
        mat("mlp_up", True, (Fd, C), 0.02),
        vec("mlp_up_bias", True, (Fd,), 0.0),
        mat("mlp_down", True, (C, Fd), res),
        vec("mlp_down_bias", True, (C,), 0.0),
        vec("final_norm", False, (C,), 1.0),
        vec("final_norm_bias", False, (C,), 0.0),
    ]


def stored_shape(cfg, spec):
    return ((cfg.n_layer,) if spec.per_layer else ()) + spec.shape


def random_params(cfg, generator=None, dtype=torch.float32):
    """Parameters drawn by the init rules with torch's RNG (not the engine's stream: for standalone use)."""
    out = {}
    for s in tensor_table(cfg):
        shape = stored_shape(cfg, s)
        if s.std > 0:
            out[s.name] = torch.randn(shape, generator=generator, dtype=dtype) * s.std
        else:
            out[s.name] = torch.full(shape, s.const, dtype=dtype)
    return out


# ---- the model ------------------------------------------------------------------------------------------------


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_tables(T, HS, base, dtype, pos0=0):
    """cos, sin of shape (T, HS): theta_i = p * base^(-2i/HS) for i < HS/2, repeated for the second half."""
    i = torch.arange(HS // 2, dtype=torch.float64)
    inv_freq = float(base) ** (-2.0 * i / HS)
    pos = torch.arange(pos0, pos0 + T, dtype=torch.float64)
    ang = torch.outer(pos, inv_freq)  # (T, HS/2)
    ang = torch.cat((ang, ang), dim=-1)  # (T, HS)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x, cos, sin):
    """x (B, H, T, HS); NeoX layout: x' = x cos + rotate_half(x) sin."""
    return x * cos + rotate_half(x) * sin


def causal_attention(q, k, v, n_rep):
    """q (B,NH,T,HS), k, v (B,KVH,T,HS) -> (B,NH,T,HS). GQA: query head h reads kv head h // n_rep."""
    k = k.repeat_interleave(n_rep, dim=1)
    v = v.repeat_interleave(n_rep, dim=1)
    T, HS = q.shape[-2], q.shape[-1]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(HS))  # (B,NH,T,T)
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    scores = scores.masked_fill(mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


class TorchModel:
    """Forward of either family over layer-indexed leaf tensors `self.p[name]`."""

    def __init__(self, cfg, params, dtype=torch.float64, requires_grad=True, layer_leaves=False):
        """params: name -> layer-indexed tensor. layer_leaves=True keeps each layer of a per-layer kind as its
        own leaf (PyTorch's usual one-parameter-per-layer layout; the benchmark uses it, since the backward of
        indexing one (L, ...) leaf writes a zero-filled (L, ...) gradient per layer); .grad then is per layer.
        """
        cfg.validate()
        self.cfg = cfg
        self.specs = tensor_table(cfg)
        self.layer_leaves = layer_leaves
        self.p = {}
        for s in self.specs:
            t = torch.as_tensor(params[s.name]).to(dtype).clone()
            assert tuple(t.shape) == stored_shape(cfg, s), (s.name, tuple(t.shape), stored_shape(cfg, s))
            if layer_leaves and s.per_layer:
                self.p[s.name] = [x.clone().requires_grad_(requires_grad) for x in t.unbind(0)]
            else:
                self.p[s.name] = t.requires_grad_(requires_grad)
        self.dtype = dtype
        self._rope = {}

    def leaves(self, spec):
        """The leaf tensors of one table entry."""
        t = self.p[spec.name]
        return list(t) if isinstance(t, list) else [t]

    def parameters(self):
        return [x for s in self.specs for x in self.leaves(s)]

    def _w(self, name, l=None):
        """Global tensor `name`, or layer l of a per-layer kind."""
        return self.p[name] if l is None else self.p[name][l]

    def _norm(self, x, name, l=None):
        w = self._w(name, l)
        eps = self.cfg.norm_eps
        if self.cfg.family == "llama":
            return rms_norm(x, w, eps)
        return F.layer_norm(x, (x.shape[-1],), w, self._w(name + "_bias", l), eps)

    def _bias(self, name, l):
        return self._w(name + "_bias", l) if self.cfg.family == "gpt2" else None

    def forward(self, inputs, targets=None):
        """inputs, targets (B,T) int64; returns logits (B,T,V) and the mean loss over non-ignored targets."""
        cfg, p = self.cfg, self.p
        B, T = inputs.shape
        C, NH, KVH, HS = cfg.d_model, cfg.n_head, cfg.n_kv_head, cfg.head_dim
        assert T <= cfg.max_seq_len
        x = p["tok_embedding"][inputs]  # (B,T,C)
        if cfg.family == "gpt2":
            x = x + p["pos_embedding"][:T]
        else:
            if T not in self._rope:
                self._rope[T] = rope_tables(T, HS, cfg.rope_base, self.dtype)
            cos, sin = self._rope[T]
        for l in range(cfg.n_layer):
            h = self._norm(x, "attn_norm", l)
            qkv = F.linear(h, self._w("attn_qkv", l), self._bias("attn_qkv", l))  # (B,T,(NH+2KVH)*HS)
            q, k, v = qkv.split([NH * HS, KVH * HS, KVH * HS], dim=-1)
            q = q.view(B, T, NH, HS).transpose(1, 2)
            k = k.view(B, T, KVH, HS).transpose(1, 2)
            v = v.view(B, T, KVH, HS).transpose(1, 2)
            if cfg.family == "llama":
                q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            y = causal_attention(q, k, v, NH // KVH).transpose(1, 2).reshape(B, T, NH * HS)
            x = x + F.linear(y, self._w("attn_out", l), self._bias("attn_out", l))
            h = self._norm(x, "mlp_norm", l)
            if cfg.family == "llama":
                gate, up = F.linear(h, self._w("mlp_gate_up", l)).chunk(2, dim=-1)
                a = F.silu(gate) * up
            else:
                a = F.gelu(F.linear(h, self._w("mlp_up", l), self._w("mlp_up_bias", l)), approximate="tanh")
            x = x + F.linear(a, self._w("mlp_down", l), self._bias("mlp_down", l))
        x = self._norm(x, "final_norm")
        head = p["lm_head"] if cfg.family == "llama" else p["tok_embedding"]
        logits = F.linear(x, head)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(-1, cfg.vocab_size), targets.reshape(-1), ignore_index=IGNORE_INDEX
            )
        return logits, loss


# ---- optimizer and schedule ----------------------------------------------------------------------------------


@dataclass
class ScheduleConfig:
    kind: str = "cosine"  # "cosine" | "constant" | "wsd"
    max_lr: float = 1e-3
    min_lr_frac: float = 0.1
    warmup_steps: int = 0
    total_steps: int = 1
    decay_frac: float = 0.2


def schedule_lr(s, step):
    """engine/schedule.h, written independently: 0-based step; steps past total keep the last rate."""
    step = min(step, s.total_steps - 1)
    W, S = s.warmup_steps, s.total_steps
    min_lr = s.min_lr_frac * s.max_lr
    if step < W:
        return s.max_lr * (step + 1) / W
    if s.kind == "constant":
        return s.max_lr
    if s.kind == "cosine":
        prog = (step - W) / max(1, S - W)
        return min_lr + (s.max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * prog))
    if s.kind == "wsd":
        D = round(s.decay_frac * S)
        if D <= 0 or step < S - D:
            return s.max_lr
        return s.max_lr - (s.max_lr - min_lr) * (step - (S - D) + 1) / D
    raise ValueError(f"unknown schedule kind {s.kind!r}")


def make_adamw(model, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, lr=1e-3):
    """torch.optim.AdamW with weight decay on matrices and embeddings only (spec.decay)."""
    decay = [x for s in model.specs if s.decay for x in model.leaves(s)]
    no_decay = [x for s in model.specs if not s.decay for x in model.leaves(s)]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # foreach=False: the plain per-tensor loop (the same formula; one code path on every build of torch).
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=False)


def train_step(model, opt, inputs, targets, lr, max_norm):
    """zero_grad, forward, backward, clip_grad_norm_, AdamW step at `lr`. Returns (loss, pre-clip norm)."""
    opt.zero_grad(set_to_none=False)
    _, loss = model.forward(inputs, targets)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm) if max_norm > 0 else None
    for g in opt.param_groups:
        g["lr"] = lr
    opt.step()
    return loss.detach(), norm
