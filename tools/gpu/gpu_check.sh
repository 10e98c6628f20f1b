#!/usr/bin/env bash
# The one command for a GPU check (docs/DESIGN.md §8; how to run it: docs/GPU_CHECK.md).
#
#   tools/gpu/gpu_check.sh OUT_DIR [--budget-s 420] [--cpu-smoke] [--bundle DIR]
#                          [--keep-tree] [--skip-torch] [--torch-args "ARGS"]
#
# Stages, each under `timeout` with its own share of the budget, so one hang can't
# stall the whole run:
#   0. nvidia-smi (printed, and queried into the report)
#   1. CUDA libraries: libcublas, libcublasLt, libcudnn, libnvrtc, libnvrtc-builtins
#      (python site-packages nvidia/*/lib first, then a CUDA toolkit) -> LD_LIBRARY_PATH
#      for the slmlp stages (torch finds its own and runs with the environment untouched)
#   2. slmlp stages from the bundle (default gpu-bundle/, prebuilt x86-64 release
#      binaries): op parity `slmlp-gpu-check` first, then every other executable
#      `slmlp-gpu-*`, or exactly the stages listed in gpu-bundle/stages.txt
#      ("name binary budget_s [args...]" per line). Each binary is run as
#        BIN --out DETAIL/<name> --budget-s N [args...]
#      (DETAIL: a scratch folder that ends up in OUT_DIR/gpu_check_detail.tar.gz)
#      and is skipped with a logged reason when absent. Bundle binaries exit 0 pass,
#      1 checks failed, 3 no usable GPU (a skip under --cpu-smoke without a GPU, else
#      a failure), anything else crashed.
#   3. PyTorch baselines: tools/gpu/torch_baselines.py with the rest of the budget.
#   4. Report: OUT_DIR/gpu_check.md + gpu_check.json (tools/gpu/gpu_report.py); the
#      summary table is printed last.
#
# OUT_DIR ends up with 6 files:
#   gpu_check.md  gpu_check.json  gpu_check.log  torch_baselines.md  torch_baselines.json
#   gpu_check_detail.tar.gz   (stage logs and outputs, nvidia-smi, library paths, per-section JSON)
# --keep-tree also copies the unpacked tree to OUT_DIR/detail/.
#
# --cpu-smoke: for testing this script without a GPU: the slmlp stages run even with
# no GPU, and the PyTorch stage runs with --device cpu --quick.
#
# Exit status: 0 when every stage that ran passed (absent binaries are not failures),
# 1 when a stage failed or timed out or no GPU answered (without --cpu-smoke),
# 2 on bad arguments. PyTorch sections that time out, crash or error make its stage fail.
set -uo pipefail

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
    exit 2
}

[ $# -ge 1 ] || usage
case $1 in -h|--help) usage ;; -*) echo "gpu_check.sh: first argument must be OUT_DIR, got '$1'" >&2; exit 2 ;; esac
OUT=$1
shift
BUDGET=420
CPU_SMOKE=0
BUNDLE=""
KEEP_TREE=0
SKIP_TORCH=0
TORCH_ARGS=""
while [ $# -gt 0 ]; do
    case $1 in
        --budget-s) BUDGET=${2:-}; shift 2 || usage ;;
        --cpu-smoke) CPU_SMOKE=1; shift ;;
        --bundle) BUNDLE=${2:-}; shift 2 || usage ;;
        --keep-tree) KEEP_TREE=1; shift ;;
        --skip-torch) SKIP_TORCH=1; shift ;;
        --torch-args) TORCH_ARGS=${2:-}; shift 2 || usage ;;
        -h|--help) usage ;;
        *) echo "gpu_check.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
