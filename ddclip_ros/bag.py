"""rosbag2 / MCAP bags for replay, read with the ``rosbags`` library (no ROS install needed).

Messages are republished as the raw CDR bytes stored in the bag, so nothing is deserialised on the
way: any message type whose Python class rclpy can import is replayed exactly as recorded, stamps
included (the node pairs frames and detections by stamp). ``typestore()`` registers the package's
own messages with rosbags, for writing bags of them (the tests do).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# What the node reads; other topics of a bag (tf, camera_info, ...) are not replayed.
REPLAYED_TYPES = (
    "sensor_msgs/msg/Image",
    "sensor_msgs/msg/CompressedImage",
    "ddclip/msg/ObjectView",
    "ddclip/msg/TrackedDetections",
    "vision_msgs/msg/Detection2DArray",
)


def is_bag(path: str | Path) -> bool:
    path = Path(path)
    return (path.suffix == ".mcap" and path.is_file()) or (path / "metadata.yaml").is_file()


def msg_folder() -> Path:
    """The package's .msg files: installed beside the generated ``ddclip`` package, else the source tree."""
    import ddclip

    prefix = Path(ddclip.__file__).resolve().parents[4]  # <prefix>/lib/pythonX.Y/site-packages/ddclip
    for folder in (prefix / "share" / "ddclip" / "msg", Path(__file__).resolve().parents[1] / "msg"):
        if any(folder.glob("*.msg")):
            return folder
    raise FileNotFoundError("cannot find the ddclip .msg files (share/ddclip/msg or the source tree's msg/)")


def typestore(distro: str = "ROS2_KILTED") -> Any:
    """A rosbags typestore of ``distro`` with the ddclip messages registered (``ddclip/msg/ObjectView``, ...)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    # Older rosbags releases lack the newest distributions: their LATEST store has the same messages.
    store = get_typestore(Stores[distro] if distro in Stores.__members__ else Stores.LATEST)
    types: dict = {}
    for path in sorted(msg_folder().glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"ddclip/msg/{path.stem}"))
    store.register(types)
    return store


def message_class(msgtype: str) -> type | None:
    """The rclpy class of ``pkg/msg/Name``, or None where that package is not installed."""
    package, _, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.msg"), name)
    except (ImportError, AttributeError):
        return None


def read_bag(path: str | Path) -> tuple[list[tuple[str, str]], Iterator[tuple[str, int, bytes]]]:
    """The (topic, type) pairs of a bag folder or .mcap file, and its messages in time order.

    Messages are (topic, log time in ns, CDR bytes). The iterator holds the file open until exhausted.
    """
    from rosbags.rosbag2 import Reader
    from rosbags.rosbag2.storage_mcap import McapReader

    path = Path(path)
    # A bare .mcap file has no metadata.yaml, which rosbags' Reader needs: read it with the storage plugin.
    reader = McapReader(path) if path.is_file() else Reader(path)
    reader.open()
    connections = [c for c in reader.connections if c.msgtype in REPLAYED_TYPES]
    topics = sorted({(c.topic, c.msgtype) for c in reader.connections})

    def messages() -> Iterator[tuple[str, int, bytes]]:
        try:
            for connection, timestamp, data in reader.messages(connections):
                yield connection.topic, timestamp, bytes(data)
        finally:
            reader.close()

    return topics, messages()


def play(
    messages: Iterator[tuple[str, int, bytes]],
    publish: Callable[[str, bytes], None],
    *,
    rate: float = 1.0,
) -> int:
    """Hand each message to ``publish(topic, data)`` at ``rate`` x the recorded pace (0: as fast as possible)."""
    sent, first, start = 0, None, time.monotonic()
    for topic, timestamp, data in messages:
        if rate > 0:
            first = timestamp if first is None else first
            delay = start + (timestamp - first) * 1e-9 / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        publish(topic, data)
        sent += 1
    return sent
