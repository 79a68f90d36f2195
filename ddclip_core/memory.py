"""ObjectMemory: every object the robot encoded, searchable by language, example, time and place.

Each object keeps its latest embedding and state (first and last seen, views, the tracker's pose in its
own frame with its own stamp, the best names) and a bounded history of sightings. Bounded overall
(``max_objects``, least recently seen first) and per object (``max_sightings``). Written through to an
SQLite database (``memory_store``) in one transaction per batch; searched from arrays in RAM, so a
filtered query over 100 k objects scores only the objects that pass the filters.

A memory folder of an earlier version (``memory.npz`` [+ ``memory.json``]) is migrated once.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import _memory_legacy as legacy
from .bank import as_queries
from .identity import WeightsIdentity, identity_of
from .memory_store import MemoryStore, database_path, embedding_blob, pose_columns, pose_from_columns
from .stamped import Pose, Stamp

Names = list[tuple[str, float]]  # best names at a sighting, best first


@dataclass
class SeenObject:
    track_id: str
    first_seen: Stamp
    last_seen: Stamp  # the stamp of the newest view (ROS time)
    num_views: int
    camera_frame: str = ""  # the frame of the newest view's camera
    pose: Pose | None = None  # the tracker's last pose, in its own frame and with its own stamp
    name: str = ""  # a name given by enrolment, if any
    names: Names = field(default_factory=list)  # the best matches at the last sighting
    sightings: int = 0
    marker_id: int = 0  # a stable integer id (rviz markers)

    @property
    def label(self) -> str:
        """What to call it: the enrolled name, else the best match, else the track id."""
        return self.name or (self.names[0][0] if self.names else self.track_id)


@dataclass(frozen=True)
class Sighting:
    """What one encode of a track tells the memory."""

    track_id: str
    stamp: Stamp
    num_views: int
    camera_frame: str = ""
    pose: Pose | None = None
    names: Names = field(default_factory=list)
    first_stamp: Stamp | None = None  # the track's first view, when it is older than this sighting


@dataclass(frozen=True)
class MemoryFilter:
    """Which remembered objects a search may return (every field: no filter when left as is)."""

    seen_after: Stamp | None = None
    seen_before: Stamp | None = None
    frame: str = ""  # with centre and radius: objects posed within radius of centre, in this frame
    centre: tuple[float, float, float] | None = None
    radius: float = 0.0
    min_views: int = 0
    name_contains: str = ""  # in the enrolled name, a best name or the track id, any case
    exclude: tuple[str, ...] = ()


class ObjectMemory:
    """identity: the embedding space the memory holds (weights, and fusion if any); files of others are refused.
    A memory written to disk needs one (None: only in RAM, or read_only, which opens any memory).
    path: the memory folder or database file; None keeps it in RAM only."""

    def __init__(
        self,
        dim: int,
        max_objects: int = 1000,
        identity: WeightsIdentity | str | None = None,
        *,
        path: str | os.PathLike | None = None,
        max_sightings: int = 32,
        sync: str = "normal",
        read_only: bool = False,
    ) -> None:
        if max_objects < 1 or max_sightings < 1:
            raise ValueError(f"max_objects and max_sightings must be >= 1, got {max_objects}, {max_sightings}")
        self.dim, self.max_objects, self.max_sightings = dim, max_objects, max_sightings
        self.identity = identity_of(identity)
        if path is not None and not read_only and self.identity is None:
            raise ValueError(
                "an object memory kept on disk records which weights made its embeddings: give identity= "
                "(the model, its weights id or a WeightsIdentity), or open it read_only"
            )
        self._objects: list[SeenObject] = []
        self._row: dict[str, int] = {}
        self._frames: dict[str, int] = {}
        folder = None if path is None else database_path(path).parent
        self.store = MemoryStore(path, read_only=read_only, sync=sync)
        try:
            try:
                self._check_identity(read_only)
                self._load()
            except sqlite3.DatabaseError as exc:  # a damaged page the open did not read
                raise ValueError(f"{self.store.path}: not a readable object memory ({exc})") from exc
            # An old folder is migrated in one transaction, then retired; until then it is read at every
            # start (an empty memory beside it: a migration refused or cut short), so a refusal holds.
            if folder is not None and not read_only and (folder / legacy.OLD_FILE).is_file():
                if not len(self):
                    self._migrate(folder)
                legacy.retire_old_memory(folder)
        except BaseException:
            self.store.close()
            raise

    # ------------------------------------------------------------------ opening
    def _check_identity(self, read_only: bool) -> None:
        meta, where = self.store.meta, self.store.path or "the memory"
        if "dim" not in meta:  # a new memory
            if not read_only:
                self.store.set_meta(dim=self.dim, weights_id=self.identity.id if self.identity else "")
            return
        if int(meta["dim"]) != self.dim:
            raise ValueError(f"{where}: embeddings of {meta['dim']} dimensions, not {self.dim}")
        if self.identity is not None and not read_only and not meta.get("weights_id"):
            # written without an identity (by a script)
            held = self.store.count()
            self.identity.check_recorded("", held, f"{where}: the object memory", "objects", "Use another memory_path.")
            self.store.set_meta(weights_id=self.identity.id)  # empty: it becomes ours
        if self.identity is not None:
            self.identity.check(meta.get("weights_id"), f"{where}: the object memory was", "Use another memory_path.")

    @property
    def weights_id(self) -> str:
        """The embedding space the database records."""
        return self.store.meta.get("weights_id", "")

    def _load(self) -> None:
        """RAM from the database (at start, and after a failed write, which SQLite rolled back)."""
        self._objects, self._row, self._frames = [], {}, {}
        self._arrays = {
            "emb": np.zeros((16, self.dim), np.float32),
            "last": np.zeros(16),
            "views": np.zeros(16, np.int32),
            "frame": np.zeros(16, np.int32),
            "xyz": np.zeros((16, 3)),
            "touched": np.zeros(16, np.int64),
        }
        self._next_marker = 1
        self._grow(self.store.count())
        for row in self.store.objects():
            track_id, marker, blob, name, fs, fn, ls, ln, views, camera = row[:10]
            names, sightings, touched = row[20:]
            vector = np.frombuffer(blob, np.float32)
            if vector.shape != (self.dim,):
                raise ValueError(f"{self.store.path}: object {track_id!r} has a {vector.size}-d embedding")
            seen = SeenObject(
                track_id, Stamp(fs, fn), Stamp(ls, ln), views, camera, pose_from_columns(*row[10:20]), name,
                [tuple(n) for n in json.loads(names or "[]")], sightings, marker,
            )  # fmt: skip
            self._put(seen, vector, touched)
            self._next_marker = max(self._next_marker, marker + 1)
        self._touch = int(self._arrays["touched"][: len(self)].max(initial=0))

    def _migrate(self, folder: Path) -> None:
        meta, records = legacy.read_old_memory(folder)
        where = folder / legacy.OLD_FILE
        if int(meta.get("dim", -1)) != self.dim:
            raise ValueError(f"{where}: embeddings of {meta.get('dim')} dimensions, not {self.dim}")
        if self.identity is not None:
            self.identity.check_recorded(meta.get("weights_id"), len(records), f"{where}: the object memory", "objects")
            self.identity.check(meta.get("weights_id"), f"{where}: the object memory was")
        batch = [(Sighting(r["track_id"], r["stamp"], r["num_views"], r["camera_frame"], r["pose"]), v)
                 for r, v in records]  # fmt: skip
        vectors = self._vectors(batch)
        with self._writing():
            self._record(batch, vectors)
            for record, _ in records:
                if record["name"] and record["track_id"] in self._row:  # not evicted (max_objects)
                    self._rename(record["track_id"], record["name"])

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self._objects)

    def __contains__(self, track_id: str) -> bool:
        return track_id in self._row

    def get(self, track_id: str) -> SeenObject | None:
        row = self._row.get(track_id)
        return None if row is None else self._objects[row]

    def embedding(self, track_id: str) -> np.ndarray | None:
        row = self._row.get(track_id)
        return None if row is None else self._arrays["emb"][row].copy()

    def objects(self) -> list[SeenObject]:
        """Every object, least recently seen first."""
        order = np.argsort(self._arrays["touched"][: len(self)], kind="stable")
        return [self._objects[i] for i in order]

    def sightings(self, track_id: str) -> list[dict[str, Any]]:
        return self.store.sightings(track_id)

    def frames(self) -> dict[str, int]:
        """Frames of the remembered poses, with how many objects are posed in each."""
        codes = self._arrays["frame"][: len(self)]
        return {frame: int((codes == code).sum()) for frame, code in self._frames.items() if (codes == code).any()}

    # ------------------------------------------------------------------ writing
    def record(self, batch: list[tuple[Sighting, Any]]) -> tuple[list[SeenObject], list[str]]:
        """Store a batch of sightings with their embeddings in one transaction; returns (updated objects,
        ids evicted to stay within max_objects)."""
        vectors = self._vectors(batch)  # bad input: before any write
        with self._writing():
            return self._record(batch, vectors)

    def _vectors(self, batch: list[tuple[Sighting, Any]]) -> list[np.ndarray]:
        return [as_queries(vector, self.dim)[0] for _, vector in batch]

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """One transaction; when it fails, RAM is read back from the database, which rolled it back."""
        try:
            with self.store.transaction():
                yield
        except BaseException:
            self._load()
            raise

    def _record(self, batch: list[tuple[Sighting, Any]], vectors: list[np.ndarray]) -> tuple[list, list[str]]:
        updated, evicted = [], []
        for (sighting, _), vector in zip(batch, vectors, strict=True):
            seen = self._merge(sighting)
            self._touch += 1
            self._put(seen, vector, self._touch)
            self.store.upsert(self._row_of(seen, vector))
            self.store.add_sighting(
                seen.track_id, sighting.stamp, sighting.num_views, sighting.camera_frame, sighting.pose,
                json.dumps(sighting.names),
            )  # fmt: skip
            self.store.trim_sightings(seen.track_id, self.max_sightings)
            updated.append(seen)
        while len(self) > self.max_objects:
            oldest = self._objects[int(np.argmin(self._arrays["touched"][: len(self)]))].track_id
            self._drop(oldest)
            evicted.append(oldest)
        self.store.delete(evicted)
        return [u for u in updated if u.track_id in self._row], evicted

    def _merge(self, sighting: Sighting) -> SeenObject:
        old = self.get(sighting.track_id)
        if old is None:
            marker, self._next_marker = self._next_marker, self._next_marker + 1
            return SeenObject(
                sighting.track_id, sighting.first_stamp or sighting.stamp, sighting.stamp, sighting.num_views,
                sighting.camera_frame,
                sighting.pose, "", list(sighting.names), 1, marker,
            )  # fmt: skip
        return SeenObject(
            old.track_id, old.first_seen, max(old.last_seen, sighting.stamp), sighting.num_views,
            sighting.camera_frame, sighting.pose or old.pose, old.name, list(sighting.names) or old.names,
            old.sightings + 1, old.marker_id,
        )  # fmt: skip

    def _row_of(self, seen: SeenObject, vector: np.ndarray) -> tuple:
        return (
            seen.track_id, seen.marker_id, embedding_blob(vector), seen.name, seen.first_seen.sec,
            seen.first_seen.nanosec, seen.last_seen.sec, seen.last_seen.nanosec, seen.num_views, seen.camera_frame,
            *pose_columns(seen.pose), json.dumps(seen.names), seen.sightings, self._touch,
        )  # fmt: skip

    def _put(self, seen: SeenObject, vector: np.ndarray, touched: int) -> None:
        row = self._row.get(seen.track_id)
        if row is None:
            row = len(self._objects)
            self._grow(row + 1)
            self._objects.append(seen)
            self._row[seen.track_id] = row
        self._objects[row] = seen
        a = self._arrays
        a["emb"][row], a["last"][row], a["views"][row] = vector, seen.last_seen.seconds, seen.num_views
        a["touched"][row] = touched
        a["frame"][row] = -1 if seen.pose is None else self._frames.setdefault(seen.pose.frame_id, len(self._frames))
        a["xyz"][row] = seen.pose.position if seen.pose is not None else np.nan

    def _grow(self, size: int) -> None:
        capacity = len(self._arrays["last"])
        if size <= capacity:
            return
        new = max(size, 2 * capacity)
        for key, array in self._arrays.items():
            grown = np.zeros((new, *array.shape[1:]), array.dtype)
            grown[:capacity] = array
            self._arrays[key] = grown

    def _drop(self, track_id: str) -> None:
        """Remove a row by moving the last row into it."""
        row, last = self._row.pop(track_id), len(self._objects) - 1
        if row != last:
            moved = self._objects[last]
            self._objects[row] = moved
            self._row[moved.track_id] = row
            for array in self._arrays.values():
                array[row] = array[last]
        self._objects.pop()

    def name(self, track_id: str, name: str) -> None:
        self._row[track_id]  # an unknown id is a KeyError before any write
        with self._writing():
            self._rename(track_id, name)

    def _rename(self, track_id: str, name: str) -> None:
        """Inside a transaction (``_writing``, which reads RAM back should it fail)."""
        self.store.rename(track_id, name)
        self._objects[self._row[track_id]].name = name

    def forget(self, track_ids: list[str] | None = None, older_than: Stamp | None = None) -> list[str]:
        """Forget these objects (all when None and no older_than), or those last seen before older_than."""
        if older_than is not None:
            last = self._arrays["last"][: len(self)]
            old = {self._objects[i].track_id for i in np.flatnonzero(last < older_than.seconds)}
            ids = [t for t in (track_ids if track_ids is not None else list(self._row)) if t in old]
        elif track_ids is None:
            ids = list(self._row)
        else:
            ids = [t for t in dict.fromkeys(track_ids) if t in self._row]
        ids = list(dict.fromkeys(ids))
        with self.store.transaction():
            if track_ids is None and older_than is None:
                self.store.delete_all()
            else:
                self.store.delete(ids)
        for track_id in ids:
            self._drop(track_id)
        return ids

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------------ searching
    def search(self, query: Any, k: int = 10, where: MemoryFilter | None = None) -> tuple[list, dict[str, int]]:
        """Objects passing ``where``, ranked by cosine similarity to ``query`` (an embedding), best first.

        Returns ([(SeenObject, score)], left out): how many objects a place filter left out because
        their pose is in another frame ("other frame") or unknown ("no pose").
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        where = where or MemoryFilter()
        keep, left_out = self._passing(where)
        q = as_queries(query, self.dim)[0]
        if keep.all():  # score the rows in place: gathering a copy of 100 k embeddings costs more than the scan
            rows, scores = np.arange(len(self)), self._arrays["emb"][: len(self)] @ q
        else:
            rows = np.flatnonzero(keep)
            scores = self._arrays["emb"][rows] @ q
        if not len(rows):
            return [], left_out
        best = np.argpartition(-scores, min(k, len(rows)) - 1)[:k] if len(rows) > k else np.arange(len(rows))
        top = best[np.argsort(-scores[best], kind="stable")]
        return [(self._objects[rows[i]], float(scores[i])) for i in top], left_out

    def matching(self, where: MemoryFilter) -> list[SeenObject]:
        """Every object passing ``where``, in no particular order."""
        keep, _ = self._passing(where)
        return [self._objects[i] for i in np.flatnonzero(keep)]

    def _passing(self, where: MemoryFilter) -> tuple[np.ndarray, dict[str, int]]:
        n, a = len(self), self._arrays
        keep = np.ones(n, bool)
        if where.seen_after is not None:
            keep &= a["last"][:n] >= where.seen_after.seconds
        if where.seen_before is not None:
            keep &= a["last"][:n] <= where.seen_before.seconds
        if where.min_views:
            keep &= a["views"][:n] >= where.min_views
        left_out = {"other frame": 0, "no pose": 0}
        if where.centre is not None:
            code = self._frames.get(where.frame, -2)
            frames = a["frame"][:n]
            left_out = {"other frame": int((keep & (frames >= 0) & (frames != code)).sum())}
            left_out["no pose"] = int((keep & (frames < 0)).sum())
            distance = np.linalg.norm(a["xyz"][:n] - np.asarray(where.centre), axis=1)
            keep &= (frames == code) & (distance <= where.radius)
        if where.name_contains:
            text = where.name_contains.lower()
            for row in np.flatnonzero(keep):
                seen = self._objects[row]
                haystack = " ".join([seen.track_id, seen.name, *(name for name, _ in seen.names)]).lower()
                keep[row] = text in haystack
        for track_id in where.exclude:
            if track_id in self._row:
                keep[self._row[track_id]] = False
        return keep, left_out
