"""The optional ddclip/annotated topic: frames with boxes, track ids and best matches drawn on."""

from __future__ import annotations

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed: scripts/setup.sh installs ROS 2 from PyPI")
from ddclip.msg import ObjectMatches, TrackedBox, TrackedDetections  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from ddclip_core.perception.frames import Box  # noqa: E402
from ddclip_ros.annotate import best_match, draw_detections, track_colour  # noqa: E402
from ddclip_ros.image_conversion import image_to_rgb, rgb_to_image  # noqa: E402
from ddclip_ros.node_process import stop_node  # noqa: E402
from ddclip_ros.spin import spin_until  # noqa: E402
from tests.conftest import random_views  # noqa: E402
from tests.ros_node import launch, node_params, ros_env  # noqa: E402

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
BOXES = [Box("left", 10.0, 40.0, 150.0, 300.0), Box("right", 170.0, 20.0, 310.0, 310.0)]


def test_boxes_outlined_in_track_colour_and_captioned_off_the_original():
    frame = np.full((320, 320, 3), 128, np.uint8)
    frame.flags.writeable = False  # frames can be read-only message memory
    plain = draw_detections(frame, BOXES, {})
    named = draw_detections(frame, BOXES, {"left": ("mug", 0.87)})
    assert (frame == 128).all()
    assert tuple(plain[200, 10]) == track_colour("left") and tuple(plain[200, 310]) == track_colour("right")
    assert (plain[200, 60] == 128).all() and (plain[315, 5] == 128).all()  # inside a box, outside all boxes
    assert (plain[:40, :150] != 128).any()  # the caption sits above the box
    assert (named[:40, :150] != plain[:40, :150]).any()  # ... and says more once the name is known
    assert (named[:, 160:] == plain[:, 160:]).all()


def test_annotated_frames_show_boxes_ids_and_best_matches(tmp_path):
    process = launch({**node_params(tmp_path), "annotate": "true"}, ros_env(tmp_path))
    rclpy.init()
    try:
        client = rclpy.create_node("ddclip_annotated_client")
        annotated: list[Image] = []
        matches: list[ObjectMatches] = []
        client.create_subscription(Image, "ddclip/annotated", annotated.append, RELIABLE)
        client.create_subscription(ObjectMatches, "ddclip/matches", matches.append, 50)
        frames = client.create_publisher(Image, "image", RELIABLE)
        detections = client.create_publisher(TrackedDetections, "ddclip/detections", RELIABLE)
        ready = lambda: frames.get_subscription_count() > 0 and detections.get_subscription_count() > 0  # noqa: E731
        assert spin_until(client, ready, 120), "the node never subscribed"
        assert spin_until(client, lambda: client.count_publishers("ddclip/annotated") > 0, 30)
        pixels = random_views(3, size=320, seed=11)

        def send(index: int) -> None:
            frame = rgb_to_image(pixels[index])
            frame.header.stamp.sec, frame.header.frame_id = 200 + index, "camera"
            boxes = TrackedDetections(header=frame.header)
            boxes.boxes = [
                TrackedBox(track_id=b.track_id, x_min=b.x_min, y_min=b.y_min, x_max=b.x_max, y_max=b.y_max)
                for b in BOXES
            ]
            frames.publish(frame)
            detections.publish(boxes)

        send(0)
        send(1)  # min_views 2: both tracks are encoded now
        encoded = lambda: {(m.track_id, m.num_views) for m in matches} >= {("left", 2), ("right", 2)}  # noqa: E731
        assert spin_until(client, encoded, 60), [(m.track_id, m.num_views) for m in matches]
        assert spin_until(client, lambda: len(annotated) == 2, 30)
        best = {m.track_id: best_match(m) for m in matches}  # the latest per track
        send(2)
        assert spin_until(client, lambda: len(annotated) == 3, 30)
        for index, message in enumerate(annotated):
            assert (message.header.stamp.sec, message.header.frame_id) == (200 + index, "camera")
            drawn = image_to_rgb(message)
            assert drawn.shape == (320, 320, 3)
            assert tuple(drawn[200, 10]) == track_colour("left") and tuple(drawn[200, 310]) == track_colour("right")
        assert all(best.values()) and best["left"][0] in {"mug", "couch", "duck", "red mug", "white couch"}
        np.testing.assert_array_equal(image_to_rgb(annotated[2]), draw_detections(pixels[2], BOXES, best))
        client.destroy_node()
    finally:
        rclpy.try_shutdown()
        output = stop_node(process)
    assert process.returncode == 0, output
