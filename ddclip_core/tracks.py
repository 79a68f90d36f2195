"""Per-track view buffers for a robot: which views of each object to keep, and when to encode.

ROS-free: the node feeds it views and asks which tracks are due. Each track keeps at most
``max_views`` views chosen to be diverse (a new view replaces the most redundant kept view only if
it adds more diversity than that view did), so 12 views of an object seen from all sides beat 12
near-identical frames of the last second. While a full track waits for the encoder (its encode is
queued), a new view takes the place of its newest view, which no encode has run yet, instead of
displacing views already encoded: when the encoder falls behind, a re-encode still costs what
``reencode_after`` says (the per-view blocks of that many views, with the view cache) and its result
is as fresh as the input. A track that is not full keeps every new view (a burst of views all count).
Memory is bounded: views are downsized, tracks beyond ``max_tracks`` are evicted least-recently-seen
first, and tracks unseen for ``max_age_s`` go.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image


def _descriptor(view: np.ndarray) -> np.ndarray:
    """A unit vector summarising a view's appearance: a 12x12 colour thumbnail, mean removed. PIL first
    box-reduces by an integer factor (reducing_gap): half the time of a plain bilinear resize, per view,
    on the thread that takes every incoming view."""
    thumbnail = Image.fromarray(view).resize((12, 12), Image.BILINEAR, reducing_gap=2.0)
    small = np.asarray(thumbnail, dtype=np.float32).ravel()
    small -= small.mean()
    norm = float(np.linalg.norm(small))
    return small / norm if norm > 0 else small


def downsize(view: np.ndarray, max_side: int) -> np.ndarray:
    """The view shrunk (bilinear) so that its longer side is at most ``max_side``; smaller ones as they are."""
    height, width = view.shape[:2]
    if max(height, width) <= max_side:
        return view
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(view).resize(size, Image.BILINEAR))


@dataclass
class Track:
    track_id: str
    views: list[np.ndarray] = field(default_factory=list)
    descriptors: list[np.ndarray] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)  # one per kept view, new for each new view (view caches)
    first_seen: float = 0.0
    last_seen: float = 0.0
    first_stamp: Any = None  # the first view's header
    last_stamp: Any = None  # the newest view's header (camera frame and stamp), for the result
    pose: Any = None
    ended: bool = False
    changes: int = 0  # views accepted since the last encode
    refreshed: bool = False  # its newest view was replaced while it waited for the encoder: encode again
    encoded_views: int = 0  # views in the last encode (0: never encoded)
    views_seen: int = 0

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.views)


@dataclass
class TrackPolicy:
    """When a track is encoded, and how much is kept. Times in seconds."""

    max_views: int = 12
    min_views: int = 3  # first encode once this many views are in
    reencode_after: int = 2  # re-encode after this many new views were accepted
    timeout_s: float = 2.0  # encode whatever there is when no view came for this long
    max_tracks: int = 200
    max_age_s: float = 600.0  # forget the views of tracks unseen for this long
    max_side: int = 256  # views are downsized to this longer side on arrival
    min_novelty: float = 0.02  # a view closer than this (1 - cosine) to a kept view adds nothing

    def __post_init__(self) -> None:
        if not 1 <= self.min_views <= self.max_views:
            raise ValueError(f"need 1 <= min_views <= max_views, got {self.min_views}, {self.max_views}")
        if self.max_tracks < 1 or self.reencode_after < 1 or self.max_side < 32:
            raise ValueError("max_tracks and reencode_after must be >= 1, max_side >= 32")


class TrackBuffer:
    """Views per track id, bounded, with the encode decisions of ``TrackPolicy``."""

    def __init__(self, policy: TrackPolicy | None = None) -> None:
        self.policy = policy or TrackPolicy()
        self._tracks: OrderedDict[str, Track] = OrderedDict()  # least recently seen first
        self.evicted = 0
        self.rejected_views = 0  # views that added no diversity
        self._keys = itertools.count(1)
        self.removed: list[str] = []  # tracks gone from the buffer (evicted, expired, forgotten) since last taken

    def __len__(self) -> int:
        return len(self._tracks)

    def __contains__(self, track_id: str) -> bool:
        return track_id in self._tracks

    def get(self, track_id: str) -> Track | None:
        return self._tracks.get(track_id)

    @property
    def nbytes(self) -> int:
        return sum(track.nbytes for track in self._tracks.values())

    def view_counts(self) -> list[int]:
        return [len(track.views) for track in self._tracks.values()]

    def add(
        self, track_id: str, view: np.ndarray, now: float, *, stamp: Any = None, pose: Any = None, waiting: bool = False
    ) -> bool:
        """Offer a view (H, W, 3 uint8); returns whether it was kept. ``waiting``: the track's encode is
        queued and not started, so a full track's newest view is replaced (see the module's doc)."""
        if view.ndim != 3 or view.shape[2] != 3 or view.dtype != np.uint8 or 0 in view.shape:
            raise ValueError(f"a view must be a non-empty (H, W, 3) uint8 array, got {view.dtype} {view.shape}")
        track = self._tracks.get(track_id)
        if track is None:
            track = Track(track_id, first_seen=now, first_stamp=stamp)
            self._tracks[track_id] = track
            self._evict_over_capacity()
        self._tracks.move_to_end(track_id)
        track.last_seen, track.last_stamp, track.views_seen = now, stamp, track.views_seen + 1
        track.ended = False
        if pose is not None:
            track.pose = pose
        small = downsize(view, self.policy.max_side)
        # the caller's array is copied: a camera loop that reuses its frame buffer (or a crop that is a
        # slice of the frame) must not change a kept view
        view = small if small is not view else np.array(view, order="C")
        descriptor = _descriptor(view)
        if waiting and len(track.views) >= self.policy.max_views:
            kept = self._refresh(track, view, descriptor)
        else:
            kept = self._keep(track, view, descriptor)
            track.changes += kept
        if not kept:
            self.rejected_views += 1
        return kept

    def _refresh(self, track: Track, view: np.ndarray, descriptor: np.ndarray) -> bool:
        newest = int(np.argmax(track.keys))  # keys grow: the newest view, in the queued encode only
        others = [d for i, d in enumerate(track.descriptors) if i != newest]
        if others and float((1.0 - np.stack(others) @ descriptor).min()) < self.policy.min_novelty:
            return False
        track.views[newest], track.descriptors[newest] = view, descriptor
        track.keys[newest] = next(self._keys)
        track.refreshed = True
        return True

    def _keep(self, track: Track, view: np.ndarray, descriptor: np.ndarray) -> bool:
        if track.descriptors:
            distances = 1.0 - np.stack(track.descriptors) @ descriptor
            if float(distances.min()) < self.policy.min_novelty:
                return False
        if len(track.views) < self.policy.max_views:
            track.views.append(view)
            track.keys.append(next(self._keys))
            track.descriptors.append(descriptor)
            return True
        # Full: replace the most redundant kept view if the newcomer is less redundant than it.
        kept = np.stack(track.descriptors)
        pairwise = 1.0 - kept @ kept.T
        np.fill_diagonal(pairwise, np.inf)
        nearest = pairwise.min(axis=1)
        victim = int(nearest.argmin())
        others = np.delete(kept, victim, axis=0)
        # max_views 1: no diversity to weigh; the newcomer, novel against the kept view, replaces it
        if len(others) and float((1.0 - others @ descriptor).min()) <= float(nearest[victim]):
            return False
        track.views[victim], track.descriptors[victim] = view, descriptor
        track.keys[victim] = next(self._keys)
        return True

    def end(self, track_id: str) -> None:
        """The tracker says this track is over: it will be encoded at the next ``due``."""
        if track_id in self._tracks:
            self._tracks[track_id].ended = True

    def due(self, now: float, track_ids: Iterable[str] | None = None) -> list[Track]:
        """Tracks to encode now, oldest first; marks them encoded (call ``views`` on each).

        ``track_ids``: look at these tracks only, e.g. those a view just updated, so a view costs the same
        with 10 or 1000 tracks; the others can only have become due by time, which a call without it finds.
        """
        if track_ids is None:
            candidates: Iterable[Track] = list(self._tracks.values())
        else:
            candidates = [self._tracks[t] for t in dict.fromkeys(track_ids) if t in self._tracks]
        ready = []
        p = self.policy
        for track in candidates:
            if track.refreshed:  # its queued encode is replaced by one with the newer view, in the same place
                track.refreshed = False
                ready.append(track)
                continue
            if not track.views or track.changes == 0:
                continue
            first = track.encoded_views == 0 and len(track.views) >= p.min_views
            more = track.encoded_views > 0 and track.changes >= p.reencode_after
            idle = now - track.last_seen >= p.timeout_s
            # a track about to leave (max_age_s, whatever timeout_s is) is encoded with what it has first
            leaving = track_ids is None and now - track.last_seen > p.max_age_s
            if first or more or idle or leaving or track.ended:
                track.changes, track.encoded_views = 0, len(track.views)
                ready.append(track)
        if track_ids is None:
            self.expire(now)  # after: their encodes are queued, and deliver what was seen
        return ready

    def expire(self, now: float) -> int:
        old = [tid for tid, track in self._tracks.items() if now - track.last_seen > self.policy.max_age_s]
        for track_id in old:
            del self._tracks[track_id]
        self.evicted += len(old)
        self.removed += old
        return len(old)

    def forget(self, track_ids: list[str] | None = None) -> int:
        """Drop tracks (all when None); returns how many."""
        gone = list(self._tracks) if track_ids is None else [t for t in track_ids if t in self._tracks]
        for track_id in gone:
            del self._tracks[track_id]
        self.removed += gone
        return len(gone)

    def _evict_over_capacity(self) -> None:
        while len(self._tracks) > self.policy.max_tracks:
            self.removed.append(self._tracks.popitem(last=False)[0])
            self.evicted += 1

    def take_removed(self) -> list[str]:
        """The tracks that left the buffer since the last call (so their caches can go too)."""
        removed, self.removed = self.removed, []
        return removed
