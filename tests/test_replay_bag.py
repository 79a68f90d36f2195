"""ddclip-replay from rosbag2 / MCAP bags written with rosbags: read back, and replayed into the node."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed: scripts/setup.sh installs ROS 2 from PyPI")
pytest.importorskip("rosbags", reason="rosbags not installed")
from ddclip.msg import ObjectView, ShapeEmbedding  # noqa: E402
from rclpy.serialization import deserialize_message  # noqa: E402
from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: E402

from ddclip_ros.bag import is_bag, read_bag, typestore  # noqa: E402
from ddclip_ros.node_process import stop_node  # noqa: E402
from ddclip_ros.spin import spin_until  # noqa: E402
from tests.conftest import random_views  # noqa: E402
from tests.ros_node import launch, node_params, ros_env  # noqa: E402


def rosbags_view(store, track: str, pixels: np.ndarray, stamp_ns: int, ended: bool) -> object:
    """An ObjectView built from the typestore's own classes (so rosbags serialises it, not rclpy)."""
    t = store.types
    header = t["std_msgs/msg/Header"](
        stamp=t["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id="camera"
    )
    height, width = pixels.shape[:2]
    image = t["sensor_msgs/msg/Image"](
        header=header, height=height, width=width, encoding="rgb8", is_bigendian=0, step=width * 3, data=pixels.ravel()
    )
    empty = t["sensor_msgs/msg/Image"](
        header=header, height=0, width=0, encoding="", is_bigendian=0, step=0, data=np.zeros(0, np.uint8)
    )
    pose = t["geometry_msgs/msg/PoseStamped"](
        header=t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id=""),
        pose=t["geometry_msgs/msg/Pose"](
            position=t["geometry_msgs/msg/Point"](x=0.0, y=0.0, z=0.0),
            orientation=t["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
        ),
    )
    view = t["ddclip/msg/ObjectView"]
    return view(header=header, track_id=track, image=image, mask=empty, pose=pose, track_ended=ended)


def write_bag(
    path: Path, topic: str, tracks: dict[str, int], seed: int, storage: StoragePlugin = StoragePlugin.MCAP
) -> Path:
    """A rosbag2 folder: the views of ``tracks`` (name -> view count) interleaved 10 ms apart,
    plus a std_msgs/String topic that replay must skip."""
    store = typestore()
    with Writer(path, version=9, storage_plugin=storage) as writer:
        views = writer.add_connection(topic, "ddclip/msg/ObjectView", typestore=store)
        chatter = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=store)
        stamp = 1_700_000_000 * 10**9
        pixels = {name: random_views(count, size=96, seed=seed + i) for i, (name, count) in enumerate(tracks.items())}
        for index in range(max(tracks.values())):
            for name, count in tracks.items():
                if index < count:
                    stamp += 10_000_000
                    message = rosbags_view(store, name, pixels[name][index], stamp, ended=index == count - 1)
                    writer.write(views, stamp, store.serialize_cdr(message, "ddclip/msg/ObjectView"))
        text = store.types["std_msgs/msg/String"](data="not for the node")
        writer.write(chatter, stamp, store.serialize_cdr(text, "std_msgs/msg/String"))
    return path


def test_bag_folders_and_bare_mcap_read_back_in_order(tmp_path):
    bag = write_bag(tmp_path / "bag", "/tracker/views", {"a": 2, "b": 3}, seed=1)
    sqlite = write_bag(tmp_path / "sqlite", "/tracker/views", {"a": 2, "b": 3}, seed=1, storage=StoragePlugin.SQLITE3)
    for source in (bag, next(bag.glob("*.mcap")), sqlite):
        assert is_bag(source)
        topics, messages = read_bag(source)
        assert ("/tracker/views", "ddclip/msg/ObjectView") in topics and ("/chatter", "std_msgs/msg/String") in topics
        records = list(messages)
        assert {topic for topic, _, _ in records} == {"/tracker/views"}  # only what the node reads
        stamps = [stamp for _, stamp, _ in records]
        assert stamps == sorted(stamps) and len(stamps) == 5
        # rosbags' serialisation of the registered .msg types is what rclpy reads
        views = [deserialize_message(data, ObjectView) for _, _, data in records]
        assert [v.track_id for v in views] == ["a", "b", "a", "b", "b"]
        assert [v.track_ended for v in views] == [False, False, True, False, True]
        assert (views[0].image.width, views[0].image.encoding, len(views[0].image.data)) == (96, "rgb8", 96 * 96 * 3)
    assert not is_bag(tmp_path)  # a folder of object views is not a bag


def test_replay_of_a_bag_into_the_node_gives_embeddings_per_track(tmp_path):
    env = ros_env(tmp_path)
    process = launch(node_params(tmp_path), env)
    recorded = write_bag(tmp_path / "recorded", "/tracker/views", {"mug": 3, "ball": 4}, seed=10)
    fast = next(write_bag(tmp_path / "fast", "/ddclip/views", {"duck": 2, "bear": 3, "car": 2}, seed=20).glob("*.mcap"))
    rclpy.init()
    try:
        client = rclpy.create_node("ddclip_bag_client")
        embeddings: list[ShapeEmbedding] = []
        client.create_subscription(ShapeEmbedding, "ddclip/embeddings", embeddings.append, 50)
        started = lambda: client.count_publishers("ddclip/embeddings") > 0 or process.poll() is not None  # noqa: E731
        assert spin_until(client, started, 120) and process.poll() is None, "the node did not start"
        replays = [  # a bag folder at its recorded pace, remapped; a bare .mcap file as fast as possible
            [str(recorded), "--remap", "/tracker/views:=/ddclip/views"],
            [str(fast), "--rate", "0"],
        ]
        for arguments in replays:
            result = subprocess.run(
                [sys.executable, "-m", "ddclip_ros.replay", *arguments],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert result.returncode == 0, result.stdout + result.stderr
            assert "skipping /chatter (std_msgs/msg/String)" in result.stdout
            assert "published 7 on /ddclip/views" in result.stdout  # each bag has 7 views
        expected = {("mug", 3), ("ball", 4), ("duck", 2), ("bear", 3), ("car", 2)}
        done = lambda: expected <= {(e.track_id, e.num_views) for e in embeddings}  # noqa: E731
        assert spin_until(client, done, 60), sorted({(e.track_id, e.num_views) for e in embeddings})
        mug = next(e for e in embeddings if e.track_id == "mug" and e.num_views == 3)
        assert mug.header.frame_id == "camera" and mug.header.stamp.sec == 1_700_000_000  # the recorded stamp
        client.destroy_node()
    finally:
        rclpy.try_shutdown()
        output = stop_node(process)
    assert process.returncode == 0, output
