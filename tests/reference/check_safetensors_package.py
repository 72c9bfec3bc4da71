"""tests/reference/check_safetensors_package.py: a strata checkpoint read by the Python ecosystem.

Loads CKPT/model.safetensors and CKPT/optimizer.safetensors with the `safetensors` package (safe_open and
safetensors.torch.load_file), checks every tensor against the checkpoint's model config (names, layer-indexed
shapes, F32) and bit for bit against this repository's own json+numpy reader (safetensors_np.py), then runs the
PyTorch reference model (torch_model.py) on the first B x T sample windows of a token shard, in natural order,
and prints the mean loss, to compare with `strata eval --shards SHARD --batch-size B --seq-len T --batches 1`.

Needs a python with torch, numpy and the safetensors package (the GPU machine's image has them; Debian has no
safetensors package). Usage: python3 check_safetensors_package.py CKPT SHARD B T [EXPECTED_LOSS]
Exit status 0 when every check passes (and the loss matches EXPECTED_LOSS to 1e-3 when given).
"""

import json
import os
import sys

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np  # noqa: E402
import torch_model as tm  # noqa: E402


def read_shard_tokens(path, n):
    """The first n tokens of an llm.c shard (256 int32 header: magic, version, count; uint16 or uint32 ids)."""
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(1024), dtype="<i4")
        dtype = "<u2" if header[0] == 20240520 else "<u4"
        assert header[0] in (20240520, 20240801), f"{path}: not a shard (magic {header[0]})"
        assert n <= header[2], f"{path}: {header[2]} tokens, need {n}"
        return np.frombuffer(f.read(n * np.dtype(dtype).itemsize), dtype=dtype).astype(np.int64)


def main():
    ckpt, shard, B, T = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    expected = float(sys.argv[5]) if len(sys.argv) > 5 else None
    state = json.load(open(os.path.join(ckpt, "state.json")))
    cfg = tm.ModelConfig.from_dict(state["model"])
    model_path = os.path.join(ckpt, "model.safetensors")

    with safe_open(model_path, framework="pt") as f:
        meta = f.metadata()
        names = set(f.keys())
    assert meta.get("format") == "strata", meta
    assert json.loads(meta["config"]) == state["model"], "metadata config differs from state.json"
    weights = load_file(model_path)
    ours, _ = safetensors_np.read(model_path)
    specs = tm.tensor_table(cfg)
    assert names == {s.name for s in specs}, sorted(names ^ {s.name for s in specs})
    for s in specs:
        t = weights[s.name]
        assert t.dtype == torch.float32, (s.name, t.dtype)
        assert tuple(t.shape) == tm.stored_shape(cfg, s), (s.name, tuple(t.shape))
        assert np.array_equal(t.numpy().view(np.uint32), ours[s.name].view(np.uint32)), s.name
    opt_path = os.path.join(ckpt, "optimizer.safetensors")
    moments = load_file(opt_path) if os.path.exists(opt_path) else {}
    for s in specs if moments else []:
        for prefix in ("m.", "v."):
            assert tuple(moments[prefix + s.name].shape) == tm.stored_shape(cfg, s), prefix + s.name
    print(f"safetensors {__import__('safetensors').__version__}: {len(weights)} weight tensors and "
          f"{len(moments)} moments of {cfg.family} L={cfg.n_layer} C={cfg.d_model} V={cfg.vocab_size} read; "
          f"names, shapes, dtypes match the config and the bytes match the numpy reader")

    tokens = read_shard_tokens(shard, B * T + 1)
    windows = np.stack([tokens[i * T : i * T + T + 1] for i in range(B)])  # sample i = window at offset i*T
    inputs = torch.from_numpy(windows[:, :T].copy())
    targets = torch.from_numpy(windows[:, 1:].copy())
    model = tm.TorchModel(cfg, weights, dtype=torch.float64, requires_grad=False)
    with torch.no_grad():
        _, loss = model.forward(inputs, targets)
    print(f"torch {torch.__version__} (float64) loss on the first {B} x {T} windows of {os.path.basename(shard)}: "
          f"{loss.item():.4f}" + (f" (strata eval: {expected:.4f})" if expected is not None else ""))
    if expected is not None and abs(loss.item() - expected) > 1e-3:
        print("MISMATCH")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
