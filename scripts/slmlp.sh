#!/usr/bin/env bash
# Runs the `slmlp` binary (release build) after fetching the built-in
# datasets (Fashion-MNIST, MNIST digits) if they are missing. The README's
# main job is `./scripts/slmlp.sh experiment --quick`; try `--help`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found; install a Rust toolchain >= 1.89 (rustup) first" >&2
    exit 1
fi
./scripts/fetch-data.sh >&2
exec cargo run --release --locked -q -p models --bin slmlp -- "$@"
