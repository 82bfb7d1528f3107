#!/usr/bin/env bash
# The GPU check, one script, under 8 minutes on one H100-class GPU:
#   1. the CUDA-marked tests (tests/test_cuda.py: bf16 training vs float32, torch.compile, float16 sampling,
#      extractors on CUDA);
#   2. the throughput harnesses at SD-1.5 shape, 512 px (training, sampling, evaluation), written to
#      <out>/<device>.md (e.g. nvidia-h100-80gb-hbm3.md), with the log beside it (gpu_check.log);
#   3. torch.compile against the defaults (training), appended to the same report when it finishes in time.
#
# Usage (from anywhere; it runs in the repository root):
#   bash benchmarks/gpu_check.sh [OUT_DIR]        OUT_DIR: default $TAXABENCH_PERF_OUT, else $OUT, else reports/perf
#   bash benchmarks/gpu_check.sh --dry-run [DIR]  on a CPU: the same steps at SD-1.5 shape, 64 px, one call per path
#   bash benchmarks/gpu_check.sh --fetch-wheels DIR
#       on a machine that reaches PyPI: download the pure-Python wheels taxabench needs beyond a PyTorch image
#       (diffusers, open_clip_torch, lpips, clean-fid and their small dependencies) into DIR. On a GPU machine
#       without network, set TAXABENCH_WHEELS=DIR and the check installs them from there.
#
# Environment: PYTHON (default python3: the interpreter that holds a CUDA PyTorch), TAXABENCH_WHEELS (a folder of
# wheels to install missing packages from, offline). Exit status: 0 when every step passed, 1 otherwise.
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
    # pure-Python wheels (py3-none-any): the same files serve any Python 3 on any platform
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

# --- 2. CUDA tests ---------------------------------------------------------------------------------------------
echo; echo "== pytest -m cuda"
if [[ $DRY == 1 ]]; then
    "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py; status=$?
    [[ $status == 0 || $status == 5 ]] || FAILED="$FAILED cuda-tests"  # 5: every test skipped (no GPU)
else
    timeout 150 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py || FAILED="$FAILED cuda-tests"
fi

# --- 3. Harnesses at SD-1.5 shape ----------------------------------------------------------------------------
if [[ $DRY == 1 ]]; then
    DEVICE=cpu; SLUG=dry-run-cpu; EXTRA=(--allow-cpu --dry-run --resolution 64); LIMIT=1200
else
    DEVICE=cuda; SLUG="$("$PY" -c 'from benchmarks.harness import device_slug; print(device_slug("cuda"))')"
    EXTRA=(--repeats 3); LIMIT=250
fi
REPORT="$OUT_DIR/$SLUG.md"
echo; echo "== harnesses, SD-1.5 shape -> $REPORT"
timeout "$LIMIT" "$PY" -m benchmarks --size sd15 --device "$DEVICE" --out "$REPORT" -- "${EXTRA[@]}" \
    || FAILED="$FAILED harnesses"

if [[ $DRY == 0 && -f "$REPORT" ]]; then
    echo; echo "== torch.compile against the defaults (training)"
    timeout 90 "$PY" -m benchmarks.train_speed --size sd15 --device cuda --paths defaults,compile --repeats 3 \
        --out "$REPORT" || echo "torch.compile measurement did not finish in 90 s (compiling); not in the report"
fi

rm -rf "$TAXABENCH_HOME"
echo
if [[ -n "$FAILED" ]]; then echo "gpu_check: FAILED:$FAILED (log: $LOG)"; exit 1; fi
echo "gpu_check: passed; report $REPORT, log $LOG"
