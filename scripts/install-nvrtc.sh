#!/usr/bin/env bash
# Installs the pinned NVRTC toolchain (docs/DESIGN.md §3) into a project-local,
# git-ignored folder, so `cargo test -p kernels` can compile every CUDA kernel
# to an sm_90 CUBIN on a machine with no GPU and no CUDA toolkit.
#
#   scripts/install-nvrtc.sh            # installs into .cache/nvrtc (or $SLMLP_NVRTC_HOME)
#   source .cache/nvrtc/env.sh          # exports SLMLP_NVRTC_LIB_DIR, SLMLP_CUDA_INCLUDE,
#                                       # and prepends the lib dir to LD_LIBRARY_PATH
#
# Idempotent: a stamp file records the pinned versions; a second run with the
# same pins only re-prints the paths. The pins are 13.0: the kernels run on
# any CUDA 13 driver (580 or newer) and the checks' figures were taken with
# 13.0.88; the runtime accepts any NVRTC 13.x (docs/GPU.md).
set -euo pipefail
cd "$(dirname "$0")/.."

PINS=(
    "nvidia-cuda-nvrtc==13.0.88"   # libnvrtc.so.13 + libnvrtc-builtins.so.13.0
    "nvidia-cuda-runtime==13.0.96" # cuda_fp16.h, cuda_bf16.h, cuda_runtime headers
    "nvidia-cuda-crt==13.0.88"     # crt/ headers (mma.h, host_defines.h, ...)
    "nvidia-cuda-cccl==13.0.85"    # cooperative_groups, cub, cuda/std
)

DEST="${SLMLP_NVRTC_HOME:-$PWD/.cache/nvrtc}"
STAMP="$DEST/.pins"
ENV_FILE="$DEST/env.sh"

want_stamp="$(printf '%s\n' "${PINS[@]}")"

find_dirs() {
    # The CUDA 13 wheels put everything under nvidia/cu13/{lib,include}; older
    # layouts used nvidia/<component>/{lib,include}. Search rather than guess.
    LIB_DIR="$(dirname "$(find "$DEST" -name 'libnvrtc.so.13' -print -quit 2>/dev/null || true)")"
    INC_DIR="$(dirname "$(find "$DEST" -name 'cuda_bf16.h' -not -path '*/crt/*' -print -quit 2>/dev/null || true)")"
    [[ -n "$LIB_DIR" && "$LIB_DIR" != "." && -n "$INC_DIR" && "$INC_DIR" != "." ]]
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]] && find_dirs; then
    echo "install-nvrtc: already installed in $DEST"
else
    PY="${PYTHON:-python3}"
    if ! command -v "$PY" >/dev/null 2>&1; then
        echo "install-nvrtc: error: $PY not found; install Python 3 with pip (e.g. apt-get install python3-pip)" >&2
        exit 1
    fi
    if ! "$PY" -m pip --version >/dev/null 2>&1; then
        echo "install-nvrtc: error: '$PY -m pip' does not work; install pip (e.g. apt-get install python3-pip)" >&2
        exit 1
    fi
    echo "install-nvrtc: installing ${PINS[*]} into $DEST"
    mkdir -p "$(dirname "$DEST")"
    TMP="$(mktemp -d "$(dirname "$DEST")/.nvrtc.tmp.XXXXXX")"
    trap 'rm -rf "$TMP"' EXIT
    # --no-deps: exactly the pinned wheels, nothing resolved behind our back.
    "$PY" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --no-deps --only-binary=:all: --target "$TMP" "${PINS[@]}"
    printf '%s\n' "${PINS[@]}" >"$TMP/.pins"
    # Swap in whole: an interrupted install never leaves a half-filled DEST.
    rm -rf "$DEST"
    mv "$TMP" "$DEST"
    trap - EXIT
    if ! find_dirs; then
        echo "install-nvrtc: error: installed the wheels but found no libnvrtc.so.13 / cuda_bf16.h under $DEST" >&2
        exit 1
    fi
fi

if ! ls "$LIB_DIR"/libnvrtc-builtins.so* >/dev/null 2>&1; then
    echo "install-nvrtc: error: $LIB_DIR has no libnvrtc-builtins.so*; NVRTC cannot compile without it" >&2
    exit 1
fi

cat >"$ENV_FILE" <<ENV
# Written by scripts/install-nvrtc.sh; source it before cargo test -p kernels.
export SLMLP_NVRTC_LIB_DIR="$LIB_DIR"
export SLMLP_CUDA_INCLUDE="$INC_DIR"
export LD_LIBRARY_PATH="$LIB_DIR\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
ENV

echo "install-nvrtc: lib dir     $LIB_DIR"
echo "install-nvrtc: include dir $INC_DIR"
echo "install-nvrtc: env file    $ENV_FILE"
