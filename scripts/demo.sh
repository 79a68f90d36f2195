#!/usr/bin/env bash
# Set up .venv from scratch if needed, then run the main job on the embedded default: embed the
# example objects shipped in ddclip_core/assets and name each from a list of labels.
# Extra arguments go to `ddclip demo`, e.g. scripts/demo.sh --weights Four_1to6F_bs1600_LT6.ckpt
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
exec .venv/bin/ddclip demo "$@"
