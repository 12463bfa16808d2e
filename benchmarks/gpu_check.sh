#!/usr/bin/env bash
# Issue 29's GPU check, one command on a machine with one CUDA GPU:   bash benchmarks/gpu_check.sh [OUT]
#
# Prepared on a CPU-only machine: no GPU was lent to the session that wrote it, so it has never run
# (docs/results/gpu_check.md). Budget: under 8 minutes on one H100, each phase under its own timeout, so that a
# slow phase cannot take the others' time; what a phase printed before a timeout is kept.
#   1. the CUDA tests: the Triton kernels against the plain step on CUDA tensors (tests/unit/test_triton_step.py,
#      interpreter off), the batched learner against the per-episode loop, whole episodes and learned-optimizer
#      steps fused against plain (tests/unit/test_cuda.py);
#   2. the meta-learner step alone, fused against plain (scripts/benchmark_meta_step.py --device cuda);
#   3. meta-training and evaluation episodes/s and peak GPU memory at meta-batch 1, 4, 16, 32 for both shapes
#      (scripts/benchmark.py --device cuda; fused, and the plain step at meta-batch 16 beside it).
# JSON lines go to stdout and to $OUT/*.jsonl (default runs/gpu-check), pytest's summary to $OUT/tests.txt.
# Exit status: 0 when every phase passed, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${1:-${OUT:-runs/gpu-check}}
mkdir -p "$OUT"
export PYTHONPATH=$PWD TRITON_INTERPRET=0
status=0
start=$SECONDS
say() { echo "gpu-check [$((SECONDS - start)) s]: $*" >&2; }
phase() {  # phase NAME TIMEOUT_S OUTPUT COMMAND...: run COMMAND under a timeout, its stdout also to OUTPUT
    local name=$1 limit=$2 output=$3
    shift 3
    say "$name (at most $limit s)"
    timeout "$limit" "$@" | tee "$output"
    local code=${PIPESTATUS[0]}
    [ "$code" -eq 0 ] || { say "$name FAILED (exit $code; 124: timed out)"; status=1; }
}

"$PY" - <<'PYTHON' | tee "$OUT/device.json" || exit 1
import json, torch
assert torch.cuda.is_available(), "gpu_check.sh: no CUDA GPU visible to torch"
props = torch.cuda.get_device_properties(0)
print(json.dumps({"device": props.name, "memory_gib": round(props.total_memory / 2**30, 1), "torch": torch.__version__,
                  "cuda": torch.version.cuda}))
PYTHON

phase "1/3 CUDA tests" 150 "$OUT/tests.txt" \
    "$PY" -m pytest -q -p no:cacheprovider tests/unit/test_triton_step.py tests/unit/test_cuda.py
phase "2/3 the meta-learner step alone, fused and plain" 100 "$OUT/meta_step.jsonl" \
    "$PY" scripts/benchmark_meta_step.py --device cuda --configs omniglot:1 omniglot:16 miniimagenet:1 miniimagenet:16 \
    --hidden-sizes 20 --threads 1 --rounds 1 --repeats 3
phase "3/3 meta-training episodes/s and GPU memory, fused" 150 "$OUT/speed_fused.jsonl" \
    "$PY" scripts/benchmark.py --device cuda --meta-batches 1 4 16 32 --naive-episodes 0 --min-timed-episodes 8
phase "3/3 the same with the plain step, meta-batch 16" 60 "$OUT/speed_plain.jsonl" \
    "$PY" scripts/benchmark.py --device cuda --meta-batches 16 --naive-episodes 0 --min-timed-episodes 8 --step-kernel torch
say "done, status $status; results in $OUT"
exit $status
