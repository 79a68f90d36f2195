#!/usr/bin/env bash
# Build ddclip's own interfaces (msg/, srv/) with CMake into a Python environment that already holds the
# ROS 2 wheels (scripts/setup_ros.sh installs them into .venv; scripts/gpu_check.sh into a GPU machine's
# environment), so that `from ddclip.msg import ShapeEmbedding` works from its python with no
# environment variables. Needs cmake, g++ and that Python's headers.
#
#   bash scripts/build_interfaces.sh [PREFIX]     # PREFIX: the environment (default: .venv)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
prefix="$(cd "${1:-$root/.venv}" && pwd)"
python="$prefix/bin/python"
for tool in cmake g++; do
    command -v "$tool" >/dev/null || { echo "[interfaces] error: $tool is needed to build the ROS interfaces (apt-get install cmake g++)" >&2; exit 1; }
done
include="$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
[[ -f "$include/Python.h" ]] || { echo "[interfaces] error: no Python.h in $include: install this Python's headers (python3-dev)" >&2; exit 1; }
numpy_include="$("$python" -c 'import numpy; print(numpy.get_include())')"

# The wheels' CMake exports name the wheel builder's Python and numpy include folders: point them here.
for f in "$prefix"/share/*/cmake/*rosidl_generator_pyExport.cmake; do
    sed -i "s#/opt/python/cp3[0-9]*-cp3[0-9]*/include/python3\.[0-9]*#$include#g; s#[^;\"]*site-packages/numpy/_core/include#$numpy_include#g" "$f"
done

build="$(mktemp -d "${TMPDIR:-/tmp}/ddclip-interfaces.XXXXXX")"
trap 'rm -rf "$build"' EXIT
# ament_lint_auto is not on PyPI: BUILD_TESTING=OFF.
PATH="$prefix/bin:$PATH" cmake -S . -B "$build" -DCMAKE_INSTALL_PREFIX="$prefix" -DCMAKE_PREFIX_PATH="$prefix" \
    -DPython3_EXECUTABLE="$python" -DBUILD_TESTING=OFF -DDDCLIP_INTERFACES_ONLY=ON >"$build/log" 2>&1 \
    && cmake --build "$build" -j"$(nproc)" >>"$build/log" 2>&1 && cmake --install "$build" >>"$build/log" 2>&1 \
    || { tail -40 "$build/log" >&2; echo "[interfaces] error: the interface build failed" >&2; exit 1; }
"$python" -c "import rclpy; from ddclip.msg import ShapeEmbedding; from ddclip.srv import Query"
echo "[interfaces] built into $prefix: rclpy, ddclip.msg and ddclip.srv importable from $python"
