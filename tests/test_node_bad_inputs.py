"""The node under bad input, over real DDS: images over max_pixels, a flood faster than the model,
and shutdown by signal in the middle of work. It logs, counts, drops, and keeps serving."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed: scripts/setup.sh installs ROS 2 from PyPI")
from ddclip.msg import ObjectView, ShapeEmbedding  # noqa: E402
from ddclip.srv import Query  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from PIL import Image as PILImage  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from ddclip_ros.image_conversion import rgb_to_image  # noqa: E402
from ddclip_ros.node_process import stop_node  # noqa: E402
from ddclip_ros.spin import spin_until  # noqa: E402
from tests.conftest import random_views  # noqa: E402
from tests.ros_node import launch, node_params, ros_env  # noqa: E402

RELIABLE = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)


class Client:
    """A test process's side: publishers, received embeddings and the latest diagnostics values."""

    def __init__(self, name: str, process) -> None:
        self.node = rclpy.create_node(name)
        self.embeddings: list[ShapeEmbedding] = []
        self.diagnostics: dict[str, str] = {}
        self.level, self.message = DiagnosticStatus.OK, ""
        self.warnings: list[str] = []  # every WARN message received
        self.node.create_subscription(ShapeEmbedding, "ddclip/embeddings", self.embeddings.append, RELIABLE)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.views = self.node.create_publisher(ObjectView, "ddclip/views", RELIABLE)
        self.query = self.node.create_client(Query, "ddclip/query")
        started = self.query.wait_for_service(timeout_sec=120)
        assert started and process.poll() is None, "the node did not start"
        assert spin_until(self.node, lambda: self.views.get_subscription_count() > 0, 30)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == "/ddclip: encoder":  # the node's full name
                self.diagnostics = {kv.key: kv.value for kv in status.values}
                self.level, self.message = status.level, status.message
                if status.level == DiagnosticStatus.WARN:
                    self.warnings.append(status.message)

    def counter(self, key: str) -> int:
        return int(float(self.diagnostics.get(key, "0")))

    def send_view(self, track: str, pixels: np.ndarray, ended: bool = False) -> None:
        message = ObjectView(track_id=track, track_ended=ended)
        message.image = rgb_to_image(pixels)
        self.views.publish(message)

    def ask(self, text: str) -> Query.Response:
        future = self.query.call_async(Query.Request(text=text, k=3))
        assert spin_until(self.node, future.done, 60)
        return future.result()


def test_images_over_max_pixels_are_refused_counted_and_the_node_keeps_serving(tmp_path):
    params = {**node_params(tmp_path), "max_pixels": "100000", "max_view_pixels": "100000"}
    params["image_transport"] = "compressed"
    process = launch(params, ros_env(tmp_path))
    rclpy.init()
    try:
        client = Client("ddclip_huge_client", process)
        frames = client.node.create_publisher(Image, "image", RELIABLE)
        compressed = client.node.create_publisher(CompressedImage, "image/compressed", RELIABLE)
        assert spin_until(client.node, lambda: compressed.get_subscription_count() > 0, 30)
        assert frames.get_subscription_count() == 0  # one transport: raw frames are not decoded as well
        huge = np.zeros((400, 400, 3), np.uint8)  # 160,000 pixels > 100,000
        client.send_view("huge", huge, ended=True)
        png = io.BytesIO()
        PILImage.fromarray(huge).save(png, format="PNG")
        compressed.publish(CompressedImage(format="png", data=png.getvalue()))
        for i, view in enumerate(random_views(2, size=300, seed=9)):  # 90,000 pixels: fine
            client.send_view("normal", view, ended=i == 1)
        assert spin_until(client.node, lambda: any(e.track_id == "normal" for e in client.embeddings), 60)
        assert spin_until(client.node, lambda: client.counter("images over max_pixels") == 2, 30), client.diagnostics
        assert client.counter("bad input messages dropped") == 2
        assert client.level == DiagnosticStatus.WARN and "bad input messages dropped (2 so far" in client.message
        assert "huge" not in {e.track_id for e in client.embeddings}
        answer = client.ask("a red mug")
        assert answer.success and [r.track_id for r in answer.results] == ["normal"]
        client.node.destroy_node()
    finally:
        rclpy.try_shutdown()
        process.send_signal(signal.SIGTERM)  # what a process manager sends; as clean as SIGINT
        output = stop_node(process)
    assert process.returncode == 0 and "Traceback" not in output, output
    assert "dropped a view of track 'huge': image of 400x400 exceeds 100000 pixels" in output
    assert "dropped a frame: image of 400x400 exceeds 100000 pixels" in output  # the compressed one, undecoded


