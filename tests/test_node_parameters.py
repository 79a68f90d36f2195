"""The node's parameters and names over real DDS, the way ROS users reach them: the YAML under a
namespace, `ros2 param set` (the parameter service) changing behaviour at once, remapped names in the
log, start-up errors as one line. The node runs in its own process."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed: scripts/setup.sh installs ROS 2 from PyPI")
from ddclip.msg import ObjectMatches, ObjectView  # noqa: E402
from ddclip.srv import Enroll, Query  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import GetParameters, SetParameters  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402

from ddclip_core import precision  # noqa: E402
from ddclip_ros.image_conversion import rgb_to_image  # noqa: E402
from ddclip_ros.spin import spin_until  # noqa: E402
from tests.conftest import random_views  # noqa: E402
from tests.ros_node import launch, node_params, ready_line, ros_env, stop_cleanly  # noqa: E402

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
NS = "/robot1"
ROOT = Path(__file__).resolve().parents[1]


def launch_names() -> set[str]:
    """The node's topic and service names the launch file offers as arguments (its NAMES, read without
    importing it: launch_ros does not install from PyPI)."""
    tree = ast.parse((ROOT / "launch" / "ddclip.launch.py").read_text())
    (names,) = [n.value for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "NAMES"]
    return {name for name, _ in ast.literal_eval(names).values()}


# the names every rclpy node has (parameter services, rosout), and /diagnostics, which is global by convention
STANDARD = ("/rosout", "/parameter_events", "/diagnostics")
PARAMETER_SERVICES = ("describe_parameters", "get_parameter_types", "get_parameters", "list_parameters")
PARAMETER_SERVICES += ("set_parameters", "set_parameters_atomically", "get_type_description")


def parameter(name: str, value) -> Parameter:
    if isinstance(value, bool):
        typed = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
    elif isinstance(value, int):
        typed = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
    else:
        typed = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
    return Parameter(name=name, value=typed)


class Client:
    def __init__(self, node) -> None:
        self.node = node
        self.matches: list[ObjectMatches] = []
        self.diagnostics: list[DiagnosticStatus] = []
        node.create_subscription(ObjectMatches, f"{NS}/ddclip/matches", self.matches.append, 50)
        node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self.diagnostics.extend(m.status), 10)
        self.views = node.create_publisher(ObjectView, f"{NS}/tracker/views", RELIABLE)
        self.set = node.create_client(SetParameters, f"{NS}/ddclip/set_parameters")
        self.get = node.create_client(GetParameters, f"{NS}/ddclip/get_parameters")
        self.query = node.create_client(Query, f"{NS}/ddclip/query")
        self.enroll = node.create_client(Enroll, f"{NS}/ddclip/enroll")

    def call(self, client, request):
        future = client.call_async(request)
        assert spin_until(self.node, future.done, 60)
        return future.result()

    def param_set(self, name: str, value) -> tuple[bool, str]:
        """What `ros2 param set /robot1/ddclip NAME VALUE` does."""
        (result,) = self.call(self.set, SetParameters.Request(parameters=[parameter(name, value)])).results
        return result.successful, result.reason

    def param_get(self, name: str):
        (value,) = self.call(self.get, GetParameters.Request(names=[name])).values
        return value.integer_value if value.type == ParameterType.PARAMETER_INTEGER else value.double_value

    def send(self, track: str, count: int, seed: int, ended: bool = False) -> None:
        for i, pixels in enumerate(random_views(count, size=96, seed=seed)):
            message = ObjectView(track_id=track, track_ended=ended and i == count - 1)
            message.image = rgb_to_image(pixels)
            self.views.publish(message)

    def result(self, track: str, views: int, timeout: float = 60) -> ObjectMatches:
        found = lambda: any(m.track_id == track and m.num_views == views for m in self.matches)  # noqa: E731
        assert spin_until(self.node, found, timeout), [(m.track_id, m.num_views) for m in self.matches]
        return [m for m in self.matches if m.track_id == track][-1]


def topics_of(node, name: str) -> set[str]:
    """The topics the node ``name`` (in NS) publishes or subscribes to, as the graph shows them."""
    published = node.get_publisher_names_and_types_by_node(name, NS)
    subscribed = node.get_subscriber_names_and_types_by_node(name, NS)
    return {topic for topic, _ in published + subscribed}


def test_yaml_under_a_namespace_and_parameters_set_at_run_time(tmp_path):
    document = yaml.safe_load((ROOT / "config" / "ddclip.yaml").read_text())
    document["/**"]["ros__parameters"].update(k_matches=4, timeout_s=30.0, min_views=4)  # not given with -p
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(document))
    params = node_params(tmp_path)
    del params["min_views"], params["timeout_s"]
    ros_args = ["--params-file", str(params_file), "-r", f"__ns:={NS}", "-r", "ddclip/views:=tracker/views"]
    process = launch(params, ros_env(tmp_path), ros_args)
    rclpy.init()
    node = rclpy.create_node("ddclip_param_client")
    try:
        client = Client(node)
        assert client.query.wait_for_service(timeout_sec=120), process.stdout.read() if process.poll() else "no node"
        assert spin_until(node, lambda: client.views.get_subscription_count() > 0, 30)
        assert client.param_get("k_matches") == 4 and client.param_get("min_views") == 4  # the YAML applied

        # Nothing dropped yet: the diagnostics say ok (the level used to be WARN from the start).
        assert spin_until(node, lambda: client.diagnostics, 30)
        assert (client.diagnostics[-1].level, client.diagnostics[-1].message) == (DiagnosticStatus.OK, "ok")
        assert client.diagnostics[-1].name == f"{NS}/ddclip: encoder"  # robots on one domain stay apart

        # min_views 4 holds a 3-view track back; lowering it to 3 encodes it at once.
        client.send("three", 3, seed=1)
        spin_until(node, lambda: False, 1.0)
        assert not client.matches
        assert client.param_set("min_views", 3) == (True, "")
        assert len(client.result("three", 3).label_matches) == 3  # k_matches 4, 3 labels

        # k_matches takes effect for the next match and the next query.
        assert client.param_set("k_matches", 2)[0]
        client.send("two-matches", 3, seed=2, ended=True)
        result = client.result("two-matches", 3)
        assert len(result.bank_matches) == 2 and len(result.label_matches) == 2
        answer = client.call(client.query, Query.Request(text="a mug"))  # k = 0: the node's k_matches
        assert answer.success and len(answer.results) == 2

        # confidence_threshold and timeout_s too.
        assert client.param_set("confidence_threshold", -1.0)[0]
        assert client.param_set("timeout_s", 0.5)[0]
        client.send("quiet", 1, seed=3)  # one view, never ended: encoded once it has been quiet for 0.5 s
        quiet = client.result("quiet", 1, timeout=30)
        assert quiet.threshold == -1.0 and quiet.confident

        # Refused, with the reason, and nothing changes.
        ok, reason = client.param_set("min_views", 20)
        assert not ok and "min_views (20) must be <= max_views (12)" in reason
        ok, reason = client.param_set("max_views", 5)
        assert not ok and "read-only" in reason
        ok, reason = client.param_set("k_matches", 0)
        assert not ok and client.param_get("k_matches") == 2
        start = client.param_get("max_view_pixels")
        ok, reason = client.param_set("max_view_pixels", start + 1)  # above the size the queues were made for
        assert not ok and f"max_view_pixels above {start}, its value at start" in reason
        assert client.param_set("max_view_pixels", start - 1)[0]  # lowering is fine
        assert client.param_set("max_view_pixels", start)[0]

        # A request the node cannot answer is an answer, not a crash.
        depth = rgb_to_image(random_views(1, size=16)[0])
        depth.encoding, depth.step = "32FC1", 16 * 4
        depth.data = bytes(16 * 16 * 4)
        reply = client.call(client.enroll, Enroll.Request(name="floor", images=[depth]))
        assert not reply.success and "image 0: a 32FC1 image is depth, not a colour view" in reply.message
        reply = client.call(client.query, Query.Request(text="a mug", sources=8))
        assert not reply.success and "unknown sources 8" in reply.message
        assert process.poll() is None

        # Every name the node has, as remapped, is one a launch argument remaps.
        offered = {name.replace("ddclip/views", "tracker/views") for name in launch_names()}
        standard = {*STANDARD, *(f"{NS}/ddclip/{service}" for service in PARAMETER_SERVICES)}
        assert spin_until(node, lambda: f"{NS}/ddclip/objects" in topics_of(node, "ddclip"), 30)
        own = topics_of(node, "ddclip") | {n for n, _ in node.get_service_names_and_types_by_node("ddclip", NS)}
        assert f"{NS}/ddclip/query" in own and f"{NS}/tracker/views" in own
        assert {name.removeprefix(f"{NS}/") for name in own - standard} <= offered
        node.destroy_node()
    finally:
        rclpy.try_shutdown()
        output = stop_cleanly(process)
    ready = ready_line(output)
    assert f"{NS}/tracker/views" in ready and f"{NS}/image" in ready and f"{NS}/ddclip/query" in ready, ready
    assert "reliable, depth 1000 for views and 1000 for frames" in ready  # 1 GiB / 1 MB images
    assert "settings changed: min_views=3" in output
    # precision defaults to auto: measured at start-up, and the log says what was measured and chosen
    model_line = next(line for line in output.splitlines() if "]: model " in line)
    if precision.candidates(torch.device("cpu")):
        chosen = ("precision fp32 (auto: fp32 on this CPU", "precision bf16 (auto: bf16 on this CPU")
    else:  # AVX2-only CPUs: nothing to measure, and the log says so
        chosen = ("precision fp32 (auto: fp32 (no 16-bit kernels for this CPU))",)
    assert any(text in model_line for text in chosen), model_line


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"min_views": "20"}, "min_views (20) must be <= max_views (12)"),
        ({"max_views": "100"}, "max_views"),
        ({"image_transport": "theora"}, "image_transport must be one of raw, compressed"),
        ({"weights": "", "bank": ""}, "no weights: set the 'weights' parameter"),
    ],
)
def test_bad_start_up_parameters_are_one_fatal_line(tmp_path, override, message, monkeypatch):
    monkeypatch.delenv("DDCLIP_WEIGHTS", raising=False)
    params = {**node_params(tmp_path), **override}
    process = launch(params, ros_env(tmp_path))
    started = time.monotonic()
    try:
        output, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.returncode == 1, output
    assert "Traceback" not in output and output.count("[FATAL]") == 1 and message in output, output
    assert time.monotonic() - started < 120


def test_parameters_are_checked_before_the_engines_imports(tmp_path, monkeypatch):
    """A launch with a bad parameter fails at once: the node module and its parameter checks import no torch
    (seconds on a robot's CPU), only the engine they then open does."""
    monkeypatch.delenv("DDCLIP_WEIGHTS", raising=False)
    probe = """
import sys, rclpy
from ddclip_ros.node import DDClipNode
for override, refused in (("min_views:=20", ValueError), ("weights:=''", RuntimeError)):
    rclpy.init(args=["--ros-args", "-p", override])
    try:
        DDClipNode()
    except refused as exc:
        print(str(exc)[:40])
    rclpy.shutdown()
print([name for name in ("torch", "open_clip") if name in sys.modules])
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            env=ros_env(tmp_path))  # fmt: skip
    assert result.stdout.splitlines()[-3:] == [
        "min_views (20) must be <= max_views (12)",
        "no weights: set the 'weights' parameter ",
        "[]",
    ], result.stdout + result.stderr
