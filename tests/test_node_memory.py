"""The node's object memory over real DDS: sim time from /clock, queries by time, place (two frames),
images and track, markers for rviz, bad queries refused, a second node on the same memory refused,
and SIGKILL right after a subscriber heard the matches: after a restart every object is still there."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed: scripts/setup.sh installs ROS 2 from PyPI")
from builtin_interfaces.msg import Time  # noqa: E402
from ddclip.msg import ObjectMatches, ObjectView  # noqa: E402
from ddclip.srv import Forget, Query  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from ddclip_core.memory import ObjectMemory  # noqa: E402
from ddclip_ros.image_conversion import rgb_to_image  # noqa: E402
from ddclip_ros.node_process import stop_node  # noqa: E402
from ddclip_ros.spin import spin_until  # noqa: E402
from tests.conftest import random_views  # noqa: E402
from tests.ros_node import launch, node_params, ros_env  # noqa: E402

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
TRACKS = {  # track: (seed, stamp second of its views, pose frame, x)
    "cup": (1, 1000, "map", 0.3),
    "chair": (2, 1050, "map", 6.0),
    "ball": (3, 1090, "odom", 0.1),
}


class Client:
    def __init__(self, name: str, process) -> None:
        self.node = rclpy.create_node(name)
        self.matches: list[ObjectMatches] = []
        self.markers: list[MarkerArray] = []
        self.node.create_subscription(ObjectMatches, "ddclip/matches", self.matches.append, 50)
        self.node.create_subscription(MarkerArray, "ddclip/objects", self.markers.append, LATCHED)
        self.views = self.node.create_publisher(ObjectView, "ddclip/views", RELIABLE)
        self.clock = self.node.create_publisher(Clock, "/clock", 10)
        self.query = self.node.create_client(Query, "ddclip/query")
        self.forget = self.node.create_client(Forget, "ddclip/forget")
        assert self.query.wait_for_service(timeout_sec=120), process.stdout.read() if process.poll() else "no node"
        assert spin_until(self.node, lambda: self.views.get_subscription_count() > 0, 30)

    def tick(self, sec: int) -> None:
        """Sim time: what `ros2 bag play --clock` publishes."""
        for _ in range(3):
            self.clock.publish(Clock(clock=Time(sec=sec)))
            spin_until(self.node, lambda: False, 0.1)

    def call(self, client, request):
        future = client.call_async(request)
        assert spin_until(self.node, future.done, 60)
        return future.result()

    def ask(self, **fields) -> Query.Response:
        return self.call(self.query, Query.Request(**{"text": "a cup", "k": 10, **fields}))


def show(client: Client, track: str, seed: int, sec: int, frame: str, x: float) -> None:
    for i, pixels in enumerate(random_views(3, size=96, seed=seed)):
        message = ObjectView(track_id=track, track_ended=i == 2, image=rgb_to_image(pixels))
        message.header.stamp, message.header.frame_id = Time(sec=sec, nanosec=i), "camera"
        message.pose.header.frame_id, message.pose.header.stamp = frame, Time(sec=sec)
        message.pose.pose.position.x = x
        client.views.publish(message)


def test_memory_queries_markers_and_a_sigkill(tmp_path):
    env = ros_env(tmp_path)
    params = {**node_params(tmp_path), "use_sim_time": "true", "min_views": "3"}
    process = launch(params, env)
    rclpy.init()
    try:
        client = Client("ddclip_memory_client", process)
        client.tick(1100)
        for track, spec in TRACKS.items():
            show(client, track, *spec)
        heard = lambda: {m.track_id for m in client.matches} == set(TRACKS)  # noqa: E731
        assert spin_until(client.node, heard, 60)

        # Time: within the last 60 s of sim time (1100), i.e. after 1040.
        answer = client.ask(within_last_s=60.0)
        assert answer.success and {r.track_id for r in answer.results} == {"chair", "ball"}, answer.message
        answer = client.ask(seen_before=Time(sec=1020))
        assert [r.track_id for r in answer.results] == ["cup"] and answer.results[0].sightings == 1
        # Place, across two frames: odom is left out and counted, not transformed.
        request = Query.Request(text="a cup", k=10, radius=1.0)
        request.near.header.frame_id = "map"
        answer = client.call(client.query, request)
        assert [r.track_id for r in answer.results] == ["cup"] and answer.left_out_other_frame == 1
        assert answer.results[0].pose.header.frame_id == "map" and answer.results[0].pose.header.stamp.sec == 1000
        # By example: images of the ball; and "what else looks like the chair?".
        images = [rgb_to_image(v) for v in random_views(3, size=96, seed=3)]
        assert client.ask(text="", images=images).results[0].track_id == "ball"
        assert "chair" not in {r.track_id for r in client.ask(text="", like_track_id="chair").results}
        # Bad queries: refused with the reason, and the node keeps serving.
        request.near.header.frame_id = "base_link"
        assert "unknown frame 'base_link'" in client.call(client.query, request).message
        request.near.header.frame_id, request.radius = "map", -2.0
        assert "radius must be a positive number" in client.call(client.query, request).message
        refused = [
            client.ask(seen_after=Time(sec=2000), seen_before=Time(sec=1000)),
            client.ask(k=1_000_000),
            client.ask(text="", images=[_not_an_image()]),
        ]
        assert [r.success for r in refused] == [False, False, False], [r.message for r in refused]
        assert "later than seen_before" in refused[0].message and "k must be in" in refused[1].message
        assert "image 0:" in refused[2].message
        assert client.ask().success

        # Markers: one per posed object, in its frame, with its name; forgotten ones go.
        def markers() -> dict[int, Marker]:
            latest = client.markers[-1].markers if client.markers else []
            return {m.id: m for m in latest if m.action == Marker.ADD}

        assert spin_until(client.node, lambda: len(markers()) == 3, 30)
        assert {(m.header.frame_id, round(m.pose.position.x, 3)) for m in markers().values()} == {
            ("map", 0.3), ("map", 6.0), ("odom", 0.1)
        }  # fmt: skip
        assert client.call(client.forget, Forget.Request(track_ids=["chair"])).forgotten == 1
        assert spin_until(client.node, lambda: len(markers()) == 2, 30)
        assert client.markers[-1].markers[0].action == Marker.DELETEALL  # so rviz drops what was forgotten

        # A second node on the same memory is refused (one writer at a time).
        second = launch({**params, "allow_random_weights": "false"}, env)
        output, _ = second.communicate(timeout=120)
        assert second.returncode == 1 and "in use by another running node" in output, output
        client.node.destroy_node()
    finally:
        rclpy.try_shutdown()
    # SIGKILL: no shutdown, no save. Everything a subscriber heard about must be in the database.
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    memory = ObjectMemory(32, path=tmp_path / "memory", read_only=True)
    assert {o.track_id for o in memory.objects()} == {"cup", "ball"}
    assert [s["pose"].frame_id for s in memory.sightings("ball")] == ["odom"]
    memory.close()
    restarted = launch(params, env)
    rclpy.init()
    try:
        client = Client("ddclip_memory_again", restarted)
        client.tick(1100)
        answer = client.ask()
        assert {r.track_id for r in answer.results} == {"cup", "ball"}
        assert spin_until(client.node, lambda: client.markers and len(client.markers[-1].markers) == 3, 30)
        client.node.destroy_node()
    finally:
        rclpy.try_shutdown()
        output = stop_node(restarted)
    assert restarted.returncode == 0 and "Traceback" not in output, output
    for leftover in os.listdir("/dev/shm"):  # SIGKILL leaves Fast DDS shared memory of the killed node
        if leftover.startswith("fastdds") and str(process.pid) in leftover:
            os.unlink(os.path.join("/dev/shm", leftover))


def _not_an_image():
    from sensor_msgs.msg import Image

    return Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(5))  # 5 bytes for 12


def test_markers_module_without_dds():
    from ddclip_core.memory import SeenObject
    from ddclip_core.stamped import Pose, Stamp
    from ddclip_ros.markers import memory_markers

    seen = [
        SeenObject(
            "a", Stamp(1), Stamp(2), 3, pose=Pose("map", Stamp(2), (1.0, 2.0, 3.0)), names=[("mug", 0.3)], marker_id=7
        ),
        SeenObject("b", Stamp(1), Stamp(2), 3, name="Ana's cup", marker_id=8),  # no pose: no marker
    ]
    array = memory_markers(seen)
    assert [m.action for m in array.markers] == [Marker.DELETEALL, Marker.ADD]
    (marker,) = array.markers[1:]
    assert (marker.id, marker.header.frame_id, marker.text, marker.pose.position.z) == (7, "map", "mug 0.30", 3.0)
    assert np.isclose(marker.scale.z, 0.08)
