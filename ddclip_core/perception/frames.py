"""Full camera frames + tracked boxes -> per-track crops. Frames and detections arrive separately
(two topics); they are paired by (stamp, frame_id) within small bounded caches. No ROS in here."""

from __future__ import annotations

import numbers
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

Key = tuple[int, int, str]  # stamp sec, nanosec, frame_id


def stamp_key(header: Any) -> Key:
    """The pairing key of a header (a ``Header`` or anything with ``stamp.sec/nanosec`` and ``frame_id``)."""
    return (int(header.stamp.sec), int(header.stamp.nanosec), str(header.frame_id))


@dataclass
class Box:
    track_id: str
    x_min: float
    y_min: float
    x_max: float
    y_max: float


def box_problem(box: Box) -> str | None:
    """What makes a tracked box unusable (no track id, a coordinate that is not a finite number, corners
    swapped), or None."""
    if not box.track_id:
        return "a box with an empty track_id"
    corners = (box.x_min, box.y_min, box.x_max, box.y_max)
    if not all(isinstance(v, numbers.Real) and np.isfinite(v) for v in corners):  # numpy scalars too
        return f"box of track {box.track_id!r} has a coordinate that is not a finite number: {corners}"
    if box.x_max < box.x_min or box.y_max < box.y_min:
        return f"box of track {box.track_id!r} has its corners swapped: {corners}"
    return None


def usable_boxes(boxes: list[Box]) -> tuple[list[Box], list[str]]:
    """The boxes without a problem, and the problems of the others."""
    problems = [box_problem(box) for box in boxes]
    return [box for box, p in zip(boxes, problems, strict=True) if p is None], [p for p in problems if p]


def crop(rgb: np.ndarray, box: Box, min_side: int = 8) -> np.ndarray:
    """The box's pixels, clamped to the frame; ValueError when it is unusable or less than min_side remains."""
    problem = box_problem(box)
    if problem is not None:
        raise ValueError(problem)
    height, width = rgb.shape[:2]
    x0, x1 = max(0, int(np.floor(box.x_min))), min(width, int(np.ceil(box.x_max)))
    y0, y1 = max(0, int(np.floor(box.y_min))), min(height, int(np.ceil(box.y_max)))
    if x1 - x0 < min_side or y1 - y0 < min_side:
        raise ValueError(
            f"box of track {box.track_id!r} leaves {max(0, x1 - x0)}x{max(0, y1 - y0)} pixels in the frame"
        )
    return rgb[y0:y1, x0:x1]


class FramePairer:
    """Holds the latest few frames and detections until their partner with the same key arrives."""

    def __init__(self, capacity: int = 30) -> None:
        self.capacity = capacity
        self._frames: OrderedDict[Key, np.ndarray] = OrderedDict()
        self._boxes: OrderedDict[Key, Any] = OrderedDict()
        self.unpaired_dropped = 0

    def add_frame(self, key: Key, rgb: np.ndarray) -> Any:
        """Store a frame; returns the detections waiting for it, if any (the pair is then consumed)."""
        boxes = self._boxes.pop(key, None)
        if boxes is not None:
            return boxes
        self._remember(self._frames, key, rgb)
        return None

    def add_boxes(self, key: Key, boxes: Any) -> np.ndarray | None:
        """Store detections (anything: boxes, ended tracks); returns the frame waiting for them, if any."""
        frame = self._frames.pop(key, None)
        if frame is not None:
            return frame
        self._remember(self._boxes, key, boxes)
        return None

    def _remember(self, cache: OrderedDict, key: Key, value: Any) -> None:
        cache[key] = value
        while len(cache) > self.capacity:
            cache.popitem(last=False)
            self.unpaired_dropped += 1
