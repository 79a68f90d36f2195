#!/usr/bin/env bash
# The CUDA checks in one call on a lent GPU machine (see scripts/gpu_prepare.sh): the CUDA tests, then the
# GPU benchmarks the issues ask for (bf16, the paper's 200 x 12), each step under its own time limit (9.5
# minutes in all at most) and its output in $OUT/<step>.log. Never run yet: no GPU has been lent.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 DDCLIP_CACHE=/tmp/ddclip_cache
if ls .gpu/whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .gpu/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
published=()
[ -d .gpu/published/src/custom_clip ] && published=(--published .gpu/published)

step() {  # step NAME SECONDS COMMAND...: run it, keep its output, go on whatever it returns
    local name=$1 limit=$2
    shift 2
    echo "== $name ($limit s): $*"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "-- $name: exit $?"
    tail -n 25 "$OUT/$name.log"
}
step env 60 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"'
step tests 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_half_weights.py tests/test_view_cache.py
step encoder 200 python3 benchmarks/encoder.py --device cuda --settings 1x12,200x12 "${published[@]}"
step half_weights 60 python3 benchmarks/half_weights.py --device cuda --settings 1x12,200x12
step view_cache 90 python3 benchmarks/view_cache.py --device cuda --precision bf16 --batch 200
