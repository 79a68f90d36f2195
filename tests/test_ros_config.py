"""config/ddclip.yaml and launch/ddclip.launch.py agree with the node's declared parameters."""

from __future__ import annotations

import importlib.util
import py_compile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_yaml_lists_every_parameter_with_its_default():
    pytest.importorskip("rcl_interfaces", reason="ROS message packages not installed: scripts/setup.sh installs them")
    from ddclip_ros.parameters import parameter_defaults

    document = yaml.safe_load((ROOT / "config" / "ddclip.yaml").read_text())
    assert list(document) == ["/**"]  # any namespace, any node name
    assert document["/**"]["ros__parameters"] == parameter_defaults()


def test_launch_file_is_valid_python_and_loads_where_launch_ros_exists():
    path = ROOT / "launch" / "ddclip.launch.py"
    py_compile.compile(str(path), doraise=True)
    if importlib.util.find_spec("launch_ros") is None:
        pytest.skip("launch_ros is not installable from PyPI: the launch file is only byte-compiled here")
    spec = importlib.util.spec_from_file_location("ddclip_launch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = {action.name for action in description.entities if hasattr(action, "name")}
    assert {"weights", "bank", "labels", "views_topic", "namespace", "use_sim_time", "query_service"} <= names


def test_cmake_installs_the_node_launch_and_config():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for tool in ("ddclip_node", "ddclip_query", "ddclip_replay", "ddclip_demo", "ddclip"):
        assert f"scripts/{tool}" in cmake and (ROOT / "scripts" / tool).stat().st_mode & 0o111, tool
    assert "install(DIRECTORY launch config DESTINATION share/${PROJECT_NAME})" in cmake
    for interface in sorted((ROOT / "msg").glob("*.msg")) + sorted((ROOT / "srv").glob("*.srv")):
        assert f'"{interface.parent.name}/{interface.name}"' in cmake, f"{interface.name} is not generated"
