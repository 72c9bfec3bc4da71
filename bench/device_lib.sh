# bench/device_lib.sh: what the device scripts (device_kernels_check.sh, device_gpu_train.sh,
# device_op_times.sh) share; sourced, from the repository root, after `set -uo pipefail`.
#   device_unpack NAME   unpacks .devcarry/kernels.tar.xz (bench/pack_device_kernels.sh) into a fresh $w and
#                        finds the image's cuBLASLt, NCCL and cuDNN (not carried: 541 MB, 218 MB and ~1 GB; from
#                        their nvidia-* Python packages or a system install); NAME prefixes the error
#   run CMD...           CMD with the carried libraries first on the library path (only the carried
#                        executables: PyTorch keeps the image's own)
#   device_prepare DIR LOG   the embedded default corpus under DIR/data, with an 8192-token BPE trained on it
#                        (DIR/tok.tiktoken); output to LOG, whose tail is printed on failure (returns non-zero)

device_unpack() {
  w=$(mktemp -d)
  tar -C "$w" -xJf .devcarry/kernels.tar.xz || { echo "$1: .devcarry/kernels.tar.xz missing"; exit 1; }
  local cublas nccl cudnn
  cublas=$(dirname "$(timeout 60 find /usr /opt -name 'libcublasLt.so.13' 2>/dev/null | head -1)")
  nccl=$(dirname "$(timeout 60 find /usr /opt -name 'libnccl.so.2' 2>/dev/null | head -1)")
  # cuDNN for --attention cudnn (opened at run time; PyTorch's nvidia-cudnn package or a system install)
  cudnn=$(dirname "$(timeout 60 find /usr /opt -name 'libcudnn.so.9' 2>/dev/null | head -1)")
  device_libs="$w/lib:$cublas:$nccl:$cudnn"
}

run() { LD_LIBRARY_PATH="$device_libs:${LD_LIBRARY_PATH:-}" "$@"; }

device_prepare() {
  run "$w/strata" tokenizer train --no-progress --vocab-size 8192 --input data/default/sotu.jsonl.xz \
    --output "$1/tok.tiktoken" >"$2" 2>&1 &&
    run "$w/strata" prepare --no-progress --tokenizer "$1/tok.tiktoken" --out "$1/data" >>"$2" 2>&1 ||
    { tail -n 5 "$2"; return 1; }
}
