#!/usr/bin/env bash
# The main job (README: "Two commands"): trains a small CIFAR-stem ResNet on
# generated images on the CPU and prints its loss falling. Extra arguments go
# to the binary; try --help.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found; install a Rust toolchain >= 1.89 (rustup) first" >&2
    exit 1
fi
exec cargo run --release --locked -p models --bin slmlp-demo -- "$@"
