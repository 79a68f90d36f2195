"""The ddclip node as a separate process, over real DDS: views in, embeddings/matches/answers out."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed: scripts/setup.sh installs ROS 2 from PyPI")
from ddclip.msg import ObjectMatches, ObjectView, ShapeEmbedding, TrackedBox, TrackedDetections  # noqa: E402
from ddclip.srv import Enroll, Forget, Query  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from ddclip_core import save_export  # noqa: E402
from ddclip_ros.image_conversion import rgb_to_image  # noqa: E402
from ddclip_ros.node_process import stop_node  # noqa: E402
from ddclip_ros.spin import spin_until  # noqa: E402
from tests.conftest import make_tiny, random_views  # noqa: E402
from tests.ros_node import launch, node_params, ros_env  # noqa: E402

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture
def node_process(tmp_path):
    process = launch(node_params(tmp_path), ros_env(tmp_path))
    yield process, tmp_path
    stop_node(process)


def view_message(track_id: str, pixels: np.ndarray, ended: bool = False) -> ObjectView:
    message = ObjectView(track_id=track_id, track_ended=ended)
    message.header.frame_id = "camera"
    message.image = rgb_to_image(pixels)
    return message


def test_views_in_embeddings_and_matches_out_then_language_query(node_process):
    process, tmp_path = node_process
    rclpy.init()
    try:
        client_node = rclpy.create_node("ddclip_test_client")
        embeddings: list[ShapeEmbedding] = []
        matches: list[ObjectMatches] = []
        client_node.create_subscription(ShapeEmbedding, "ddclip/embeddings", embeddings.append, 10)
        client_node.create_subscription(ObjectMatches, "ddclip/matches", matches.append, 10)
        publisher = client_node.create_publisher(ObjectView, "ddclip/views", RELIABLE)
        query = client_node.create_client(Query, "ddclip/query")
        assert query.wait_for_service(timeout_sec=120), (
            process.stdout.read() if process.poll() is not None else "no service"
        )
        assert spin_until(client_node, lambda: publisher.get_subscription_count() > 0, 30)
        counts = {"mug-1": 2, "couch-2": 3, "duck-3": 5}
        for offset, (track, count) in enumerate(counts.items()):
            for i, view in enumerate(random_views(count, seed=100 * offset)):
                publisher.publish(view_message(track, view, ended=i == count - 1))
        bad = view_message("bad-4", random_views(1)[0])
        bad.image.encoding = "yuv422"
        publisher.publish(bad)
        empty = view_message("bad-5", random_views(1)[0])
        empty.image.width = empty.image.height = 0
        publisher.publish(empty)
        short = view_message("bad-6", random_views(1)[0])
        short.image.step = 100  # step smaller than a row
        publisher.publish(short)

        def done() -> bool:  # every track's final encode (all its views) has arrived, embedding and matches
            final = {(e.track_id, e.num_views) for e in embeddings} & {(m.track_id, m.num_views) for m in matches}
            return set(counts.items()) <= final

        assert spin_until(client_node, done, 60), f"got {[(e.track_id, e.num_views) for e in embeddings]}"
        latest = {e.track_id: e for e in embeddings if e.num_views == counts.get(e.track_id)}
        assert set(latest) == set(counts)
        assert all(len(e.embedding) == 32 and abs(np.linalg.norm(e.embedding) - 1) < 1e-4 for e in latest.values())
        match = next(m for m in matches if m.track_id == "duck-3" and m.num_views == 5)
        assert len(match.bank_matches) == 2 and {m.id for m in match.bank_matches} == {"red_mug", "white_couch"}
        assert [m.name for m in match.label_matches] and len(match.label_matches) == 3
        future = query.call_async(Query.Request(text="a red mug", k=5, sources=Query.Request.SOURCE_BOTH))
        assert spin_until(client_node, future.done, 30)
        response = future.result()
        assert response.success, response.message
        sources = [r.source for r in response.results]
        assert sources.count("seen") == 3 and sources.count("bank") == 2
        assert [r.score for r in response.results] == sorted((r.score for r in response.results), reverse=True)
        seen = {r.track_id: r for r in response.results if r.source == "seen"}
        assert seen["duck-3"].num_views == 5
        future = query.call_async(Query.Request(text="  "))
        assert spin_until(client_node, future.done, 30) and not future.result().success
        enroll = client_node.create_client(Enroll, "ddclip/enroll")
        future = enroll.call_async(Enroll.Request(name="Ana's mug", category="mug", track_id="duck-3"))
        assert spin_until(client_node, future.done, 60) and future.result().success, future.result().message
        assert future.result().id == "enrolled:Ana's mug"
        for i, view in enumerate(random_views(5, seed=200)):  # the same object again, under a new track id
            publisher.publish(view_message("again-9", view, ended=i == 4))
        recognised = lambda: any(m.track_id == "again-9" and m.num_views == 5 for m in matches)  # noqa: E731
        assert spin_until(client_node, recognised, 60)
        again = [m for m in matches if m.track_id == "again-9"][-1]
        assert again.bank_matches[0].id == "enrolled:Ana's mug" and again.bank_matches[0].score > 0.999
        assert again.confident
        future = enroll.call_async(Enroll.Request(name="ghost", track_id="no-such-track"))
        assert spin_until(client_node, future.done, 30) and not future.result().success
        assert "no views of track 'no-such-track'" in future.result().message
        forget = client_node.create_client(Forget, "ddclip/forget")
        future = forget.call_async(Forget.Request(track_ids=["mug-1"]))
        assert spin_until(client_node, future.done, 30) and future.result().forgotten == 1
        client_node.destroy_node()
    finally:
        rclpy.try_shutdown()
    output = stop_node(process)
    assert process.returncode == 0, output
    assert "dropped a view of track 'bad-4': unsupported image encoding 'yuv422'" in output
    assert "dropped a view of track 'bad-5': zero-size image" in output
    assert "dropped a view of track 'bad-6': step 100 is smaller than a row" in output
    assert (tmp_path / "memory" / "memory.db").is_file()  # the object memory outlives the node


def test_demo_runs_the_main_job_end_to_end(tmp_path):
    weights = save_export(make_tiny(seed=4), tmp_path / "weights")
    env = {**os.environ, "DDCLIP_CACHE": str(tmp_path / "cache"), "ROS_DOMAIN_ID": str(20 + os.getpid() % 80)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ddclip_ros.demo",
            "--weights",
            str(weights),
            "--device",
            "cpu",
            "--query",
            "a soccer ball",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "replayed 48 views of 4 objects" in result.stdout
    answer = result.stdout.split("objects matching 'a soccer ball':")[1].splitlines()
    assert sum(" seen " in line for line in answer) == 4  # every object
    kept = [int(line.split()[-2].split("/")[0]) for line in result.stdout.splitlines() if line.endswith(" views")]
    assert len(kept) == 4 and all(8 <= count <= 12 for count in kept)  # near-duplicate views are not kept
    assert "RANDOMLY INITIALISED" not in result.stdout


def test_full_frames_with_tracked_boxes(node_process):
    process, _ = node_process
    rclpy.init()
    try:
        client_node = rclpy.create_node("ddclip_frames_client")
        embeddings: list[ShapeEmbedding] = []
        client_node.create_subscription(ShapeEmbedding, "ddclip/embeddings", embeddings.append, 10)
        frames = client_node.create_publisher(Image, "image", RELIABLE)
        detections = client_node.create_publisher(TrackedDetections, "ddclip/detections", RELIABLE)
        ready = lambda: frames.get_subscription_count() > 0 and detections.get_subscription_count() > 0  # noqa: E731
        assert spin_until(client_node, ready, 120), "the node never subscribed"
        for index, pixels in enumerate(random_views(3, size=320, seed=7)):
            frame = rgb_to_image(pixels)
            frame.header.stamp.sec, frame.header.frame_id = 100 + index, "camera"
            boxes = TrackedDetections(header=frame.header, ended_tracks=["left", "right"] if index == 2 else [])
            boxes.boxes = [
                TrackedBox(track_id="left", x_min=10.0, y_min=10.0, x_max=150.0, y_max=300.0),
                TrackedBox(track_id="right", x_min=170.0, y_min=20.0, x_max=310.0, y_max=310.0),
                TrackedBox(track_id="sliver", x_min=315.0, y_min=0.0, x_max=400.0, y_max=50.0),
            ]
            if index % 2:  # detections may come before or after their frame
                detections.publish(boxes)
                frames.publish(frame)
            else:
                frames.publish(frame)
                detections.publish(boxes)
        done = lambda: {(e.track_id, e.num_views) for e in embeddings} >= {("left", 3), ("right", 3)}  # noqa: E731
        assert spin_until(client_node, done, 60), [(e.track_id, e.num_views) for e in embeddings]
        assert "sliver" not in {e.track_id for e in embeddings}
        client_node.destroy_node()
    finally:
        rclpy.try_shutdown()
    output = stop_node(process)
    assert process.returncode == 0, output
    assert "dropped a detection: box of track 'sliver' leaves 5x50 pixels" in output
