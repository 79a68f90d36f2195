"""What goes into and comes out of the perception engine, as plain values (no ROS message types)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from ..bank import Match
from ..stamped import Header, Pose, Stamp


class RequestError(ValueError):
    """A request the engine cannot answer as asked; the message says why (for ``success=false``)."""


class StartupError(RuntimeError):
    """The engine cannot start as configured; the message names the setting and the fix."""


class Source(enum.IntFlag):
    """Where a query looks (the same bits as ddclip/Query's SOURCE_* constants)."""

    SEEN = 1  # objects the robot encoded (its object memory)
    BANK = 2  # the embedding bank (e.g. Objaverse) and enrolled objects
    BOTH = 3


@dataclass
class ObjectResult:
    """One encoded track: its embedding and what it matches, as the engine hands it over."""

    track_id: str
    header: Header  # camera frame and stamp of the newest view used
    num_views: int
    num_points: int  # points of the track's cloud fused in (0: views only)
    embedding: np.ndarray  # (D,) float32, L2-normalised
    embedding_id: str  # the embedding space: weights, and the fusion when a cloud went in
    pose: Pose | None
    bank_matches: list[Match] = field(default_factory=list)
    label_matches: list[tuple[str, float]] = field(default_factory=list)
    threshold: float = 0.0
    confident: bool = False

    def best(self) -> tuple[str, float] | None:
        """The better of the first bank match and the first label, as (name, score)."""
        firsts = [(m.name or m.id, m.score) for m in self.bank_matches[:1]] + self.label_matches[:1]
        return max(firsts, key=lambda item: item[1]) if firsts else None


@dataclass(frozen=True)
class QueryRequest:
    """What to look for (a text, images of an object, or a remembered track: exactly one) and where.
    Every filter left at its default filters nothing; they apply to the seen objects."""

    text: str = ""
    k: int = 0  # 0: the engine's k_matches
    sources: int = Source.SEEN  # 0 is read as SEEN
    images: tuple[np.ndarray, ...] = ()  # query by example: "where have you seen this?"
    like_track_id: str = ""  # "what else looks like track 7?" (the track itself is left out)
    seen_after: Stamp | None = None
    seen_before: Stamp | None = None
    within_last_s: float = 0.0  # seen in the last N seconds of ROS time (sim time under use_sim_time)
    near_frame: str = ""  # a place: within ``radius`` metres of ``near`` in ``near_frame``
    near: tuple[float, float, float] | None = None
    radius: float = 0.0
    min_views: int = 0
    name_contains: str = ""


@dataclass
class QueryHit:
    source: str  # "seen" or "bank"
    score: float
    track_id: str = ""  # seen objects
    id: str = ""  # bank objects
    name: str = ""
    last_seen: Stamp = field(default_factory=Stamp)
    num_views: int = 0
    pose: Pose | None = None
    first_seen: Stamp = field(default_factory=Stamp)
    sightings: int = 0
    names: list[tuple[str, float]] = field(default_factory=list)  # best matches at the last sighting
    category: str = ""


@dataclass
class QueryAnswer:
    hits: list[QueryHit]
    message: str
    left_out_other_frame: int = 0  # seen objects a place filter left out: posed in another frame
    left_out_no_pose: int = 0


@dataclass
class EnrollAnswer:
    id: str
    message: str