case $BUDGET in ''|*[!0-9]*) echo "gpu_check.sh: --budget-s needs whole seconds, got '$BUDGET'" >&2; exit 2 ;; esac
[ "$BUDGET" -ge 60 ] || { echo "gpu_check.sh: --budget-s must be at least 60" >&2; exit 2; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BUNDLE=${BUNDLE:-$REPO/gpu-bundle}
PY=${PYTHON:-python3}
T0=$SECONDS
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
CMDLINE="tools/gpu/gpu_check.sh $OUT --budget-s $BUDGET$([ $CPU_SMOKE = 1 ] && echo ' --cpu-smoke')"

# Seconds kept back at the end for the report and the tarball, and the least the
# PyTorch stage keeps however many slmlp stages there are.
RESERVE_S=15
TORCH_FLOOR_S=$((BUDGET * 2 / 5))

mkdir -p "$OUT" || { echo "gpu_check.sh: cannot create $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
# Stage outputs go to a scratch folder and reach OUT_DIR as one tarball at the end,
# so OUT_DIR holds only a handful of files, easy to copy back.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || { echo "gpu_check.sh: mktemp failed" >&2; exit 2; }
trap 'rm -rf "$WORK"' EXIT
DETAIL=$WORK/detail
rm -rf "$OUT/detail" "$OUT/gpu_check_detail.tar.gz"
mkdir -p "$DETAIL"
LOG=$OUT/gpu_check.log
: > "$LOG"
STAGES=$DETAIL/stages.tsv
printf 'stage\tstatus\trc\tbudget_s\telapsed_s\tnote\n' > "$STAGES"
ANY_FAIL=0

log() { printf '%s\n' "$*" | tee -a "$LOG"; }
left() { echo $((BUDGET - (SECONDS - T0))); }
record() {  # name status rc budget elapsed note
    local note=${6//$'\t'/ }
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "${note//$'\n'/ }" >> "$STAGES"
}

# run_stage NAME BUDGET_S CMD...: run under timeout (TERM at the budget, KILL 10 s
# later), output to the console, the main log and the stage's own log.
run_stage() {
    local name=$1 budget=$2 t=$SECONDS rc status note=""
    shift 2
    log ""
    log "=== stage $name (budget ${budget} s, $(left) s left in the budget): $*"
    timeout -k 10 "$budget" "$@" < /dev/null 2>&1 | tee -a "$LOG" "$DETAIL/$name.log"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) status=ok ;;
        124|137) status=timeout; note="stopped at its ${budget} s budget"; ANY_FAIL=1 ;;
        126|127) status=error; note="could not be executed (rc $rc)"; ANY_FAIL=1 ;;
        # bundle binaries exit 3 when they find no usable GPU: expected in a
        # --cpu-smoke run without one, a failure whenever nvidia-smi answered
        3) if [ "${NO_GPU_RC_OK:-0}" = 1 ]; then
               status=skipped; note="no usable GPU (exit 3): $(tail -n 1 "$DETAIL/$name.log" | cut -c1-120)"
           else
               status=fail; note="exit code 3 (no usable GPU); last line: $(tail -n 1 "$DETAIL/$name.log" | cut -c1-160)"; ANY_FAIL=1
           fi ;;
        *) status=fail; note="exit code $rc; last line: $(tail -n 1 "$DETAIL/$name.log" | cut -c1-160)"; ANY_FAIL=1 ;;
    esac
    record "$name" "$status" "$rc" "$budget" "$((SECONDS - t))" "$note"
    log "=== stage $name: $status (rc $rc) in $((SECONDS - t)) s${note:+: $note}"
}

skip_stage() {  # name reason
    record "$1" skipped - 0 0 "$2"
    log ""
    log "=== stage $1: skipped: $2"
}

log "gpu_check: $CMDLINE"
log "gpu_check: started $STARTED on $(hostname), repo $REPO, budget ${BUDGET} s"

# ---- 0. the card ------------------------------------------------------------------
HAVE_GPU=0
if command -v nvidia-smi > /dev/null 2>&1; then
    log ""
    log "=== nvidia-smi"
    t=$SECONDS
    timeout -k 5 20 nvidia-smi < /dev/null 2>&1 | tee -a "$LOG" "$DETAIL/nvidia-smi.txt"
    smi_rc=${PIPESTATUS[0]}
    if [ "$smi_rc" = 0 ]; then
        HAVE_GPU=1
        timeout -k 5 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.sm,clocks.mem,power.limit,temperature.gpu,pstate \
            --format=csv,noheader < /dev/null > "$DETAIL/gpu.csv" 2>/dev/null
        record nvidia-smi ok 0 20 "$((SECONDS - t))" "$(head -n 1 "$DETAIL/gpu.csv" 2>/dev/null)"
    else
        record nvidia-smi fail "$smi_rc" 20 "$((SECONDS - t))" "nvidia-smi failed or hung (rc $smi_rc): the driver is not answering"
        log "nvidia-smi failed or hung (rc $smi_rc): the driver is not answering"
    fi
else
    record nvidia-smi absent - 0 0 "nvidia-smi not found: no NVIDIA driver on this machine"
    log "nvidia-smi: not found: no NVIDIA driver on this machine"
