"""Times, headers and poses as plain values, so the perception engine needs no ROS message types.

They mirror builtin_interfaces/Time, std_msgs/Header and geometry_msgs/PoseStamped; the ROS node
converts at its edge. A pose keeps its own frame and stamp: a tracker's pose in ``map`` is not the
camera's frame, and answering with the wrong one would silently mix frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, order=True)
class Stamp:
    """A time as ROS sends it: whole seconds and nanoseconds (ROS time: sim time under use_sim_time)."""

    sec: int = 0
    nanosec: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.nanosec < 1_000_000_000:
            raise ValueError(f"nanosec must be in 0..999999999, got {self.nanosec}")

    @classmethod
    def from_seconds(cls, seconds: float) -> Stamp:
        whole = int(seconds // 1)
        return cls(whole, min(999_999_999, round((seconds - whole) * 1e9)))

    @property
    def seconds(self) -> float:
        return self.sec + self.nanosec * 1e-9

    @property
    def is_zero(self) -> bool:
        return self.sec == 0 and self.nanosec == 0

    def to_list(self) -> list[int]:
        return [self.sec, self.nanosec]

    @classmethod
    def from_list(cls, values: Any) -> Stamp:
        sec, nanosec = values
        return cls(int(sec), int(nanosec))


@dataclass(frozen=True)
class Header:
    """Where and when a view was taken: the camera's frame and the image's stamp."""

    frame_id: str = ""
    stamp: Stamp = field(default_factory=Stamp)


@dataclass(frozen=True)
class Pose:
    """An object's pose in ``frame_id`` at ``stamp``, as a tracker reported it."""

    frame_id: str
    stamp: Stamp = field(default_factory=Stamp)
    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    orientation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)  # x, y, z, w

    def __post_init__(self) -> None:
        if not self.frame_id:
            raise ValueError("a pose needs the frame it is given in (frame_id)")
        if len(self.position) != 3 or len(self.orientation) != 4:
            raise ValueError("a pose is a 3-d position and an x, y, z, w quaternion")

    def to_dict(self) -> dict[str, Any]:
        return {
            "frame_id": self.frame_id,
            "stamp": self.stamp.to_list(),
            "position": list(self.position),
            "orientation": list(self.orientation),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Pose:
        return cls(
            str(data["frame_id"]),
            Stamp.from_list(data["stamp"]),
            tuple(float(v) for v in data["position"]),
            tuple(float(v) for v in data["orientation"]),
        )
