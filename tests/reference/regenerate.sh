#!/usr/bin/env bash
# tests/reference/regenerate.sh: rebuilds the committed PyTorch reference cases in tests/data/reference/.
#
#   tests/reference/regenerate.sh [BUILD_DIR]     (default build/ref; configured as a CPU Release build if new)
#   env: PYTHON (default /usr/bin/python3: Debian's python3-torch and python3-numpy)
#
# 1. runs the PyTorch reference's self-checks (tests/reference/check_torch_model.py: forward against naive
#    loops, autograd against finite differences, training lowers the loss, schedules at known points);
# 2. builds reference_make_case and writes each case's case.json, init.safetensors, batch.safetensors;
# 3. runs tests/reference/torch_reference.py on each case (golden.safetensors), with the float32-torch error
#    report that the tolerances of tests/engine/reference_test.cpp are set against;
# 4. runs tests/reference/torch_growth_reference.py on each case: grows grow_small.safetensors in torch by
#    G_stack / G_zero (grown_<growth>.safetensors, compared by tests/growth/reference_growth_test.cpp), with
#    the same float32 report;
# 5. runs tests/reference/torch_learned_width_reference.py on each case: grows grow_small.safetensors in
#    width by torch's own learned expansion matrices (G_learn, W' = B_rows W B_cols^T) and differentiates
#    through them (learned_<growth>.safetensors, compared by tests/growth/reference_learned_width_test.cpp),
#    with the same float32 report.
# CI never runs this: it uses the committed files and needs no torch.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${1:-$root/build/ref}
py=${PYTHON:-/usr/bin/python3}
out=$root/tests/data/reference

"$py" -c 'import torch, numpy' 2>/dev/null || {
  echo "regenerate.sh: $py lacks torch or numpy (Debian: apt-get install python3-torch python3-numpy)" >&2
  exit 1
}
echo "== self-checks of the PyTorch reference" >&2
"$py" "$root/tests/reference/check_torch_model.py"

if [[ ! -f "$build/CMakeCache.txt" ]]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSTRATA_CUDA=OFF >&2
fi
cmake --build "$build" --target reference_make_case -j2 >&2

for c in $("$build/tests/reference_make_case" --list); do
  echo "== case $c" >&2
  "$build/tests/reference_make_case" "$c" "$out/$c"
  "$py" "$root/tests/reference/torch_reference.py" "$out/$c" --fp32-report
  "$py" "$root/tests/reference/torch_growth_reference.py" "$out/$c" --fp32-report
  "$py" "$root/tests/reference/torch_learned_width_reference.py" "$out/$c" --fp32-report
  du -ch "$out/$c"/* | tail -n 1 | sed "s|total|$out/$c|"
done
