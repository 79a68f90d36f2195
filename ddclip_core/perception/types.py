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
    text: str
    k: int = 0  # 0: the engine's k_matches
    sources: int = Source.SEEN  # 0 is read as SEEN


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


@dataclass
class QueryAnswer:
    hits: list[QueryHit]
    message: str


@dataclass
class EnrollAnswer:
    id: str
    message: str
