#!/usr/bin/env bash
# The GPU tests (`pytest -m gpu`) as parallel pytest processes: gpu_check.sh's gpu_tests step.
#
#   bash benchmarks/gpu_tests.sh WORK_DIR LOG_DIR [SHARD ...]    # SHARD: "file|-k expression"
#
# Nothing in these tests is timed, so they can share the GPU. One after another, their Triton
# compilations (about a second per kernel specialisation on one CPU core, all of them on a fresh
# machine's empty cache) would take most of the step's time; in shards they run on several cores.
# Each shard writes WORK_DIR/gpu_tests_<i>.xml (junit; benchmarks/collect.py adds them up) and
# LOG_DIR/gpu_tests_<i>.log. Exit status 1 when a shard failed; pytest's 5 (nothing selected) passes.
# On a CPU every test here skips itself: gpu_check.sh --dry-run runs this to check the plumbing.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
WORK="${1:?usage: gpu_tests.sh WORK_DIR LOG_DIR}"
LOGS="${2:?usage: gpu_tests.sh WORK_DIR LOG_DIR}"
PY="${PYTHON:-$(command -v python3 || echo python)}"  # as gpu_check.sh picks it

# "file|-k expression": the kernels' parity files split by dtype / adapter; every other file that
# has GPU tests is one shard (the end-to-end ones: a compiled static-cache generate, a one-GPU FSDP2 run).
# Shards given as arguments replace these (tests/test_benchmarks_quick.py checks the time-limit path).
if [ $# -gt 2 ]; then
    SHARDS=("${@:3}")
else
    SHARDS=("tests/test_lora_kernels_gpu.py|not dora" "tests/test_lora_kernels_gpu.py|dora"
            "tests/test_side_path_kernels_interp.py|dtype0" "tests/test_side_path_kernels_interp.py|dtype1"
            "tests/test_side_path_kernels_interp.py|dtype2")
    for f in $(grep -l "pytest.mark.gpu" tests/test_*.py); do
        case " ${SHARDS[*]} " in *" $f|"*) ;; *) SHARDS+=("$f|") ;; esac
    done
fi

# A non-interactive shell starts background commands with SIGINT ignored, and Python then never
# raises KeyboardInterrupt: each shard puts SIGINT's handler back before pytest starts, so that the
# step's time limit (SIGINT to the process group) makes pytest stop and write its junit file.
PYTEST=("$PY" -c 'import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler)
import pytest; sys.exit(pytest.main(sys.argv[1:]))')
pids=()
for i in "${!SHARDS[@]}"; do
    file="${SHARDS[$i]%%|*}"
    expr="${SHARDS[$i]#*|}"
    args=("$file")
    [ -n "$expr" ] && args+=(-k "$expr")
    echo "shard $i: ${args[*]}"
    "${PYTEST[@]}" -q -p no:cacheprovider -m gpu "${args[@]}" --junitxml="$WORK/gpu_tests_$i.xml" \
        > "$LOGS/gpu_tests_$i.log" 2>&1 &
    pids+=($!)
done

# gpu_check.sh's time limit sends SIGINT to the whole process group: the shards write their junit
# files and stop, and this script waits for them.
trap 'echo "gpu_tests.sh: interrupted; waiting for the shards to write their reports"' INT
rc=0
for i in "${!pids[@]}"; do
    wait "${pids[$i]}"
    r=$?
    if [ "$r" -gt 128 ]; then  # the wait itself was interrupted
        wait "${pids[$i]}"
        r=$?
    fi
    echo "shard $i: rc $r | $(tail -n 1 "$LOGS/gpu_tests_$i.log")"
    if [ "$r" -ne 0 ] && [ "$r" -ne 5 ]; then
        rc=1
    fi
done
exit "$rc"
