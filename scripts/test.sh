#!/usr/bin/env bash
# Set up .venv from scratch if needed (scripts/setup.sh), then lint and run the test suite on CPU.
# Extra arguments go to pytest, e.g. scripts/test.sh -k weights
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
