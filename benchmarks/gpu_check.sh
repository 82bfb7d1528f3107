#!/usr/bin/env bash
# The GPU check, one script, one call of at most 10 minutes on a fresh H100/H200-class GPU machine (no network):
#   1. the CUDA-marked tests (tests/test_cuda.py): bf16 training vs float32, torch.compile, float16 sampling,
#      extractors on CUDA, and every throughput lever (channels-last, each SDPA kernel, compile modes with CUDA
#      graphs) against the defaults' loss curve and images: a failure here makes the check fail;
#   2. the lever tables at SD-1.5 shape, 512 px (`python -m benchmarks --levers`): training (each lever alone, a
#      batch-size sweep, the winners together eager and compiled, images/s, % of bf16 peak, peak memory, compile
#      time amortised) and sampling (larger batches, channels-last, SDPA kernels, the winners eager and with CUDA
#      graphs), written to <out>/<device>.md (e.g. nvidia-h200.md), the log beside it (gpu_check.log);
#   3. one whole evaluation of 1,000 images at 512 px (benchmarks/eval_full.py -> <out>/<device>-eval-512.md) when
#      at least 120 s are left, then the evaluation harness, appended when at least 100 s are left.
# Every step runs within what is left of $TAXABENCH_GPU_BUDGET_S (default 540 s for the whole script); a lever
# path that does not finish in time gets a row saying so, and the tables keep what finished.
#
# Usage (from anywhere; it runs in the repository root):
#   bash benchmarks/gpu_check.sh [OUT_DIR]        OUT_DIR: default $TAXABENCH_PERF_OUT, else $OUT, else reports/perf
#   bash benchmarks/gpu_check.sh --dry-run [DIR]  on a CPU: the same steps on the tiny backbone, one call per path,
#                                                 CUDA-only levers as rows that say so, compile skipped (minutes)
#   bash benchmarks/gpu_check.sh --fetch-wheels DIR
#       on a machine that reaches PyPI: download the pure-Python wheels taxabench needs beyond a PyTorch image
#       (diffusers, open_clip_torch, lpips, clean-fid and their small dependencies) into DIR. On a GPU machine
#       without network, set TAXABENCH_WHEELS=DIR and the check installs them from there.
#
# Environment: PYTHON (default python3: the interpreter that holds a CUDA PyTorch), TAXABENCH_WHEELS (a folder of
# wheels to install missing packages from, offline), TAXABENCH_GPU_BUDGET_S (seconds for the whole script), and for
# a follow-up call that gives one table the whole budget: TAXABENCH_GPU_TESTS=0 (skip the CUDA tests, which an
# earlier call passed) and TAXABENCH_GPU_ONLY=train or sample (default train,sample).
# Exit status: 0 when every step passed, 1 otherwise (a failed CUDA test, a harness that crashed).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
MODULES="torch diffusers transformers accelerate peft safetensors open_clip lpips torchmetrics PIL pandas yaml \
typer rich scipy matplotlib psutil pytest"
WHEELS="diffusers==0.42.1 importlib_metadata open_clip_torch==3.3.0 ftfy wcwidth lpips==0.1.4 clean-fid==0.1.35"

die() { echo "gpu_check: $*" >&2; exit 1; }

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    [[ -n "${2:-}" ]] || die "--fetch-wheels needs a folder"
    # pure-Python wheels (py3-none-any; wcwidth is an abi3 wheel for this machine's platform, x86-64 like the GPU
    # machines): the same files serve any Python 3.10+
    # shellcheck disable=SC2086
    "$PY" -m pip download --no-deps --only-binary=:all: -d "$2" $WHEELS || die "pip download failed"
    echo "wheels in $2; on the GPU machine: TAXABENCH_WHEELS=$2 bash benchmarks/gpu_check.sh"
    exit 0
fi

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
OUT_DIR="${1:-${TAXABENCH_PERF_OUT:-${OUT:-reports/perf}}}"
mkdir -p "$OUT_DIR" || die "cannot create $OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
LOG="$OUT_DIR/gpu_check.log"
exec > >(tee "$LOG") 2>&1
echo "gpu_check: $(date -u '+%Y-%m-%d %H:%M UTC'), repository $ROOT, commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"

# --- 1. Python, CUDA, packages -------------------------------------------------------------------------------
command -v "$PY" >/dev/null || die "no Python interpreter '$PY' (set PYTHON=/path/to/python3)"
"$PY" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' \
    || die "$("$PY" --version 2>&1) is too old: taxabench needs Python 3.10 or newer"
"$PY" -c 'import torch' 2>/dev/null || die "'$PY' has no torch; use the interpreter that holds a CUDA PyTorch (PYTHON=...)"
if [[ $DRY == 0 ]]; then
    "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
        || die "torch $("$PY" -c 'import torch; print(torch.__version__)') sees no CUDA device (for a CPU check: --dry-run)"
fi

