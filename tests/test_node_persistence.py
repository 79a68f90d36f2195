"""Names given through ddclip/enroll survive a restart of the node (with memory_path set)."""

from __future__ import annotations

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed: scripts/setup.sh installs ROS 2 from PyPI")
from ddclip.msg import ObjectMatches, ObjectView  # noqa: E402
from ddclip.srv import Enroll, Forget, Query  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402

from ddclip_core.enrolled import EnrolledObjects  # noqa: E402
from ddclip_ros.image_conversion import rgb_to_image  # noqa: E402
from ddclip_ros.node_process import stop_node  # noqa: E402
from ddclip_ros.spin import spin_until  # noqa: E402
from tests.conftest import random_views  # noqa: E402
from tests.ros_node import launch, node_params, ros_env  # noqa: E402

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
VIEWS = random_views(3, size=128, seed=77)


class Session:
    """One run of the node and a client of it, in this process."""

    def __init__(self, params: dict[str, str], env: dict[str, str], name: str) -> None:
        self.process = launch(params, env)
        rclpy.init()
        self.node = rclpy.create_node(name)
        self.matches: list[ObjectMatches] = []
        self.node.create_subscription(ObjectMatches, "ddclip/matches", self.matches.append, 50)
        self.views = self.node.create_publisher(ObjectView, "ddclip/views", RELIABLE)
        self.clients = {
            srv: self.node.create_client(srv, f"ddclip/{srv.__name__.lower()}") for srv in (Query, Enroll, Forget)
        }
        assert self.clients[Enroll].wait_for_service(timeout_sec=120), "the node did not start"
        assert spin_until(self.node, lambda: self.views.get_subscription_count() > 0, 30)

    def call(self, srv: type, request: object) -> object:
        future = self.clients[srv].call_async(request)
        assert spin_until(self.node, future.done, 60)
        return future.result()

    def show(self, track: str) -> ObjectMatches:
        """Publish the views as ``track`` and wait for its matches with all of them."""
        for i, pixels in enumerate(VIEWS):
            message = ObjectView(track_id=track, track_ended=i == len(VIEWS) - 1)
            message.image = rgb_to_image(pixels)
            self.views.publish(message)
        done = lambda: any(m.track_id == track and m.num_views == len(VIEWS) for m in self.matches)  # noqa: E731
        assert spin_until(self.node, done, 60)
        return [m for m in self.matches if m.track_id == track][-1]

    def close(self) -> str:
        self.node.destroy_node()
        rclpy.try_shutdown()
        output = stop_node(self.process)
        assert self.process.returncode == 0 and "Traceback" not in output, output
        return output


def test_enrolled_names_survive_a_restart(tmp_path):
    params, env = node_params(tmp_path), ros_env(tmp_path)
    first = Session(params, env, "ddclip_persist_first")
    try:
        first.show("mug-7")
        reply = first.call(Enroll, Enroll.Request(name="Ana's mug", category="mug", track_id="mug-7"))
        assert reply.success and reply.id == "enrolled:Ana's mug", reply.message
    finally:
        first.close()

    second = Session(params, env, "ddclip_persist_second")
    try:
        answer = second.call(Query, Query.Request(text="Ana's mug", k=10, sources=Query.Request.SOURCE_BOTH))
        assert answer.success, answer.message
        named = {(r.source, r.id or r.track_id, r.name) for r in answer.results}
        assert ("bank", "enrolled:Ana's mug", "Ana's mug") in named  # recognisable by name
        assert ("seen", "mug-7", "Ana's mug") in named  # and the seen object kept its name
        again = second.show("new-track-3")  # the same object under a new track id is recognised
        assert again.bank_matches[0].id == "enrolled:Ana's mug" and again.bank_matches[0].score > 0.999
        reply = second.call(Forget, Forget.Request(enrolled_ids=["enrolled:Ana's mug"]))
        assert reply.success and reply.forgotten == 1
    finally:
        output = second.close()
    assert "1 enrolled object(s) from" in output
    assert len(EnrolledObjects(32, None, params["memory_path"])) == 0  # forgetting is persisted too
