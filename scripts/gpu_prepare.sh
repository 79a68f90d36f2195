#!/usr/bin/env bash
# Prepare, on this machine, what scripts/gpu_check.sh needs on a lent GPU machine that cannot reach any
# package registry: wheels of the packages its image lacks (for its Python 3.12) and, if given, the
# published Duoduo CLIP code for the side-by-side encoder figures. Everything goes into .gpu/ (ignored),
# which the device call carries:
#
#   bash scripts/gpu_prepare.sh [/path/to/DuoduoCLIP checkout]
#   device run: carry [".gpu"], command "bash scripts/gpu_check.sh", timeout_s 570
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu/whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .gpu/whl \
    "open_clip_torch==$(.venv/bin/python -c 'import open_clip; print(open_clip.__version__)')" ftfy wcwidth faiss-cpu
if [ $# -ge 1 ]; then
    rm -rf .gpu/published && mkdir -p .gpu/published/src
    cp -r "$1/src/custom_clip" .gpu/published/src/
fi
du -sh .gpu
