#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention at the shapes of bench/kernel_bench.cu's attention rows, on the GPU
machine (which has PyTorch): causal, bf16, forward and forward+backward, for the FlashAttention-2 backend and
the cuDNN backend. Prints JSON {"torch": version, "rows": [{backend, B, T, NH, HS, fwd_ms, fwdbwd_ms}]}.

Timing: CUDA events, warm-up, the median of --reps runs, fresh random inputs (never zeros). The backward's
time is measured as forward+backward minus forward, as the kernel bench reports it.
"""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F


def median_ms(fn, reps):
    for _ in range(5):
        fn()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
    except ImportError:  # older torch: flash only, through the legacy context manager
        sdpa_kernel, backends = None, {"flash": None}
    rows = []
    for T in (1024, 2048):
        for HS in (64, 128):
            B, NH = args.batch, 2048 // HS
            q, k, v = (torch.randn(B, NH, T, HS, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                       for _ in range(3))
            dout = torch.randn(B, NH, T, HS, device="cuda", dtype=torch.bfloat16)
            for name, backend in backends.items():
                def fwd():
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True)

                def fwdbwd():
                    out = fwd()
                    torch.autograd.grad(out, (q, k, v), dout)
                try:
                    if sdpa_kernel is not None:
                        with sdpa_kernel(backend):
                            f_ms, fb_ms = median_ms(fwd, args.reps), median_ms(fwdbwd, args.reps)
                    else:
                        with torch.backends.cuda.sdp_kernel(enable_math=False, enable_mem_efficient=False):
                            f_ms, fb_ms = median_ms(fwd, args.reps), median_ms(fwdbwd, args.reps)
                except RuntimeError as e:  # backend not available for this shape / build
                    rows.append({"backend": name, "B": B, "T": T, "NH": NH, "HS": HS, "error": str(e)[:200]})
                    continue
                rows.append({"backend": name, "B": B, "T": T, "NH": NH, "HS": HS, "fwd_ms": f_ms,
                             "fwdbwd_ms": fb_ms})
    print(json.dumps({"torch": torch.__version__, "device": torch.cuda.get_device_name(0), "rows": rows}))


if __name__ == "__main__":
    main()
