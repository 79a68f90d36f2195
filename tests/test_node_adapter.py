"""The node's guards, in this process: an exception in a service or a callback is an answer and a
counter, never the end of the node (over DDS such a failure cannot be provoked at will)."""

from __future__ import annotations

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed: scripts/setup.sh installs ROS 2 from PyPI")
from ddclip.srv import Query  # noqa: E402

from ddclip_core.perception import RequestError  # noqa: E402
from ddclip_ros.node import DDClipNode  # noqa: E402
from tests.ros_node import node_params, ros_env  # noqa: E402


@pytest.fixture
def node(tmp_path):
    ros_env(tmp_path)
    overrides = [item for k, v in node_params(tmp_path).items() for item in ("-p", f"{k}:={v}")]
    rclpy.init(args=["--ros-args", *overrides])
    ddclip = DDClipNode()
    yield ddclip
    ddclip.close()
    ddclip.destroy_node()
    rclpy.try_shutdown()


def test_a_failing_service_answers_false_and_is_counted(node):
    def broken(request, response):
        raise KeyError("a bug")

    response = node._serve(broken)(Query.Request(text="x"), Query.Response())
    assert not response.success and response.message == "internal error: KeyError: 'a bug'"
    ok, message = node.engine.health.status()
    assert not ok and "service errors (1 so far" in message
    refused = node._serve(lambda q, r: (_ for _ in ()).throw(RequestError("no such thing")))
    response = refused(Query.Request(text="x"), Query.Response())
    assert not response.success and response.message == "no such thing"
    assert dict(node.engine.health.counters())["service requests refused"] == 1


def test_a_failing_callback_is_counted_and_bad_input_is_not_a_bug(node):
    def broken(_message):
        raise RuntimeError("a bug")

    node._guard(broken)(object())  # does not raise
    node._guard(lambda m: (_ for _ in ()).throw(ValueError("a view of track 't': zero-size image")))(object())
    counters = dict(node.engine.health.counters())
    assert counters["callback errors"] == 1 and counters["bad input messages dropped"] == 1
