#!/usr/bin/env bash
# Prepare, on this machine, what scripts/gpu_check.sh needs on a lent GPU machine that cannot reach any
# package registry, for its Python (3.12; GPU_PYTHON=3.x for another), all into .gpu/ (ignored):
#   .gpu/whl        wheels of the packages its image lacks (open_clip, faiss, ...), 21 MB
#   .gpu/published  the published Duoduo CLIP code for the side-by-side encoder figures, if given
#   .gpu/ros        the ROS 2 wheels of this .venv's versions, for the node, 36 MB once slimmed
#
#   bash scripts/gpu_prepare.sh [/path/to/DuoduoCLIP checkout]
# then two device calls, each under a call's 64 MiB (device time: about 4 + 6 minutes):
#   carry [".gpu/whl", ".gpu/published"], command "bash scripts/gpu_check.sh encoder", timeout_s 580
#   carry [".gpu/whl", ".gpu/ros"],       command "bash scripts/gpu_check.sh node",    timeout_s 580
set -euo pipefail
cd "$(dirname "$0")/.."
version="${GPU_PYTHON:-3.12}"
download() {  # download FOLDER PACKAGE...: binary wheels for the GPU machine's Python, no dependencies
    local folder=$1
    shift
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$folder" "$@" \
        2> >(grep -v "is ignored: it is neither" >&2)
}
mkdir -p .gpu/whl
download .gpu/whl "open_clip_torch==$(.venv/bin/python -c 'import open_clip; print(open_clip.__version__)')" \
    ftfy wcwidth faiss-cpu
if [ $# -ge 1 ]; then
    rm -rf .gpu/published && mkdir -p .gpu/published/src
    cp -r "$1/src/custom_clip" .gpu/published/src/
fi
# The same ROS 2 packages as .venv (scripts/setup_ros.sh), with what the image lacks of their own needs;
# empy has no wheel on the registry: built here (pure Python).
rm -rf .gpu/ros && mkdir -p .gpu/ros
mapfile -t ros < <(.venv/bin/python -m pip list --format=freeze 2>/dev/null \
    | grep -E '^(ros-[a-z0-9-]+|catkin-pkg|docutils|lark-parser)==')
download .gpu/ros "${ros[@]}"
.venv/bin/python -m pip wheel -q --no-deps -w .gpu/ros \
    "empy==$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("empy"))')" \
    2> >(grep -v "is ignored: it is neither" >&2)
.venv/bin/python scripts/slim_wheels.py .gpu/ros > /dev/null
du -sh .gpu/whl .gpu/ros
