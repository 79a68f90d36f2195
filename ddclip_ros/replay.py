"""ddclip-replay: publish recorded input to the ddclip node, like an upstream camera and tracker.

A folder of object views: each sub-folder is one track (its images are the views); each image
directly in the folder is one track (a vertical strip of F views with --views F); they go out as
ObjectView messages, the last view of a track with track_ended set.

A bag (a rosbag2 folder with metadata.yaml, sqlite3 or MCAP, or a bare .mcap file): its Image,
CompressedImage, ObjectView, TrackedDetections and vision_msgs/Detection2DArray messages are
republished on their recorded topics (--remap OLD:=NEW to change one), unchanged, at the recorded
pace times --rate (0: as fast as possible).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ddclip_core.bank_build import find_objects
from ddclip_core.images import read_image, split_strip

from .bag import REPLAYED_TYPES, is_bag, message_class, play, read_bag
from .dds_profile import use_image_profile
from .image_conversion import rgb_to_image

REPLAY_QOS_DEPTH = 1000  # reliable and deep: a fast replay must not overwrite views not yet delivered


def load_tracks(folder: str | Path, num_views: int | None = None) -> list[tuple[str, list[np.ndarray]]]:
    tracks = []
    for name, images in find_objects(folder):
        views = [
            v
            for path in images
            for v in (split_strip(read_image(path), num_views, str(path)) if num_views else [read_image(path)])
        ]
        tracks.append((name, views))
    return tracks


def publish_tracks(
    node: Any,
    tracks: list[tuple[str, list[np.ndarray]]],
    *,
    rate_hz: float = 30.0,
    topic: str = "ddclip/views",
    wait_s: float = 10.0,
) -> int:
    """Publish every view of every track (tracks interleaved, as a camera would see them); returns views sent.

    ``rate_hz`` 0 publishes as fast as possible.
    """
    from ddclip.msg import ObjectView
    from rclpy.duration import Duration
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    qos = QoSProfile(depth=REPLAY_QOS_DEPTH, reliability=ReliabilityPolicy.RELIABLE)
    publisher = node.create_publisher(ObjectView, topic, qos)
    deadline = time.monotonic() + wait_s
    while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    sent = 0
    longest = max(len(views) for _, views in tracks)
    for index in range(longest):
        for name, views in tracks:
            if index >= len(views):
                continue
            message = ObjectView(track_id=name, track_ended=index == len(views) - 1)
            message.header.stamp = node.get_clock().now().to_msg()
            message.header.frame_id = "replay"
            message.image = rgb_to_image(views[index], message.header)
            publisher.publish(message)
            sent += 1
            if rate_hz > 0:
                time.sleep(1.0 / rate_hz)
    publisher.wait_for_all_acked(Duration(seconds=wait_s))  # exiting early would lose the last views
    node.destroy_publisher(publisher)  # --loop makes a new one each pass
    return sent


def publish_bag(
    node: Any, path: str | Path, *, rate: float = 1.0, remap: dict[str, str] | None = None, wait_s: float = 10.0
) -> dict[str, int]:
    """Republish a bag's replayable messages; returns messages sent per (output) topic."""
    from rclpy.duration import Duration
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    remap = remap or {}
    topics, messages = read_bag(path)
    publishers: dict[str, Any] = {}
    for topic, msgtype in topics:
        cls = message_class(msgtype) if msgtype in REPLAYED_TYPES else None
        if cls is None:
            print(f"skipping {topic} ({msgtype}): not replayed or its package is not installed", flush=True)
            continue
        qos = QoSProfile(depth=REPLAY_QOS_DEPTH, reliability=ReliabilityPolicy.RELIABLE)
        publishers[topic] = node.create_publisher(cls, remap.get(topic, topic), qos)
    deadline = time.monotonic() + wait_s
    while any(p.get_subscription_count() == 0 for p in publishers.values()) and time.monotonic() < deadline:
        time.sleep(0.05)  # discovery: messages sent before a subscriber matched are lost
    counts = dict.fromkeys((p.topic_name for p in publishers.values()), 0)

    def publish(topic: str, data: bytes) -> None:
        publisher = publishers.get(topic)
        if publisher is not None:
            publisher.publish(data)  # the recorded CDR bytes, as is
            counts[publisher.topic_name] += 1

    play(messages, publish, rate=rate)
    for publisher in publishers.values():
        publisher.wait_for_all_acked(Duration(seconds=wait_s))
        node.destroy_publisher(publisher)  # --loop makes new ones each pass
    return counts


def _remaps(items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        old, sep, new = item.partition(":=")
        if not sep or not old or not new:
            raise SystemExit(f"ddclip-replay: --remap wants OLD:=NEW, got {item!r}")
        pairs["/" + old.lstrip("/")] = new  # bag topics are absolute
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ddclip-replay", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "folder", help="folder of objects (sub-folders of views, or strips with --views), or a bag: folder or .mcap"
    )
    parser.add_argument("--views", type=int, metavar="F", help="each image is a vertical strip of F views")
    parser.add_argument(
        "--rate",
        type=float,
        help="folders: views per second (default: 30); bags: x the recorded pace (default: 1); 0 = as fast as possible",
    )
    parser.add_argument("--topic", default="ddclip/views", help="folders: ObjectView topic (default: ddclip/views)")
    parser.add_argument("--remap", action="append", default=[], metavar="OLD:=NEW", help="bags: publish OLD on NEW")
    parser.add_argument("--wait", type=float, default=10.0, help="seconds to wait for subscribers (default: 10)")
    parser.add_argument("--loop", action="store_true", help="replay again and again until interrupted")
    args, ros_args = parser.parse_known_args(argv)
    import rclpy

    bag = is_bag(args.folder)
    remap = _remaps(args.remap)
    tracks = None if bag else load_tracks(args.folder, args.views)
    use_image_profile()
    rclpy.init(args=ros_args)
    node = rclpy.create_node("ddclip_replay")
    try:
        while True:
            if bag:
                rate = 1.0 if args.rate is None else args.rate
                counts = publish_bag(node, args.folder, rate=rate, remap=remap, wait_s=args.wait)
                print("published " + ", ".join(f"{n} on {t}" for t, n in counts.items()), flush=True)
            else:
                rate = 30.0 if args.rate is None else args.rate
                sent = publish_tracks(node, tracks, rate_hz=rate, topic=args.topic, wait_s=args.wait)
                topic = node.resolve_topic_name(args.topic)  # the name it went out on, remapped
                print(f"published {sent} views of {len(tracks)} tracks on {topic}", flush=True)
            if not args.loop:
                break
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
