#!/usr/bin/env bash
# Runs a command with `--device cuda` served by the CUDA emulator
# (docs/GPU_CHECK.md, "Without a GPU: the CUDA emulator"):
#   tools/cuda_emu/run.sh target/release/slmlp-gpu-check --out /tmp/emu --budget-s 600
# Builds the emulator into target/cuda_emu first (only what changed). NVRTC
# must be findable as for a GPU (scripts/install-nvrtc.sh installs it into
# .cache/nvrtc, where slmlp looks).
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
python3 "$REPO/tools/cuda_emu/build.py" --out "$REPO/target/cuda_emu" >&2
export LD_LIBRARY_PATH="$REPO/target/cuda_emu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$@"