def test_a_flood_faster_than_the_model_is_dropped_counted_and_queries_still_answered(tmp_path):
    # One job queued at most and one track per forward pass: the encoder cannot keep up with a burst.
    # The encoder on a thread of its own, so that shutdown path is tested too (the other test has the default).
    params = {**node_params(tmp_path), "min_views": "1", "queue_size": "1", "max_batch": "1"}
    params["main_thread_encoder"] = "false"
    process = launch(params, ros_env(tmp_path))
    tracks = 300
    rclpy.init()
    try:
        client = Client("ddclip_flood_client", process)
        pool = random_views(16, size=64, seed=3)
        for n in range(tracks):  # every track is due at its first view, so each view is one encode job
            client.send_view(f"flood-{n}", pool[n % len(pool)])

        def accounted() -> bool:  # every job either went through the encoder or was counted as dropped
            d = client.counter
            done = d("tracks encoded") + d("encode jobs dropped (queue full)") == tracks
            return done and client.diagnostics["encode jobs queued"] == "0"

        assert spin_until(client.node, accounted, 120), client.diagnostics
        dropped, encoded = client.counter("encode jobs dropped (queue full)"), client.counter("tracks encoded")
        assert dropped == tracks - encoded
        assert spin_until(client.node, lambda: len(client.embeddings) == encoded, 30)
        assert dropped > 0 and any("encode jobs dropped (queue full)" in w for w in client.warnings)
        assert encoded >= 1  # the newest job is never dropped: nothing comes after it
        answer = client.ask("a red mug")  # the node still answers after the flood
        assert answer.success and len(answer.results) == min(3, encoded)
        for n in range(100):  # a second burst, and the signal comes while the encoder has work
            client.send_view(f"late-{n}", pool[n % len(pool)])
        client.node.destroy_node()
    finally:
        rclpy.try_shutdown()
        output = stop_node(process)  # SIGINT
    assert process.returncode == 0 and "Traceback" not in output, output
    from ddclip_core.memory import ObjectMemory

    # Everything the encoder delivered before the signal is in the memory (written through, no save needed).
    assert len(ObjectMemory(32, path=tmp_path / "memory", read_only=True)) >= encoded


def test_a_node_whose_starter_is_killed_stops(tmp_path):
    """A demo or test killed by a timeout must not leave its node running (start_node asks for SIGTERM)."""
    env = ros_env(tmp_path)
    weights = node_params(tmp_path)["weights"]
    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "from ddclip_ros.node_process import start_node\n"
            f"node = start_node({{'weights': {weights!r}, 'device': 'cpu'}}, stdout=subprocess.DEVNULL)\n"
            "print(node.pid, flush=True)\n"
            "time.sleep(600)\n",
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    node_pid = int(starter.stdout.readline())
    starter.kill()  # SIGKILL: no chance to stop the node itself
    starter.wait()

    def gone() -> bool:
        try:
            state = Path(f"/proc/{node_pid}/stat").read_text().split(")")[1].split()[0]
        except FileNotFoundError:
            return True
        return state == "Z"

    deadline = time.monotonic() + 120
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gone(), "the node outlived the process that started it"
