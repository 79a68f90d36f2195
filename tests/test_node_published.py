"""The real path end to end, on files in the PUBLISHED formats, made here: a Lightning checkpoint with real
ViT-B-32 shapes under the published name, a bank imported by `ddclip bank import-objaverse` from an h5 +
uid map in the released layout (named by LVIS annotations and Cap3D captions), and an MCAP bag replayed
by `ddclip-replay` into the node at its default sensor-data QoS (best effort). The node then enrols a seen
track (it died there before), answers over seen + bank, stops on SIGINT and comes back with its memory."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed: scripts/setup.sh installs ROS 2 from PyPI")
pytest.importorskip("rosbags", reason="rosbags not installed")
from ddclip.msg import ObjectMatches  # noqa: E402
from ddclip.srv import Enroll, Query  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: E402

from ddclip_core import load_model  # noqa: E402
from ddclip_ros.bag import typestore  # noqa: E402
from ddclip_ros.node_process import stop_node  # noqa: E402
from ddclip_ros.replay import load_tracks  # noqa: E402
from ddclip_ros.spin import spin_until  # noqa: E402
from tests.conftest import write_objaverse_release, write_published_checkpoint  # noqa: E402
from tests.ros_node import launch, ros_env  # noqa: E402

UIDS = {  # Objaverse uids are 32 hex digits
    "duck": "5f1c2a9d0b3e4f6a8c7d9e0f1a2b3c4d",
    "mug": "a0b1c2d3e4f5061728394a5b6c7d8e9f",
    "soccerball": "0fedcba9876543210fedcba987654321",
    "teddy": "c3d4e5f60718293a4b5c6d7e8f901a2b",
}
CAPTIONS = {"duck": "a yellow rubber duck", "mug": "a red mug", "soccerball": "a black and white soccer ball"}
START_NS = 1_700_000_000 * 10**9


@pytest.fixture(scope="module")
def published(tmp_path_factory, vit_b32) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("published")
    checkpoint = write_published_checkpoint(vit_b32, folder / "Four_1to6F_bs1600_LT6.ckpt")
    tracks = dict(load_tracks(str(resources.files("ddclip_core") / "assets"), num_views=12))
    maker = load_model(checkpoint, device="cpu")  # the released embeddings were made by the checkpoint
    vectors = maker.encode_views([tracks[name] for name in UIDS]).numpy()
    distractors = np.random.default_rng(0).normal(size=(60, vectors.shape[1])).astype(np.float32)
    uids = [*UIDS.values(), *(f"{i:032x}" for i in range(100, 160))]
    h5, uid_map = write_objaverse_release(folder / "release", np.concatenate([vectors, distractors]), uids)
    with gzip.open(folder / "lvis-annotations.json.gz", "wt") as handle:
        json.dump({"duck": [UIDS["duck"]], "mug": [UIDS["mug"]], "teddy_bear": [UIDS["teddy"]]}, handle)
    (folder / "cap3d.csv").write_text("".join(f"{UIDS[n]},{c}\n" for n, c in CAPTIONS.items()))
    imported = subprocess.run(
        [sys.executable, "-m", "ddclip_cli", "bank", "import-objaverse", str(h5), str(uid_map),
         "--names", str(folder / "lvis-annotations.json.gz"), "--captions", str(folder / "cap3d.csv"),
         "--out", str(folder / "bank")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    (folder / "labels.txt").write_text("rubber duck\nmug\nsoccer ball\nteddy bear\n")
    write_bag(folder / "bag", tracks)
    return {"checkpoint": checkpoint, "bank": folder / "bank", "labels": folder / "labels.txt", "bag": folder / "bag"}


def write_bag(path: Path, tracks: dict[str, list[np.ndarray]]) -> None:
    """The objects' views as a tracker records them: one track after another, 10 Hz, posed in ``map``."""
    store = typestore()
    t = store.types
    time = lambda ns: t["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9)  # noqa: E731
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection("/tracker/views", "ddclip/msg/ObjectView", typestore=store)
        stamp = START_NS
        for index, (name, views) in enumerate(tracks.items()):
            for i, pixels in enumerate(views):
                stamp += 100_000_000
                header = t["std_msgs/msg/Header"](stamp=time(stamp), frame_id="camera_optical")
                image = t["sensor_msgs/msg/Image"](
                    header=header, height=224, width=224, encoding="rgb8", is_bigendian=0, step=672, data=pixels.ravel()
                )
                empty = t["sensor_msgs/msg/Image"](
                    header=header, height=0, width=0, encoding="", is_bigendian=0, step=0, data=np.zeros(0, np.uint8)
                )
                pose = t["geometry_msgs/msg/PoseStamped"](
                    header=t["std_msgs/msg/Header"](stamp=time(stamp - 5_000_000), frame_id="map"),
                    pose=t["geometry_msgs/msg/Pose"](
                        position=t["geometry_msgs/msg/Point"](x=float(index), y=2.0, z=0.5),
                        orientation=t["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
                    ),
                )
                message = t["ddclip/msg/ObjectView"](
                    header=header, track_id=name, image=image, mask=empty, pose=pose, track_ended=i == len(views) - 1
                )
                writer.write(connection, stamp, store.serialize_cdr(message, "ddclip/msg/ObjectView"))


def replay(bag: Path, env: dict[str, str], *remap: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ddclip_ros.replay", str(bag), "--remap", "/tracker/views:=/ddclip/views", *remap],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0 and "published 48 on /ddclip/views" in result.stdout, result.stdout + result.stderr


class Client:
    def __init__(self, name: str, process) -> None:
        self.node = rclpy.create_node(name)
        self.matches: dict[str, ObjectMatches] = {}
        self.status: list[DiagnosticStatus] = []
        self.node.create_subscription(
            ObjectMatches, "ddclip/matches", lambda m: self.matches.update({m.track_id: m}), 50
        )
        self.node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self.status.extend(m.status), 10)
        self.query = self.node.create_client(Query, "ddclip/query")
        self.enroll = self.node.create_client(Enroll, "ddclip/enroll")
        assert self.query.wait_for_service(timeout_sec=300), process.stdout.read() if process.poll() else "no node"
        assert spin_until(self.node, lambda: self.node.count_subscribers("ddclip/views") > 0, 60)

    def call(self, client, request):
        future = client.call_async(request)
        assert spin_until(self.node, future.done, 120)
        return future.result()


def test_published_files_end_to_end_with_a_restart(published, tmp_path):
    env = ros_env(tmp_path)
    params = {
        "weights": str(published["checkpoint"]),
        "bank": str(published["bank"]),
        "labels": str(published["labels"]),
        "templates": "none",
        "device": "cpu",
        "memory_path": str(tmp_path / "memory"),
        "min_views": "12",  # one result per track, at its end (or after timeout_s if its last view was lost)
        "timeout_s": "3.0",
    }  # no `reliable`: the default sensor-data QoS
    process = launch(params, env)
    rclpy.init()
    try:
        client = Client("ddclip_published_client", process)
        replay(published["bag"], env)
        assert spin_until(client.node, lambda: set(client.matches) == set(UIDS), 180), sorted(client.matches)
        for name, uid in UIDS.items():
            match = client.matches[name]
            assert match.num_views >= 6  # best effort may lose a view; the near-duplicate filter keeps fewer
            assert match.bank_matches[0].id == uid, (name, [(m.id, m.score) for m in match.bank_matches])
        assert client.matches["duck"].bank_matches[0].name == "a yellow rubber duck"  # Cap3D caption
        assert client.matches["teddy"].bank_matches[0].name == "teddy_bear"  # an LVIS category, no caption

        # Enrolling a seen track against the Objaverse bank (published weights id) killed the node before.
        reply = client.call(client.enroll, Enroll.Request(name="Ana's duck", category="duck", track_id="duck"))
        assert reply.success and reply.id == "enrolled:Ana's duck", reply.message
        answer = client.call(
            client.query, Query.Request(text="a rubber duck", k=100, sources=Query.Request.SOURCE_BOTH)
        )
        assert answer.success, answer.message
        seen = {r.track_id: r for r in answer.results if r.source == "seen"}
        assert set(seen) == set(UIDS) and seen["duck"].name == "Ana's duck"
        pose = seen["mug"].pose
        assert pose.header.frame_id == "map" and pose.pose.position.x == 1.0  # the tracker's frame, not the camera's
        start = START_NS // 10**9  # the mug's 12 views are 1.3 to 2.4 s into the bag, its pose 5 ms before each
        assert pose.header.stamp.sec == start + 2 and pose.header.stamp.nanosec == 395_000_000
        assert (seen["mug"].last_seen.sec, seen["mug"].last_seen.nanosec) == (start + 2, 400_000_000)
        bank = {r.id for r in answer.results if r.source == "bank"}
        assert "enrolled:Ana's duck" in bank and UIDS["duck"] in bank
        assert spin_until(client.node, lambda: client.status, 30)
        assert (client.status[-1].level, client.status[-1].message) == (DiagnosticStatus.OK, "ok")
        client.node.destroy_node()
    finally:
        rclpy.try_shutdown()
        output = stop_node(process)  # SIGINT
    assert process.returncode == 0 and "Traceback" not in output, output

    process = launch(params, env)  # a restart on the same memory_path
    rclpy.init()
    try:
        client = Client("ddclip_published_again", process)
        answer = client.call(
            client.query, Query.Request(text="a rubber duck", k=100, sources=Query.Request.SOURCE_BOTH)
        )
        assert answer.success, answer.message
        seen = {r.track_id: r for r in answer.results if r.source == "seen"}
        assert set(seen) == set(UIDS) and seen["duck"].name == "Ana's duck"  # seen objects are back
        assert seen["soccerball"].pose.header.frame_id == "map"
        assert "enrolled:Ana's duck" in {r.id for r in answer.results if r.source == "bank"}  # and the name
        client.node.destroy_node()
    finally:
        rclpy.try_shutdown()
        output = stop_node(process)
    assert process.returncode == 0 and "Traceback" not in output, output
    assert "1 enrolled object(s) from" in output
