#!/usr/bin/env bash
# Set up .venv from scratch if needed, then run the main job on the embedded default scene:
# the ddclip node in its own process, a replay of the example objects shipped in
# ddclip_core/assets as tracked object views, what the node recognised, and a language query.
# Extra arguments go to ddclip-demo, e.g. scripts/demo.sh --query "a teddy bear" --weights W.ckpt
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
exec .venv/bin/ddclip-demo "$@"
