#!/usr/bin/env bash
# Set up .venv from scratch if needed, then run the main job on the embedded default scene:
# the ddclip node in its own process, a replay of the example objects shipped in
# ddclip_core/assets as tracked object views, what the node recognised, and a language query.
# Online, the first run fetches the real path first (`ddclip weights download --name all`: the published
# checkpoints and the released Objaverse embeddings, named, as a bank; several GB), so the node names the
# objects with real weights and their nearest Objaverse objects; DDCLIP_NO_DOWNLOAD=1 skips that.
# Extra arguments go to ddclip-demo, e.g. scripts/demo.sh --query "a teddy bear" --weights W.ckpt
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
if [[ -z "${DDCLIP_NO_DOWNLOAD:-}" ]] && ! .venv/bin/python -c "from ddclip_core.hub import default_bank, default_weights; raise SystemExit(default_bank() is None or default_weights() is None)"; then
    if .venv/bin/python -c "from ddclip_core.hub import reachable; raise SystemExit(not reachable())"; then
        echo "[demo] fetching the real weights and the Objaverse bank (once; several GB) ..."
        .venv/bin/ddclip weights download --name all
    else
        echo "[demo] offline: Hugging Face is not reachable, so the demo runs on the embedded scene with random weights"
    fi
fi
exec .venv/bin/ddclip-demo "$@"
