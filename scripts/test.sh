#!/usr/bin/env bash
# The project's test command (README: "Run the tests"). Needs only a Rust
# toolchain (>= 1.89); cargo fetches the pinned crates from Cargo.lock.
# No GPU, no CUDA and no Python are needed: PyTorch golden vectors are
# committed fixtures under tests/fixtures/golden.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found; install a Rust toolchain >= 1.89 (rustup) first" >&2
    exit 1
fi
cargo build --workspace --all-targets --locked
cargo test --workspace --locked "$@"
