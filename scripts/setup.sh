#!/usr/bin/env bash
# Installs the Debian packages Strata builds and tests with, where missing. Idempotent; safe to rerun.
# Uses sudo when not root. The CUDA toolkit is not installed here: with nvcc on the PATH the CUDA targets build,
# without it Strata builds CPU-only.
set -euo pipefail
pkgs=(
  cmake ninja-build g++ pkg-config git xz-utils   # build
  libcli11-dev nlohmann-json3-dev                 # CLI, JSON
  libpcre2-dev liblzma-dev                        # tokenizer pattern, .xz data
  libopenblas-openmp-dev                          # CPU ops: BLAS sharing the OpenMP (libgomp) threads
  libopenmpi-dev openmpi-bin                      # multi-rank training (mpirun), its tests
  libgtest-dev                                    # tests
  clang libclang-rt-14-dev                        # libFuzzer targets
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "setup: dependencies present"
