"""ddclip-replay: publish a folder of object views as ObjectView messages, like an upstream tracker.

Each sub-folder is one track (its images are the views); each image directly in the folder is one
track (a vertical strip of F views with --views F). The last view of a track has track_ended set.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ddclip_core.bank_build import find_objects
from ddclip_core.images import read_image, split_strip

from .image_conversion import rgb_to_image


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


def publish_tracks(node, tracks, *, rate_hz: float = 30.0, topic: str = "ddclip/views", wait_s: float = 10.0) -> int:
    """Publish every view of every track (tracks interleaved, as a camera would see them); returns views sent."""
    from ddclip.msg import ObjectView
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    publisher = node.create_publisher(ObjectView, topic, QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
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
            time.sleep(1.0 / rate_hz)
    return sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ddclip-replay", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", help="folder of objects: sub-folders of views, or images (strips with --views)")
    parser.add_argument("--views", type=int, metavar="F", help="each image is a vertical strip of F views")
    parser.add_argument("--rate", type=float, default=30.0, help="views per second (default: 30)")
    parser.add_argument("--topic", default="ddclip/views", help="ObjectView topic (default: ddclip/views)")
    parser.add_argument("--loop", action="store_true", help="replay again and again until interrupted")
    args, ros_args = parser.parse_known_args(argv)
    import rclpy

    tracks = load_tracks(args.folder, args.views)
    rclpy.init(args=ros_args)
    node = rclpy.create_node("ddclip_replay")
    try:
        while True:
            sent = publish_tracks(node, tracks, rate_hz=args.rate, topic=args.topic)
            print(f"published {sent} views of {len(tracks)} tracks on {args.topic}", flush=True)
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
