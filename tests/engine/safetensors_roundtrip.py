#!/usr/bin/python3
"""Independent safetensors reader/writer (json + numpy only) for Strata's interoperability test.

    safetensors_roundtrip.py write PATH   writes the reference tensors (below) to PATH
    safetensors_roundtrip.py check PATH   reads PATH, checks it holds exactly the reference tensors and
                                          metadata, exits 0 (or prints one line and exits 1)

The reference set is defined identically in tests/engine/safetensors_test.cpp: element i of every tensor is
(3 i - 7) scaled per dtype, so both sides build it without sharing files. The reader applies the rules of the
official implementation (little-endian u64 header length, JSON object starting with '{', offsets that tile the
data section exactly, sizes = numel x dtype size).
"""
import json
import struct
import sys

import numpy as np

DTYPES = {  # safetensors name -> numpy dtype (BF16: raw 16-bit patterns)
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
METADATA = {"producer": "strata-test", "note": "h\u00e9llo \u2713"}


def reference():
    """[(name, dtype, shape, numpy array)], in file order."""
    def base(n):
        return np.arange(n, dtype=np.int64) * 3 - 7

    def bf16(values):
        return (np.asarray(values, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)

    return [
        ("f32_matrix", "F32", [2, 3], (base(6) * 0.25).astype(np.float32)),
        ("f64_vec", "F64", [5], base(5) * 0.125),
        ("f16_vec", "F16", [4], (base(4) * 0.5).astype(np.float16)),
        ("bf16_mat", "BF16", [2, 2], bf16(base(4) * 0.5)),
        ("i64_vec", "I64", [3], base(3) * (1 << 40)),
        ("i32_cube", "I32", [2, 2, 2], base(8).astype(np.int32)),
        ("u8_vec", "U8", [7], ((np.arange(7) * 37) % 256).astype(np.uint8)),
        ("scalar", "F32", [], np.array([3.5], dtype=np.float32)),
        ("empty", "F32", [0, 4], np.zeros(0, dtype=np.float32)),
    ]


def write(path):
    header, blobs, offset = {"__metadata__": METADATA}, [], 0
    for name, dtype, shape, arr in reference():
        blob = np.asarray(arr).astype(np.dtype(DTYPES[dtype]).newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def read(path):
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError("shorter than 8 bytes")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise ValueError(f"header length {n} beyond the file")
    if raw[8:9] != b"{":
        raise ValueError("header does not start with '{'")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    metadata = header.pop("__metadata__", {})
    tensors, spans = {}, []
    for name, info in header.items():
        dtype = np.dtype(DTYPES[info["dtype"]]).newbyteorder("<")
        shape = info["shape"]
        begin, end = info["data_offsets"]
        numel = int(np.prod(shape, dtype=np.int64))
        if end - begin != numel * dtype.itemsize:
            raise ValueError(f"{name}: offsets [{begin}, {end}) do not match shape {shape} of {info['dtype']}")
        tensors[name] = (info["dtype"], shape, np.frombuffer(data, dtype=dtype, count=numel, offset=begin))
        spans.append((begin, end, name))
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            raise ValueError(f"{name}: starts at {begin}, previous tensor ended at {pos}")
        pos = end
    if pos != len(data):
        raise ValueError(f"data section has {len(data)} bytes, tensors end at {pos}")
    return tensors, metadata, n


def check(path):
    tensors, metadata, n = read(path)
    if n % 8:
        raise ValueError(f"header length {n} is not a multiple of 8")
    if metadata != METADATA:
        raise ValueError(f"metadata {metadata!r} != {METADATA!r}")
    ref = reference()
    if sorted(tensors) != sorted(r[0] for r in ref):
        raise ValueError(f"tensor names {sorted(tensors)}")
    for name, dtype, shape, arr in ref:
        got_dtype, got_shape, got = tensors[name]
        if got_dtype != dtype or got_shape != shape:
            raise ValueError(f"{name}: {got_dtype} {got_shape}, expected {dtype} {shape}")
        if got.tobytes() != np.asarray(arr, dtype=DTYPES[dtype]).tobytes():
            raise ValueError(f"{name}: values {got} != {arr}")


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("write", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        (write if sys.argv[1] == "write" else check)(sys.argv[2])
    except Exception as e:  # noqa: BLE001 - one line for the C++ test's failure message
        print(f"{sys.argv[2]}: {type(e).__name__}: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
