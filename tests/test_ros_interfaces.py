"""ddclip's own ROS 2 interfaces, generated into .venv by scripts/setup_ros.sh, over real DDS."""

from __future__ import annotations

import array
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

rclpy = pytest.importorskip(
    "rclpy", reason="rclpy is not installed: run scripts/setup.sh (it installs ROS 2 from PyPI)"
)
from ddclip.msg import ObjectMatches, ObjectView, ShapeEmbedding, TrackedDetections  # noqa: E402
from ddclip.srv import Enroll, Forget, Query  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402


@pytest.fixture
def ros_env(tmp_path, monkeypatch):
    env = {
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_DOMAIN_ID": str(100 + os.getpid() % 100),
        "ROS_LOG_DIR": str(tmp_path / "ros_log"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **env}


def test_messages_round_trip_through_serialisation():
    message = ShapeEmbedding(track_id="mug-7", num_views=5, weights_id="ViT-B-32-lt6-abc")
    message.header.frame_id = "camera"
    message.embedding = array.array("f", [0.5] * 512)
    back = deserialize_message(serialize_message(message), ShapeEmbedding)
    assert back.track_id == "mug-7" and back.num_views == 5 and len(back.embedding) == 512
    view = ObjectView(track_id="3", track_ended=True)
    view.image.encoding, view.image.width, view.image.height = "rgb8", 2, 1
    view.image.step, view.image.data = 6, bytes(range(6))
    assert deserialize_message(serialize_message(view), ObjectView).image.data.tobytes() == bytes(range(6))
    detections = TrackedDetections(ended_tracks=["4"])
    assert deserialize_message(serialize_message(detections), TrackedDetections).ended_tracks == ["4"]
    assert ObjectMatches().confident is False
    assert (Query.Request.SOURCE_SEEN, Query.Request.SOURCE_BANK, Query.Request.SOURCE_BOTH) == (1, 2, 3)
    assert Enroll.Request().images == [] and Forget.Response().forgotten == 0


SERVER = textwrap.dedent(
    """
    import array, rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from ddclip.msg import QueryResult, ShapeEmbedding
    from ddclip.srv import Query

    def answer(request, response):
        response.success = True
        response.results = [QueryResult(source="seen", track_id="mug-7", name=request.text, score=0.31)]
        return response

    rclpy.init()
    node = rclpy.create_node("fake_ddclip")
    node.create_service(Query, "ddclip/query", answer)
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    publisher = node.create_publisher(ShapeEmbedding, "ddclip/embeddings", reliable)
    message = ShapeEmbedding(track_id="mug-7", num_views=3, embedding=array.array("f", [1.0] * 512))
    node.create_timer(0.1, lambda: publisher.publish(message))
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):  # SIGINT: rclpy's handler may shut down first
        pass
    node.destroy_node()
    rclpy.try_shutdown()
    """
)


def test_topics_and_services_between_processes(ros_env):
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    server = subprocess.Popen([sys.executable, "-c", SERVER], env=ros_env, stderr=subprocess.PIPE, text=True)
    rclpy.init()
    try:
        node = rclpy.create_node("ddclip_test_client")
        received: list[ShapeEmbedding] = []
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(ShapeEmbedding, "ddclip/embeddings", received.append, qos)
        client = node.create_client(Query, "ddclip/query")
        assert client.wait_for_service(timeout_sec=30), "query service never appeared"
        future = client.call_async(Query.Request(text="red mug", k=3, sources=Query.Request.SOURCE_SEEN))
        deadline = time.monotonic() + 30
        while (not future.done() or not received) and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
        response = future.result()
        assert response.success and response.results[0].name == "red mug" and response.results[0].track_id == "mug-7"
        assert received and received[0].track_id == "mug-7" and len(received[0].embedding) == 512
        node.destroy_node()
    finally:
        rclpy.try_shutdown()
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    assert server.returncode == 0, server.stderr.read()
