"""The ROS package as ROS users install it: `colcon build` of a copy of this repository, then its tools
run from the install space (as `ros2 run ddclip <tool>` runs them) and `colcon test` runs pytest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("ddclip_node", "ddclip_query", "ddclip_replay", "ddclip_demo", "ddclip")
VENV = Path(sys.prefix)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    if shutil.which("colcon", path=str(VENV / "bin")) is None:
        pytest.skip("colcon is not installed: scripts/setup.sh installs it")
    ws = tmp_path_factory.mktemp("ws")
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:  # the package as a user clones it into ws/src
        if (ROOT / name).is_file():
            (ws / "src" / "ddclip" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, ws / "src" / "ddclip" / name)
    result = subprocess.run(
        [str(VENV / "bin" / "colcon"), "build", "--packages-select", "ddclip", "--cmake-args",
         f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=ON"],
        cwd=ws, env=_env(ws, install=False), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return ws


def _env(ws: Path, install: bool = True) -> dict[str, str]:
    """What sourcing install/setup.bash gives (the venv stands in for /opt/ros/<distro>)."""
    prefixes = ([str(ws / "install" / "ddclip")] if install else []) + [str(VENV)]
    site = (
        ws / "install" / "ddclip" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    )
    env = {
        **os.environ,
        "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "AMENT_PREFIX_PATH": os.pathsep.join(prefixes),
        "CMAKE_PREFIX_PATH": os.pathsep.join(prefixes),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_LOG_DIR": str(ws / "ros_log"),
    }
    if install:
        env["PYTHONPATH"] = str(site)
    return env


def _ros2_run(ws: Path, tool: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """What `ros2 run ddclip <tool>` does: find the package prefix in the ament index, run lib/ddclip/<tool>."""
    env = _env(ws)
    find = "from ament_index_python.packages import get_package_prefix; print(get_package_prefix('ddclip'))"
    prefix = subprocess.run([sys.executable, "-c", find], env=env, capture_output=True, text=True, check=True)
    executable = Path(prefix.stdout.strip()) / "lib" / "ddclip" / tool
    return subprocess.run(
        [sys.executable, str(executable), *args], env=env, cwd=ws, capture_output=True, text=True, **kwargs
    )


def test_colcon_build_installs_every_tool_with_the_package(workspace):
    install = workspace / "install" / "ddclip"
    for tool in TOOLS:
        assert os.access(install / "lib" / "ddclip" / tool, os.X_OK), tool
    for name in ("launch/ddclip.launch.py", "config/ddclip.yaml", "package.xml", "msg/ObjectView.msg"):
        assert (install / "share" / "ddclip" / name).is_file(), name
    where = subprocess.run(
        [sys.executable, "-c", "import ddclip_core, ddclip.msg, training, ddclip_cli; print(ddclip_core.__file__)"],
        env=_env(workspace), cwd=workspace, capture_output=True, text=True,
    )  # fmt: skip
    assert where.returncode == 0 and where.stdout.startswith(str(install)), where.stdout + where.stderr
    assert (Path(where.stdout.strip()).parent / "assets" / "examples.tsv").is_file()  # the demo's scene
    profile = subprocess.run(
        [sys.executable, "-c", "from ddclip_ros.dds_profile import PROFILE; print(PROFILE, PROFILE.is_file())"],
        env=_env(workspace), cwd=workspace, capture_output=True, text=True,
    )  # fmt: skip
    assert profile.stdout.startswith(str(install)) and profile.stdout.split()[-1] == "True", profile.stdout


def test_tools_run_from_the_install_space(workspace):
    for tool, words in (("ddclip", "bank"), ("ddclip_query", "--sources"), ("ddclip_replay", "--rate")):
        result = _ros2_run(workspace, tool, "--help", timeout=120)
        assert result.returncode == 0 and words in result.stdout, (tool, result.stdout, result.stderr)
    assert "train" in _ros2_run(workspace, "ddclip", "--help", timeout=120).stdout
    # A bad start-up parameter: one fatal line, a non-zero exit, no traceback.
    node = _ros2_run(workspace, "ddclip_node", "--ros-args", "-p", "max_views:=100", timeout=300)
    assert node.returncode == 1, node.stdout + node.stderr
    output = node.stdout + node.stderr
    assert "Traceback" not in output and output.count("FATAL") == 1 and "cannot start" in output, output
    assert "max_views" in output


def test_colcon_test_runs_the_pytest_suite(workspace):
    env = {**_env(workspace), "PYTEST_ADDOPTS": "-p no:cacheprovider -k test_files_stay_short_enough_to_read"}
    result = subprocess.run(
        [str(VENV / "bin" / "colcon"), "test", "--packages-select", "ddclip"],
        cwd=workspace, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = subprocess.run(
        [str(VENV / "bin" / "colcon"), "test-result", "--all", "--verbose"],
        cwd=workspace, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert "ddclip_pytest.xunit.xml: 1 test, 0 errors, 0 failures" in summary.stdout, summary.stdout
