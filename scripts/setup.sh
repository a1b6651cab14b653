#!/usr/bin/env bash
# Create .venv (if missing) and install volscore with its test extra. Idempotent.
# torch is pinned to the CPU build that installs quickly here; on a GPU machine install your own
# torch build first (e.g. `pip install torch --index-url ...cu124`) and set VOLSCORE_TORCH= to skip the pin.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
TORCH_PIN=${VOLSCORE_TORCH-torch==2.13.0}
if [ -n "$TORCH_PIN" ]; then
  .venv/bin/python -m pip install -q "$TORCH_PIN"
fi
.venv/bin/python -m pip install -q -e ".[test]"
