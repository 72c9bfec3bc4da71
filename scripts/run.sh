#!/usr/bin/env bash
# Sets up, builds and runs Strata's main job on the embedded default data (no network needed):
# today, `strata prepare` of the State of the Union corpus (training) and Moby-Dick (held out) into out/default/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)"
./build/release/strata prepare --out out/default --overwrite "$@"
