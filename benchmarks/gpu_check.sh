#!/usr/bin/env bash
# One GPU session (<= 8 minutes on one H200): the GPU tests, the results rows (benchmarks/collect.py),
# the kernel benchmarks and the end-to-end benchmark; writes <out>/<date>-<gpu>.json and .md.
#
#   bash benchmarks/gpu_check.sh [--out DIR]     # on the GPU machine; DIR defaults to benchmarks/results
#   bash benchmarks/gpu_check.sh --dry-run       # on a CPU: every step at tiny shapes, GPU-only steps skipped,
#                                                # results in a temporary directory (printed at the end)
#
# Uses the machine's own stack: $PYTHON (default python3, else python) with PYTHONPATH=., no
# environment created and nothing installed. Every step has its own time limit and a failing or missing
# piece never stops the next step: a kernel not written yet is a skipped row, not a crash. Step logs go
# to <out>/logs/.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

DRY_RUN=0
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --out) OUT="${2:?--out needs a directory}"; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

# $PYTHON, else python3 (the GPU machine's image has its torch behind a plain python3 and may have no
# `python`), else python; exported so that gpu_tests.sh uses the same one
PY="${PYTHON:-$(command -v python3 || echo python)}"
export PYTHON="$PY"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
BUDGET="${GPU_CHECK_BUDGET_S:-470}"   # seconds for all steps; the report step is kept 30 s of it
START=$SECONDS
if [ "$DRY_RUN" = 1 ]; then
    OUT="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/talan-gpu-check.XXXXXX")}"
else
    OUT="${OUT:-benchmarks/results}"
    if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check.sh: no CUDA device visible to $PY; use --dry-run on a CPU" >&2
        exit 2
    fi
fi
LOGS="$OUT/logs"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/talan-gpu-work.XXXXXX")"
mkdir -p "$LOGS"
trap 'rm -rf "$WORK"' EXIT
STEPS="$WORK/steps.tsv"
: > "$STEPS"

# run_step NAME LIMIT_S CMD...: run with a time limit cut to what is left of the budget; record
# "passed", "failed (rc N)", "timed out" or "skipped (...)" in steps.tsv.
run_step() {
    local name="$1" limit="$2"
    shift 2
    local left=$((BUDGET - 30 - (SECONDS - START)))
    [ "$left" -lt "$limit" ] && limit="$left"
    if [ "$limit" -lt 15 ]; then
        printf '%s\tskipped (time budget spent)\n' "$name" >> "$STEPS"
        echo "== $name: skipped, time budget spent"
        return 0
    fi
    echo "== $name (limit ${limit}s): $*"
    local t0=$SECONDS rc
    # SIGINT first so pytest still writes its reports, SIGKILL 15 s later.
    timeout -s INT -k 15 "$limit" "$@" > "$LOGS/$name.log" 2>&1
    rc=$?
    local status="passed"
    case "$rc" in
        0) ;;
        124|137) status="timed out after ${limit}s" ;;
        5) status="no tests collected" ;;
        *) status="failed (rc $rc)" ;;
    esac
    printf '%s\t%s in %ss\n' "$name" "$status" "$((SECONDS - t0))" >> "$STEPS"
    echo "   $status ($((SECONDS - t0))s); log: $LOGS/$name.log"
    tail -n 3 "$LOGS/$name.log" | sed 's/^/   | /'
}

PYTEST=("$PY" -m pytest -q -p no:cacheprovider)

# 1. GPU tests, in parallel shards (benchmarks/gpu_tests.sh; on a CPU every one skips itself, which
# checks the plumbing).
run_step gpu_tests 140 bash benchmarks/gpu_tests.sh "$WORK" "$LOGS"

# 2. The results rows (kernel ratios, TALAN + LoRA vs LoRA, training step, block share).
DRY_FLAG=()
[ "$DRY_RUN" = 1 ] && DRY_FLAG=(--dry-run)
run_step rows 200 "$PY" -m benchmarks.collect measure --out "$WORK/rows.json" "${DRY_FLAG[@]}"

# 3. Kernel benchmarks, then the end-to-end benchmark (pytest-benchmark tables with GB/s, TFLOP/s).
# On a GPU each file has its own time limit; a dry run takes them in one process (start-up costs more
# than the tiny shapes there).
BENCHES=(bench_lora bench_side_path bench_end_to_end)
if [ "$DRY_RUN" = 1 ]; then
    FILES=()
    for bench in "${BENCHES[@]}"; do FILES+=("benchmarks/$bench.py"); done
    run_step benchmarks 150 "${PYTEST[@]}" "${FILES[@]}" --quick -rs
else
    for bench in "${BENCHES[@]}"; do
        run_step "$bench" 110 "${PYTEST[@]}" "benchmarks/$bench.py" --benchmark-json="$WORK/$bench.json" -rs
    done
fi

# 4. The report: <out>/<date>-<gpu>.json and .md.
BENCH_ARGS=()
for bench in "${BENCHES[@]}"; do
    BENCH_ARGS+=(--bench-json "$WORK/$bench.json")
done
for junit in "$WORK"/gpu_tests_*.xml; do
    [ -e "$junit" ] && BENCH_ARGS+=(--junit "$junit")
done
if ! timeout 60 "$PY" -m benchmarks.collect report --rows "$WORK/rows.json" --out-dir "$OUT" \
        --steps "$STEPS" "${BENCH_ARGS[@]}" "${DRY_FLAG[@]}"; then
    echo "gpu_check.sh: the report step failed" >&2
    exit 1
fi
echo "gpu_check.sh: done in $((SECONDS - START))s; results in $OUT"