missing() {
    local out=""
    for module in $MODULES; do "$PY" -c "import $module" 2>/dev/null || out="$out $module"; done
    echo "$out"
}
SITE="${TMPDIR:-/tmp}/taxabench-site"
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"  # taxabench from the checkout, wheels from $SITE
MISSING="$(missing)"
if [[ -n "$MISSING" ]]; then
    echo "missing Python packages:$MISSING"
    if [[ -n "${TAXABENCH_WHEELS:-}" ]]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$TAXABENCH_WHEELS"/*.whl \
            || die "installing the wheels in $TAXABENCH_WHEELS failed"
    else
        # a machine with network: the project's own dependency list
        "$PY" -m pip install -q --retries 0 --timeout 10 --target "$SITE" -e "$ROOT" 2>/dev/null \
            || "$PY" -m pip install -q --retries 0 --timeout 10 --target "$SITE" "$ROOT" \
            || die "cannot install:$MISSING. Without network, fetch wheels where PyPI is reachable
    (bash benchmarks/gpu_check.sh --fetch-wheels .whl) and rerun with TAXABENCH_WHEELS=.whl"
    fi
    MISSING="$(missing)"
    [[ -z "$MISSING" ]] || die "still missing after the install:$MISSING"
fi
"$PY" -c 'import taxabench, torch, diffusers; print("taxabench", taxabench.__version__, "| torch", torch.__version__,
"| CUDA", torch.version.cuda, "| diffusers", diffusers.__version__,
"| device", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")' || die "taxabench does not import"

export HF_HUB_OFFLINE=1 TAXABENCH_OFFLINE=1 PYTHONUNBUFFERED=1
TAXABENCH_HOME="$(mktemp -d "${TMPDIR:-/tmp}/taxabench-gpu-check-XXXXXX")"
export TAXABENCH_HOME
FAILED=""
BUDGET="${TAXABENCH_GPU_BUDGET_S:-540}"
[[ $DRY == 1 ]] && BUDGET="${TAXABENCH_GPU_BUDGET_S:-1800}"  # a shared 2-core CPU spawns a worker in 10-60 s
left() { echo $((BUDGET - SECONDS)); }  # SECONDS: bash's clock, from the script's start
phase() { echo; echo "== [$SECONDS s of $BUDGET] $*"; }

# --- 2. CUDA tests ---------------------------------------------------------------------------------------------
phase "pytest -m cuda"
if [[ "${TAXABENCH_GPU_TESTS:-1}" == 0 ]]; then
    echo "skipped (TAXABENCH_GPU_TESTS=0)"
elif [[ $DRY == 1 ]]; then
    "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py; status=$?
    [[ $status == 0 || $status == 5 ]] || FAILED="$FAILED cuda-tests"  # 5: every test skipped (no GPU)
else
    # the tests get at most 260 s and leave the lever tables at least 200 s
    TESTS_LIMIT=$(( $(left) - 200 < 260 ? $(left) - 200 : 260 ))
    (( TESTS_LIMIT > 30 )) || TESTS_LIMIT=30
    timeout "$TESTS_LIMIT" "$PY" -m pytest -q -p no:cacheprovider -m cuda -rs tests/test_cuda.py; status=$?
    (( status == 124 )) && FAILED="$FAILED cuda-tests(stopped after ${TESTS_LIMIT} s: not a failed check)"
    (( status != 0 && status != 124 )) && FAILED="$FAILED cuda-tests"
fi

# --- 3. Lever tables -------------------------------------------------------------------------------------------
if [[ $DRY == 1 ]]; then
    DEVICE=cpu; SLUG=dry-run-cpu; SIZE=tiny; EXTRA=(--dry-run)
else
    DEVICE=cuda; SLUG="$("$PY" -c 'from benchmarks.harness import device_slug; print(device_slug("cuda"))')"
    SIZE=sd15; EXTRA=(--repeats 2)
fi
SLUG="$SLUG${TAXABENCH_GPU_ONLY:+-${TAXABENCH_GPU_ONLY//,/-}}"  # a follow-up call's report keeps its own name
REPORT="$OUT_DIR/$SLUG.md"
phase "lever tables, $SIZE size -> $REPORT"
LEVER_BUDGET=$(( $(left) - 25 ))
(( LEVER_BUDGET > 60 )) || LEVER_BUDGET=60
timeout $(( LEVER_BUDGET + 60 )) "$PY" -m benchmarks --size "$SIZE" --device "$DEVICE" --levers \
    --only "${TAXABENCH_GPU_ONLY:-train,sample}" \
    --budget-s "$LEVER_BUDGET" --out "$REPORT" -- "${EXTRA[@]}" || FAILED="$FAILED lever-tables"

# --- 4. Evaluation, with what is left: one whole 512 px evaluation of 1,000 images, then the harness ------------
if [[ $DRY == 0 ]] && (( $(left) >= 120 )); then
    phase "one evaluation of 1,000 images at 512 px -> $OUT_DIR/$SLUG-eval-512.md"
    timeout $(( $(left) - 60 < 300 ? $(left) - 60 : 300 )) "$PY" -m benchmarks.eval_full --device "$DEVICE" --quiet \
        --out "$OUT_DIR/$SLUG-eval-512.md" || echo "the 512 px evaluation did not finish in the time left"
fi
if [[ $DRY == 0 ]] && (( $(left) >= 100 )); then
    phase "evaluation harness"
    timeout $(( $(left) - 10 )) "$PY" -m benchmarks.eval_speed --size "$SIZE" --device "$DEVICE" --repeats 2 \
        --out "$REPORT" || echo "evaluation harness did not finish in the time left; not in the report"
elif [[ $DRY == 0 ]]; then
    echo "evaluation harness skipped: $(left) s left of the budget" | tee -a "$REPORT"
fi

rm -rf "$TAXABENCH_HOME"
phase "done"
if [[ -n "$FAILED" ]]; then echo "gpu_check: FAILED:$FAILED (log: $LOG)"; exit 1; fi
echo "gpu_check: passed; report $REPORT, log $LOG"
