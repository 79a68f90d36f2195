"""ObjectMemory: the latest embedding of every object the robot encoded, queryable by language.

Bounded (least recently seen objects go first), optionally persisted to one file, ``memory.npz``:
the embeddings and a JSON record of ids, names, times, poses and the embedding space, in one
atomically replaced file (plain arrays and a string: read without pickle), so a crash can never pair
embeddings with the wrong objects. The two-file format of earlier versions (``memory.npz`` with the
embeddings + ``memory.json``) is still read.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_atomically
from .bank import as_queries
from .identity import WeightsIdentity, identity_of
from .stamped import Pose, Stamp

FILE, OLD_META = "memory.npz", "memory.json"
FORMAT = "ddclip-memory"
FORMAT_VERSION = 2


@dataclass
class SeenObject:
    track_id: str
    last_seen: Stamp  # the stamp of the newest view (ROS time)
    num_views: int
    camera_frame: str = ""  # the frame of the newest view's camera
    pose: Pose | None = None  # the tracker's pose, in its own frame and with its own stamp
    name: str = ""  # a name given by enrolment, if any

    def to_dict(self) -> dict[str, Any]:
        return {
            "track_id": self.track_id,
            "last_seen": self.last_seen.to_list(),
            "num_views": self.num_views,
            "camera_frame": self.camera_frame,
            "pose": None if self.pose is None else self.pose.to_dict(),
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeenObject:
        if "camera_frame" not in data:  # format 1: seconds, the camera frame and a bare pose list
            pose = data.get("pose") or []
            stamp = Stamp.from_seconds(float(data.get("last_seen", 0.0)))
            frame = data.get("frame_id", "")
            return cls(
                data["track_id"],
                stamp,
                int(data["num_views"]),
                frame,
                Pose(frame, stamp, tuple(pose[:3]), tuple(pose[3:])) if len(pose) == 7 and frame else None,
                data.get("name", ""),
            )
        pose = data.get("pose")
        return cls(
            data["track_id"],
            Stamp.from_list(data["last_seen"]),
            int(data["num_views"]),
            data.get("camera_frame", ""),
            None if pose is None else Pose.from_dict(pose),
            data.get("name", ""),
        )


class ObjectMemory:
    """identity: the embedding space the memory holds (weights, and fusion if any); files of others are refused."""

    def __init__(self, dim: int, max_objects: int = 1000, identity: WeightsIdentity | str | None = None) -> None:
        if max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {max_objects}")
        self.dim, self.max_objects, self.identity = dim, max_objects, identity_of(identity)
        self._objects: OrderedDict[str, SeenObject] = OrderedDict()
        self._embeddings: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._objects)

    def __contains__(self, track_id: str) -> bool:
        return track_id in self._objects

    def get(self, track_id: str) -> SeenObject | None:
        return self._objects.get(track_id)

    def embedding(self, track_id: str) -> np.ndarray | None:
        return self._embeddings.get(track_id)

    def update(self, info: SeenObject, embedding: Any) -> None:
        """Store the newest embedding of a track (replacing the older one)."""
        vector = as_queries(embedding, self.dim)[0]
        old = self._objects.pop(info.track_id, None)
        if old is not None:
            info.name = info.name or old.name
            info.pose = info.pose or old.pose  # the last known pose stays known
        self._objects[info.track_id] = info
        self._embeddings[info.track_id] = vector
        while len(self._objects) > self.max_objects:
            dropped, _ = self._objects.popitem(last=False)
            del self._embeddings[dropped]

    def name(self, track_id: str, name: str) -> None:
        self._objects[track_id].name = name

    def forget(self, track_ids: list[str] | None = None) -> int:
        ids = list(self._objects) if track_ids is None else [t for t in dict.fromkeys(track_ids) if t in self._objects]
        for track_id in ids:
            del self._objects[track_id]
            del self._embeddings[track_id]
        return len(ids)

    def search(self, query: Any, k: int = 10) -> list[tuple[SeenObject, float]]:
        """Seen objects ranked by cosine similarity to ``query`` (an embedding), best first."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not self._objects:
            return []
        q = as_queries(query, self.dim)[0]
        ids = list(self._objects)
        scores = np.stack([self._embeddings[i] for i in ids]) @ q
        order = np.argsort(-scores, kind="stable")[:k]
        return [(self._objects[ids[i]], float(scores[i])) for i in order]

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``folder/memory.npz`` atomically (the old file stays whole until the new one is)."""
        folder = Path(folder)
        ids = list(self._objects)
        matrix = np.stack([self._embeddings[i] for i in ids]) if ids else np.zeros((0, self.dim), np.float32)
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "dim": self.dim,
            "weights_id": None if self.identity is None else self.identity.id,
            "objects": [self._objects[i].to_dict() for i in ids],
        }
        write_atomically(
            folder / FILE, lambda f: np.savez(f, embeddings=matrix.astype(np.float32), meta=np.array(json.dumps(meta)))
        )
        (folder / OLD_META).unlink(missing_ok=True)  # the old format's second file, now folded in
        return folder

    @classmethod
    def exists(cls, folder: str | os.PathLike) -> bool:
        return (Path(folder) / FILE).is_file()

    @classmethod
    def load(
        cls, folder: str | os.PathLike, max_objects: int = 1000, identity: WeightsIdentity | str | None = None
    ) -> ObjectMemory:
        """Read ``folder/memory.npz``; ValueError names the file and the problem (corrupt, other weights)."""
        path = Path(folder) / FILE
        matrix, meta = _read(path)
        wanted = identity_of(identity)
        if wanted is not None:
            wanted.check(meta.get("weights_id"), f"{path}: the object memory was", "Use another memory_path.")
        objects = meta.get("objects")
        if not isinstance(objects, list) or matrix.shape != (len(objects), int(meta.get("dim", -1))):
            raise ValueError(
                f"{path}: corrupt object memory: {matrix.shape} embeddings for {len(objects or [])} objects"
            )
        memory = cls(int(meta["dim"]), max_objects, wanted or meta.get("weights_id"))
        try:
            for record, vector in zip(objects, matrix, strict=True):
                memory.update(SeenObject.from_dict(record), vector)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: corrupt object record: {exc}") from exc
        return memory


def _read(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            matrix = np.asarray(data["embeddings"], dtype=np.float32)
            text = str(data["meta"]) if "meta" in data else None
        if text is None:  # format 1: the records in memory.json beside it
            text = (path.parent / OLD_META).read_text()
        meta = json.loads(text)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable object memory ({type(exc).__name__}: {exc})") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: not a readable object memory (no record)")
    return matrix, meta
