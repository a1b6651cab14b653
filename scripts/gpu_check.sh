#!/usr/bin/env bash
# The GPU check, one short run on one GPU (under 8 minutes): CUDA tests, DDP over NCCL, bench_perf.py on
# CUDA, and the peak memory of a 256^3 stitched sampling step (scripts/gpu_check.py says what each does).
#
#     bash scripts/gpu_check.sh              # writes runs/gpu_check/gpu_check.json and gpu_check.log
#     OUT=/some/dir bash scripts/gpu_check.sh
#
# Without a CUDA device it says so, writes {"status": "no CUDA device", ...} and exits 0. PYTHON picks the
# interpreter (default: .venv/bin/python, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs/gpu_check}"
mkdir -p "$out"
python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$python" scripts/gpu_check.py --out "$out" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
