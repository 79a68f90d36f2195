#!/usr/bin/env bash
# Create .venv in the repository root and install ddclip with everything it needs, from scratch.
# Idempotent: a second run only installs what changed. Needs python3.11 (or PYTHON=...), pip access
# to the package registry, and ~7 GB of disk (torch's CUDA build runs on CPU too).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PYTHON="${PYTHON:-python3}"
stamp=.venv/.ddclip-setup-done
if [[ -f "$stamp" && "$stamp" -nt setup.py && "$stamp" -nt scripts/setup.sh ]]; then
    exec bash scripts/setup_ros.sh  # returns at once when the interfaces are up to date
fi
if [[ ! -x .venv/bin/python ]]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
pip() {
    # The registry mirror here prints a harmless "Location ... is ignored" line per package: hide those.
    .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}
pip install --upgrade pip setuptools wheel
# torch unpinned: the registry's current build; torchvision from the same registry matches it.
echo "[setup] installing ddclip and its dependencies (first run: a few minutes)"
pip install -e ".[test,download,train,cluster,gaussians,onnx]"
touch "$stamp"
bash scripts/setup_ros.sh
echo "[setup] done: $(.venv/bin/python -c 'import torch, open_clip; print("torch", torch.__version__, "open_clip", open_clip.__version__)')"
