"""The node's inputs at the QoS users run with (sensor data, best effort), over real DDS between processes:
a tracker's burst of views (one message per object of a frame) loses none, and large frames get through
(ddclip's Fast DDS profile: a shared-memory segment large enough for them)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed: scripts/setup.sh installs ROS 2 from PyPI")
from ddclip.msg import ObjectView  # noqa: E402
from ddclip.srv import Query  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import UInt32  # noqa: E402

from ddclip_ros.dds_profile import PROFILE  # noqa: E402
from ddclip_ros.image_conversion import rgb_to_image  # noqa: E402
from ddclip_ros.spin import spin_until  # noqa: E402
from tests.conftest import random_views  # noqa: E402
from tests.ros_node import launch, node_params, ready_line, ros_env, stop_cleanly  # noqa: E402


def test_a_burst_of_views_at_sensor_data_qos_loses_none(tmp_path):
    env = ros_env(tmp_path)
    params = {**node_params(tmp_path), "min_views": "1", "reliable_queue_mb": "64"}  # the old name: reported
    del params["reliable"]  # the default: sensor data (best effort)
    process = launch(params, env)
    tracks = [f"object-{i}" for i in range(30)]
    rclpy.init()
    try:
        node = rclpy.create_node("ddclip_test_tracker")
        views = node.create_publisher(ObjectView, "ddclip/views", qos_profile_sensor_data)  # as a tracker's
        query = node.create_client(Query, "ddclip/query")
        assert query.wait_for_service(timeout_sec=120), "the node did not start"
        assert spin_until(node, lambda: views.get_subscription_count() > 0, 30)
        for track, pixels in zip(tracks, random_views(len(tracks), size=96, seed=7), strict=True):
            message = ObjectView(track_id=track, track_ended=True)  # one frame's objects, all at once
            message.image = rgb_to_image(pixels)
            views.publish(message)

        seen: set[str] = set()
        deadline = time.monotonic() + 120
        while seen != set(tracks) and time.monotonic() < deadline:
            future = query.call_async(Query.Request(text="an object", k=100, sources=Query.Request.SOURCE_SEEN))
            assert spin_until(node, future.done, 30)
            seen = {result.track_id for result in future.result().results}
        # With sensor data's depth of 5 the node kept 6 of the 30: the rest were overwritten unread.
        assert seen == set(tracks), f"{len(tracks) - len(seen)} of {len(tracks)} views lost"
        node.destroy_node()
    finally:
        rclpy.try_shutdown()
        output = stop_cleanly(process)
    ready = ready_line(output)
    assert "best effort, depth 1000 for views" in ready, ready
    assert "reliable_queue_mb is not used: it is input_queue_mb now" in output
    assert f"Fast DDS profile {PROFILE}" in ready, ready
    assert "XMLParser" not in output and "XMLProfileManager" not in output, output  # the profile parses


COUNTER = """
import sys, rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import UInt32
rclpy.init()
node = rclpy.create_node("ddclip_test_frame_counter")
count = node.create_publisher(UInt32, "frames_received", 10)
received = [0]
def on_frame(message):
    received[0] += 1
node.create_subscription(Image, "camera/image", on_frame, qos_profile_sensor_data)
node.create_timer(0.1, lambda: count.publish(UInt32(data=received[0])))
try:
    rclpy.spin(node)
except BaseException:
    pass
"""


def test_large_frames_get_through_at_sensor_data_qos(tmp_path):
    """Without the profile (Fast DDS's 512 KiB segment) 3 of these 10 frames arrived; every one with it."""
    env = ros_env(tmp_path)
    counter = subprocess.Popen([sys.executable, "-c", COUNTER], env=env, stderr=subprocess.PIPE, text=True)
    rclpy.init()
    try:
        node = rclpy.create_node("ddclip_test_camera")
        frames = node.create_publisher(Image, "camera/image", qos_profile_sensor_data)
        received = [0]
        node.create_subscription(UInt32, "frames_received", lambda m: received.__setitem__(0, m.data), 10)
        ready = lambda: frames.get_subscription_count() > 0 and node.count_publishers("frames_received") > 0  # noqa: E731
        assert spin_until(node, ready, 60)
        small = rgb_to_image(random_views(1, size=8, seed=3)[0])
        for _ in range(100):  # until the counter has matched this publisher too (best effort drops before)
            frames.publish(small)
            if spin_until(node, lambda: received[0] > 0, 0.2):
                break
        assert spin_until(node, lambda: received[0] > 0, 10), "the counter did not start"
        spin_until(node, lambda: False, 0.3)  # its count of the small frames has settled
        before = received[0]
        frame = rgb_to_image(random_views(1, size=1400, seed=3)[0])  # 2 megapixels, 5.9 MB
        for _ in range(10):
            frames.publish(frame)
            spin_until(node, lambda: False, 0.1)  # a camera at 10 Hz
        arrived = lambda: received[0] - before  # noqa: E731
        assert spin_until(node, lambda: arrived() == 10, 10), f"{arrived()} of 10 frames arrived"
        node.destroy_node()
    finally:
        rclpy.try_shutdown()
        counter.terminate()
        _, errors = counter.communicate(timeout=30)
    assert "XMLParser" not in errors and "XMLProfileManager" not in errors, errors