fi
# No GPU is a failed check, unless this is a test of the script itself.
[ "$HAVE_GPU" = 1 ] || [ "$CPU_SMOKE" = 1 ] || ANY_FAIL=1

# ---- 1. CUDA libraries ------------------------------------------------------------
log ""
log "=== CUDA libraries"
LIB_DIRS=()
add_dir() { local d; for d in "${LIB_DIRS[@]+"${LIB_DIRS[@]}"}"; do [ "$d" = "$1" ] && return; done; LIB_DIRS+=("$1"); }
SITES=$(timeout -k 5 20 "$PY" -c 'import site, sys
dirs = list(getattr(site, "getsitepackages", lambda: [])()) + [site.getusersitepackages()] + sys.path
print("\n".join(d for d in dict.fromkeys(dirs) if d))' < /dev/null 2>/dev/null)
while IFS= read -r sp; do
    [ -n "$sp" ] && [ -d "$sp/nvidia" ] || continue
    for d in "$sp"/nvidia/*/lib "$sp"/nvidia/*/lib64; do
        [ -d "$d" ] && add_dir "$d"
    done
done <<< "$SITES"
for t in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda /usr/local/cuda-13*; do
    [ -n "$t" ] && [ -d "$t" ] || continue
    for sub in lib64 targets/x86_64-linux/lib lib; do
        [ -d "$t/$sub" ] && add_dir "$t/$sub"
    done
done
printf 'library\tpath\n' > "$DETAIL/cuda_libs.tsv"
SLMLP_DIRS=()
add_slmlp_dir() { local d; for d in "${SLMLP_DIRS[@]+"${SLMLP_DIRS[@]}"}"; do [ "$d" = "$1" ] && return; done; SLMLP_DIRS+=("$1"); }
MISSING=""
for lib in libcublas.so libcublasLt.so libcudnn.so libnvrtc.so libnvrtc-builtins.so; do
    found=""
    for d in "${LIB_DIRS[@]+"${LIB_DIRS[@]}"}"; do
        for f in "$d/$lib" "$d/$lib".*; do
            if [ -e "$f" ]; then found=$f; break 2; fi
        done
    done
    if [ -n "$found" ]; then
        add_slmlp_dir "$(dirname "$found")"
        real=$(readlink -f "$found" 2>/dev/null || echo "$found")
        log "  $lib: $found${real:+ -> $(basename "$real")}"
        printf '%s\t%s\n' "$lib" "$real" >> "$DETAIL/cuda_libs.tsv"
    else
        log "  $lib: MISSING"
        printf '%s\tMISSING\n' "$lib" >> "$DETAIL/cuda_libs.tsv"
        MISSING="$MISSING $lib"
    fi
done
# The driver library comes with the driver, not with a toolkit or a wheel.
DRIVER_LIB=$( { ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 /{print $NF; exit}'; } )
if [ -z "$DRIVER_LIB" ]; then
    for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64; do
        if [ -e "$d/libcuda.so.1" ]; then DRIVER_LIB=$d/libcuda.so.1; add_slmlp_dir "$d"; break; fi
    done
fi
log "  libcuda.so.1 (driver): ${DRIVER_LIB:-MISSING}"
printf 'libcuda.so.1\t%s\n' "${DRIVER_LIB:-MISSING}" >> "$DETAIL/cuda_libs.tsv"
SLMLP_LD=$(IFS=:; echo "${SLMLP_DIRS[*]+"${SLMLP_DIRS[*]}"}")
SLMLP_LD=${SLMLP_LD}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
log "  LD_LIBRARY_PATH for slmlp stages: ${SLMLP_LD:-(empty)}"
record cuda-libs "$([ -z "$MISSING" ] && echo ok || echo incomplete)" - 20 0 \
    "$([ -z "$MISSING" ] && echo "all found" || echo "missing:$MISSING")"

# ---- 2. slmlp stages --------------------------------------------------------------
STAGE_LINES=()
if [ ! -d "$BUNDLE" ]; then
    skip_stage parity "no bundle folder $BUNDLE (build it: docs/GPU_CHECK.md); op parity and slmlp benches not run"
elif [ "$HAVE_GPU" = 0 ] && [ "$CPU_SMOKE" = 0 ]; then
    skip_stage parity "no GPU (nvidia-smi absent or failing); slmlp stages not run"
else
    if [ -f "$BUNDLE/stages.txt" ]; then
        log ""
        log "=== slmlp stages from $BUNDLE/stages.txt"
        while IFS= read -r line || [ -n "$line" ]; do
            line=${line%%#*}
            [ -n "${line//[[:space:]]/}" ] && STAGE_LINES+=("$line")
        done < "$BUNDLE/stages.txt"
    else
        STAGE_LINES+=("parity slmlp-gpu-check 60")
        others=0
        for f in "$BUNDLE"/slmlp-gpu-*; do
            [ -f "$f" ] && [ -x "$f" ] || continue
            b=$(basename "$f")
            [ "$b" = slmlp-gpu-check ] && continue
            STAGE_LINES+=("${b#slmlp-gpu-} $b 45")
            others=$((others + 1))
        done
        [ "$others" = 0 ] && log "slmlp: no bench binaries ($BUNDLE/slmlp-gpu-*) besides the parity check"
    fi
fi
for line in "${STAGE_LINES[@]+"${STAGE_LINES[@]}"}"; do
    read -r name bin want extra <<< "$line"
    extra=${extra:-}
    case ${want:-x} in ''|*[!0-9]*) skip_stage "${name:-?}" "bad stages.txt line '$line' (want: name binary budget_s [args])"; continue ;; esac
    case $bin in /*) path=$bin ;; *) path=$BUNDLE/$bin ;; esac
    if [ ! -f "$path" ]; then
        skip_stage "$name" "$path not found"
        continue
    fi
    if [ ! -x "$path" ]; then
        skip_stage "$name" "$path is not executable"
        continue
    fi
    cap=$(( $(left) - RESERVE_S - (SKIP_TORCH == 1 ? 0 : TORCH_FLOOR_S) ))
    b=$(( want < cap ? want : cap ))
    if [ "$b" -lt 10 ]; then
        skip_stage "$name" "no budget left (${cap} s after keeping ${TORCH_FLOOR_S} s for PyTorch)"
        continue
    fi
    mkdir -p "$DETAIL/$name"
    # $extra is split into words on purpose: stages.txt holds plain arguments.
    # shellcheck disable=SC2086
    NO_GPU_RC_OK=$([ "$HAVE_GPU" = 0 ] && [ "$CPU_SMOKE" = 1 ] && echo 1 || echo 0) \
        run_stage "$name" "$b" env LD_LIBRARY_PATH="$SLMLP_LD" "$path" --out "$DETAIL/$name" --budget-s "$b" $extra
done

# ---- 3. PyTorch baselines ---------------------------------------------------------
TB=$(( $(left) - RESERVE_S ))
if [ "$SKIP_TORCH" = 1 ]; then
    skip_stage torch_baselines "--skip-torch given"
elif [ "$HAVE_GPU" = 0 ] && [ "$CPU_SMOKE" = 0 ]; then
    skip_stage torch_baselines "no GPU (nvidia-smi absent or failing); --cpu-smoke runs its CPU --quick mode"
elif [ "$TB" -lt 30 ]; then
    skip_stage torch_baselines "no budget left (${TB} s)"
else
    TARGS=(--out "$OUT" --work-dir "$DETAIL/torch_sections" --budget-s "$((TB - 12))")
    [ "$CPU_SMOKE" = 1 ] && TARGS+=(--device cpu --quick)
    # shellcheck disable=SC2086
    run_stage torch_baselines "$TB" env PYTHONUNBUFFERED=1 "$PY" "$HERE/torch_baselines.py" "${TARGS[@]}" $TORCH_ARGS
fi

# ---- 4. report --------------------------------------------------------------------
log ""
log "=== gpu_check: stages done in $((SECONDS - T0)) s; writing the report"
tar -czf "$OUT/gpu_check_detail.tar.gz" -C "$WORK" detail 2>> "$LOG" \
    || log "gpu_check: could not write gpu_check_detail.tar.gz"
[ "$KEEP_TREE" = 1 ] && cp -r "$DETAIL" "$OUT/detail"
# The summary is the last thing printed; nothing is logged after it.
if ! timeout -k 5 30 "$PY" "$HERE/gpu_report.py" --out "$OUT" --detail "$DETAIL" --budget-s "$BUDGET" \
        --started "$STARTED" --wall-s "$((SECONDS - T0))" --command "$CMDLINE" < /dev/null 2>&1 | tee -a "$LOG"; then
    echo "gpu_check: gpu_report.py failed; the stage table as recorded:" | tee -a "$LOG"
    column -t -s $'\t' "$STAGES" 2>/dev/null | tee -a "$LOG" || tee -a "$LOG" < "$STAGES"
fi
exit "$ANY_FAIL"
