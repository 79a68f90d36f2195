"""Starting the ddclip node in its own process for the ROS tests: a tiny model, a two-object bank,
three labels, loopback-only DDS on a domain id of this test run, logs in the test's folder."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from PIL import Image

from ddclip_core import save_export
from ddclip_core.bank_build import build_bank
from ddclip_ros.dds_profile import TRANSPORTS_VARIABLE, VARIABLES, use_image_profile
from ddclip_ros.node_process import start_node, stop_node
from tests.conftest import make_tiny, random_views


def ros_env(tmp_path: Path) -> dict[str, str]:
    """The environment for every process of a test, this one included (rclpy reads it at init), with
    ddclip's Fast DDS profile as the node and ddclip's tools use it (set before this process's first init)."""
    env = {
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_DOMAIN_ID": str(150 + os.getpid() % 80),
        "ROS_LOG_DIR": str(tmp_path / "ros_log"),
    }
    for variable in (*VARIABLES, TRANSPORTS_VARIABLE):  # the developer's own Fast DDS settings stay out
        os.environ.pop(variable, None)
    os.environ.update(env)
    use_image_profile()
    return {**os.environ, **env, "DDCLIP_CACHE": str(tmp_path / "cache")}


def node_params(tmp_path: Path) -> dict[str, str]:
    """Weights, bank and labels written under ``tmp_path``; the parameters that make the node use them."""
    model = make_tiny(seed=3)
    weights = save_export(model, tmp_path / "weights")
    objects = tmp_path / "objects"
    for index, name in enumerate(("red_mug", "white_couch")):
        (objects / name).mkdir(parents=True)
        for i, view in enumerate(random_views(2, seed=50 + index)):
            Image.fromarray(view).save(objects / name / f"{i}.png")
    build_bank(model, objects, progress=False).save(tmp_path / "bank")
    (tmp_path / "labels.txt").write_text("mug\ncouch\nduck\n")
    return {
        "weights": str(weights),
        "device": "cpu",
        "bank": str(tmp_path / "bank"),
        "labels": str(tmp_path / "labels.txt"),
        "templates": "none",
        "reliable": "true",
        # Views here are small: with a smaller largest image, the reliable queues may hold more of them.
        "max_pixels": "250000",
        "max_view_pixels": "250000",
        "min_views": "2",
        "timeout_s": "1.0",
        "memory_path": str(tmp_path / "memory"),
    }


def launch(params: dict[str, str], env: dict[str, str], ros_args: list[str] | tuple = ()) -> subprocess.Popen:
    return start_node(params, ros_args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop_cleanly(process: subprocess.Popen) -> str:
    """Stop the node with SIGINT; it must exit 0 without a traceback. Returns its output."""
    output = stop_node(process)
    assert process.returncode == 0 and "Traceback" not in output, output
    return output


def ready_line(output: str) -> str:
    """The node's ``ready:`` log line: its real input, service names and QoS."""
    return next(line for line in output.splitlines() if "ready: input" in line)
